"""Tests of the KServe deploy target (``components.deploy.kserve``) and its component.

No cluster: ``FakeCluster`` keeps InferenceServices as the API server would (generation
bumped on spec changes, JSON merge patch, 404 for a missing object) with a scripted
KServe controller that reports Ready (or not) for the latest generation after a few
polls. In process it is reached through a fake ``CustomObjectsApi`` that records every
call; the component, which kfp local runs in a subprocess, reaches it over HTTP through
the real kubernetes client and a kubeconfig pointing at a local fake API server.
"""

import copy
import http.server
import json
import os
import shutil
import threading

import pytest
from kubernetes.client.exceptions import ApiException

from components.deploy import kserve, model_repository

NAMESPACE = "kubeflow-user"
NAME = "image-classifier"
PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeCluster:
    """InferenceServices and a scripted KServe controller.

    ``behaviour``: ``ready`` (Ready for the new generation after ``polls_to_ready``
    polls), ``never`` (stuck: revision not ready) or ``fail_load`` (the model cannot load).
    """

    def __init__(self, behaviour: str = "ready", polls_to_ready: int = 2):
        self.objects: dict[tuple[str, str], dict] = {}
        self.behaviour = behaviour
        self.polls_to_ready = polls_to_ready
        self.polls = 0
        self.revisions: dict[tuple[str, str], list[str]] = {}

    def get(self, namespace, name):
        key = (namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self.polls += 1
        self._reconcile(key)
        return copy.deepcopy(self.objects[key])

    def create(self, namespace, body):
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, uid="u-1", resourceVersion="1")
        obj["status"] = {"observedGeneration": 0, "conditions": []}
        self.objects[key] = obj
        self.polls = 0
        return copy.deepcopy(obj)

    def patch(self, namespace, name, body):
        key = (namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        obj = self.objects[key]
        patched = merge_patch(obj, body)
        if patched["spec"] != obj["spec"]:
            patched["metadata"]["generation"] += 1
            self.polls = 0
        self.objects[key] = patched
        return copy.deepcopy(patched)

    def _reconcile(self, key):
        obj = self.objects[key]
        generation = obj["metadata"]["generation"]
        status = obj["status"]
        if status.get("observedGeneration", 0) >= generation or self.polls < self.polls_to_ready:
            return  # a status of the previous generation, for now
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        revisions = self.revisions.setdefault(key, [])
        revision = f"{name}-predictor-{generation:05d}"
        if not revisions or revisions[-1] != revision:
            revisions.append(revision)
        status["observedGeneration"] = generation
        if self.behaviour == "never":
            status["conditions"] = [
                {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "RevisionMissing",
                    "message": f"Configuration {name}-predictor does not have any ready Revision.",
                },
            ]
            return
        if self.behaviour == "fail_load":
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {
                    "reason": "ModelLoadFailed",
                    "message": "Op type not registered 'NewOp'",
                },
            }
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            return
        canary = obj["spec"]["predictor"].get("canaryTrafficPercent")
        if canary is not None and canary < 100 and len(revisions) > 1:
            traffic = [
                {"revisionName": revision, "percent": canary, "latestRevision": True},
                {"revisionName": revisions[-2], "percent": 100 - canary, "latestRevision": False},
            ]
        else:
            traffic = [{"revisionName": revision, "percent": 100, "latestRevision": True}]
        status.update(
            conditions=[
                {"type": "PredictorReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            url=f"http://{name}.{namespace}.example.com",
            address={"url": f"http://{name}.{namespace}.svc.cluster.local"},
            components={"predictor": {"traffic": traffic, "latestReadyRevision": revision}},
            modelStatus={"transitionStatus": "UpToDate"},
        )


class FakeCustomObjectsApi:
    """``kubernetes.client.CustomObjectsApi``'s methods over a FakeCluster, recorded."""

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster
        self.calls: list[tuple] = []

    def _check(self, group, version, plural):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("get", namespace, name))
        return self.cluster.get(namespace, name)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        self.calls.append(("create", namespace, copy.deepcopy(body)))
        return self.cluster.create(namespace, body)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self._check(group, version, plural)
        self.calls.append(("patch", namespace, name, copy.deepcopy(body)))
        return self.cluster.patch(namespace, name, body)

    def writes(self) -> list[tuple]:
        return [call for call in self.calls if call[0] != "get"]


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def other_export(exported_model, tmp_path):
    """Another export: the same SavedModel with another label file (other content)."""
    path = tmp_path / "other_export"
    shutil.copytree(exported_model, path)
    (path / "assets.extra" / "labels.txt").write_text("a\nb\nc\nd\n")
    return str(path)


def _deploy(api, export, repo, clock=None, **kwargs):
    clock = clock or FakeClock()
    return kserve.deploy_kserve(
        export,
        str(repo),
        NAME,
        NAMESPACE,
        api=api,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def _storage_uri(export, repo) -> str:
    digest = model_repository.content_digest(export).split(":")[1][:12]
    return os.path.join(str(repo), f"{NAME}-{digest}")


# --- staging -------------------------------------------------------------------------


def test_stage_model_is_a_one_version_model_base_named_by_content(
    exported_model, other_export, tmp_path
):
    repo = tmp_path / "repo"
    uri = kserve.stage_model(exported_model, str(repo), NAME)
    assert uri == _storage_uri(exported_model, repo)
    # What KServe's TF Serving loads: <storageUri>/<version>/saved_model.pb.
    assert os.listdir(uri) == ["1"]
    assert os.path.isfile(os.path.join(uri, "1", "saved_model.pb"))
    assert os.path.isfile(os.path.join(uri, "1", "assets.extra", "labels.txt"))

    assert kserve.stage_model(exported_model, str(repo), NAME) == uri
    assert os.listdir(uri) == ["1"]
    other = kserve.stage_model(other_export, str(repo), NAME)
    assert other != uri and sorted(os.listdir(repo)) == sorted(
        os.path.basename(u) for u in (uri, other)
    )


def test_stage_model_needs_a_repository(exported_model):
    with pytest.raises(ValueError, match="model_repository is required"):
        kserve.stage_model(exported_model, "", NAME)


# --- deploy_kserve -------------------------------------------------------------------


def test_first_deploy_creates_the_inference_service(exported_model, tmp_path):
    api = FakeCustomObjectsApi(FakeCluster(polls_to_ready=3))
    clock = FakeClock()
    repo = tmp_path / "repo"

    info = _deploy(
        api,
        exported_model,
        repo,
        clock,
        cpu="2",
        memory="4Gi",
        min_replicas=1,
        max_replicas=3,
        service_account_name="kserve-gcs-reader",
        traffic_percent=10,  # a new service takes all traffic: no canary field
        poll_interval_s=5,
    )

    storage_uri = _storage_uri(exported_model, repo)
    assert api.writes() == [
        (
            "create",
            NAMESPACE,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {
                    "predictor": {
                        "minReplicas": 1,
                        "maxReplicas": 3,
                        "serviceAccountName": "kserve-gcs-reader",
                        "tensorflow": {
                            "storageUri": storage_uri,
                            "runtimeVersion": "2.21.0",
                            "resources": {
                                "requests": {"cpu": "2", "memory": "4Gi"},
                                "limits": {"cpu": "2", "memory": "4Gi"},
                            },
                        },
                    }
                },
            },
        )
    ]
    # get (404), then polls until the controller reports the new generation Ready.
    assert api.calls[0] == ("get", NAMESPACE, NAME)
    assert clock.sleeps == [5, 5]
    assert info == {
        "name": NAME,
        "namespace": NAMESPACE,
        "action": "created",
        "storage_uri": storage_uri,
        "runtime_version": "2.21.0",
        "generation": 1,
        "url": f"http://{NAME}.{NAMESPACE}.example.com",
        "predict_url": f"http://{NAME}.{NAMESPACE}.example.com/v1/models/{NAME}:predict",
        "internal_url": f"http://{NAME}.{NAMESPACE}.svc.cluster.local",
        "traffic": [
            {"revisionName": f"{NAME}-predictor-00001", "percent": 100, "latestRevision": True}
        ],
        "canary_traffic_percent": None,
    }


def test_a_new_export_patches_as_a_canary(exported_model, other_export, tmp_path):
    api = FakeCustomObjectsApi(FakeCluster())
    repo = tmp_path / "repo"
    _deploy(api, exported_model, repo)

    info = _deploy(api, other_export, repo, traffic_percent=10)

    writes = api.writes()
    assert [w[0] for w in writes] == ["create", "patch"]
    assert writes[1] == (
        "patch",
        NAMESPACE,
        NAME,
        {
            "spec": {
                "predictor": {
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "canaryTrafficPercent": 10,
                    "tensorflow": {
                        "storageUri": _storage_uri(other_export, repo),
                        "runtimeVersion": "2.21.0",
                        "resources": {
                            "requests": {"cpu": "1", "memory": "2Gi"},
                            "limits": {"cpu": "1", "memory": "2Gi"},
                        },
                    },
                }
            }
        },
    )
    assert info["action"] == "patched" and info["generation"] == 2
    assert info["canary_traffic_percent"] == 10
    assert info["traffic"] == [
        {"revisionName": f"{NAME}-predictor-00002", "percent": 10, "latestRevision": True},
        {"revisionName": f"{NAME}-predictor-00001", "percent": 90, "latestRevision": False},
    ]

    # The same export at 100%: the canary is promoted, nothing else changes.
    promoted = _deploy(api, other_export, repo, traffic_percent=100)
    assert api.writes()[2] == (
        "patch",
        NAMESPACE,
        NAME,
        {"spec": {"predictor": {"canaryTrafficPercent": 100}}},
    )
    assert promoted["canary_traffic_percent"] == 100
    assert [t["percent"] for t in promoted["traffic"]] == [100]


def test_the_kserve_champion_is_what_the_inference_service_serves(
    exported_model, other_export, tmp_path
):
    from components.deploy.champion import kserve_champion

    api = FakeCustomObjectsApi(FakeCluster())
    repo = tmp_path / "repo"
    assert kserve_champion(NAME, NAMESPACE, api=api) == ""
    _deploy(api, exported_model, repo)
    assert kserve_champion(NAME, NAMESPACE, api=api) == os.path.join(
        _storage_uri(exported_model, repo), "1"
    )
    _deploy(api, other_export, repo, traffic_percent=10)
    assert kserve_champion(NAME, NAMESPACE, api=api) == os.path.join(
        _storage_uri(other_export, repo), "1"
    )


def test_the_same_export_again_changes_nothing(exported_model, tmp_path):
    api = FakeCustomObjectsApi(FakeCluster())
    first = _deploy(api, exported_model, tmp_path / "repo")
    again = _deploy(api, exported_model, tmp_path / "repo", traffic_percent=10)
    assert [w[0] for w in api.writes()] == ["create"]
    assert again == first | {"action": "unchanged"}


def test_dropped_settings_are_deleted_by_the_patch(exported_model, tmp_path):
    """A GPU limit and a service account set before and not now are nulled (deleted)."""
    api = FakeCustomObjectsApi(FakeCluster())
    repo = tmp_path / "repo"
    first = _deploy(api, exported_model, repo, gpu_count=1, service_account_name="sa")
    assert first["runtime_version"] == "2.21.0-gpu"
    [create] = api.writes()
    assert create[2]["spec"]["predictor"]["tensorflow"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "2Gi",
        "nvidia.com/gpu": "1",
    }

    _deploy(api, exported_model, repo)

    [_, (_, _, _, patch)] = api.writes()
    predictor = patch["spec"]["predictor"]
    assert predictor["serviceAccountName"] is None
    assert predictor["tensorflow"]["runtimeVersion"] == "2.21.0"
    assert predictor["tensorflow"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "2Gi",
        "nvidia.com/gpu": None,
    }
    served = api.cluster.objects[(NAMESPACE, NAME)]["spec"]["predictor"]
    assert "serviceAccountName" not in served
    assert served["tensorflow"]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_a_ready_status_of_the_previous_generation_is_not_taken_for_the_new_one(
    exported_model, other_export, tmp_path
):
    api = FakeCustomObjectsApi(FakeCluster(polls_to_ready=3))
    repo = tmp_path / "repo"
    _deploy(api, exported_model, repo)
    clock = FakeClock()
    info = _deploy(api, other_export, repo, clock, poll_interval_s=2)
    # The first two polls still show generation 1 Ready: not ready for generation 2.
    assert clock.sleeps == [2, 2] and info["generation"] == 2


def test_timeout_lists_the_conditions(exported_model, tmp_path):
    api = FakeCustomObjectsApi(FakeCluster(behaviour="never", polls_to_ready=1))
    clock = FakeClock()
    with pytest.raises(TimeoutError) as raised:
        _deploy(api, exported_model, tmp_path / "repo", clock, timeout_s=60, poll_interval_s=10)
    message = str(raised.value)
    assert f"InferenceService {NAMESPACE}/{NAME} was not Ready within 60 s" in message
    assert "PredictorReady=False (RevisionMissing)" in message
    assert (
        "Ready=False (RevisionMissing: Configuration image-classifier-predictor does not "
        "have any ready Revision.)" in message
    )
    assert clock.sleeps == [10] * 6 and clock.now == 60


def test_a_model_that_cannot_load_fails_without_waiting_out_the_timeout(exported_model, tmp_path):
    api = FakeCustomObjectsApi(FakeCluster(behaviour="fail_load", polls_to_ready=1))
    clock = FakeClock()
    with pytest.raises(kserve.KServeDeployError, match="BlockedByFailedLoad: ModelLoadFailed"):
        _deploy(api, exported_model, tmp_path / "repo", clock, timeout_s=600)
    assert clock.now == 0


def test_api_errors_other_than_not_found_are_raised(exported_model, tmp_path):
    class Forbidden(FakeCustomObjectsApi):
        def get_namespaced_custom_object(self, *args):
            raise ApiException(status=403, reason="Forbidden")

    api = Forbidden(FakeCluster())
    with pytest.raises(ApiException) as raised:
        _deploy(api, exported_model, tmp_path / "repo")
    assert raised.value.status == 403 and api.writes() == []


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"name": "Image_Classifier"}, "invalid InferenceService name"),
        ({"namespace": ""}, "namespace is required"),
        ({"traffic_percent": 120}, "traffic_percent"),
        ({"min_replicas": 2, "max_replicas": 1}, "replicas"),
    ],
)
def test_invalid_arguments_fail_before_any_call(exported_model, tmp_path, kwargs, error):
    api = FakeCustomObjectsApi(FakeCluster())
    arguments = {"name": NAME, "namespace": NAMESPACE, **kwargs}
    with pytest.raises(ValueError, match=error):
        kserve.deploy_kserve(exported_model, str(tmp_path / "repo"), api=api, **arguments)
    assert api.calls == []


def test_is_ready_needs_the_ready_condition_of_the_current_generation():
    ready = {"type": "Ready", "status": "True"}
    assert kserve.is_ready({"status": {"conditions": [ready]}})
    assert kserve.is_ready(
        {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "conditions": [ready]}}
    )
    assert not kserve.is_ready(
        {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "conditions": [ready]}}
    )
    assert not kserve.is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert not kserve.is_ready({})


# --- the component, through the real kubernetes client --------------------------------


class FakeApiServer(http.server.ThreadingHTTPServer):
    """The InferenceService routes of a Kubernetes API server over a FakeCluster."""

    def __init__(self, cluster: FakeCluster):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cluster = cluster
        self.requests: list[tuple[str, str, str, dict | None]] = []
        self.authorizations: set[str | None] = set()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        content_type = self.headers.get("Content-Type", "")
        self.server.requests.append((method, self.path, content_type, body))
        self.server.authorizations.add(self.headers.get("Authorization"))
        cluster = self.server.cluster
        try:
            if self.path.startswith(PATH + "/") and method == "GET":
                return self._reply(200, cluster.get(NAMESPACE, self.path.rsplit("/", 1)[1]))
            if self.path == PATH and method == "POST":
                return self._reply(201, cluster.create(NAMESPACE, body))
            if self.path.startswith(PATH + "/") and method == "PATCH":
                assert content_type == "application/merge-patch+json", content_type
                name = self.path.rsplit("/", 1)[1]
                return self._reply(200, cluster.patch(NAMESPACE, name, body))
        except ApiException as e:
            return self._reply(e.status, {"kind": "Status", "code": e.status})
        self._reply(404, {"kind": "Status", "code": 404, "message": f"no route {self.path}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    """A fake API server, and a kubeconfig (KUBECONFIG) whose context points at it."""
    server = FakeApiServer(FakeCluster(polls_to_ready=1))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def test_custom_objects_api_uses_the_kubeconfig_outside_a_cluster(
    api_server, exported_model, tmp_path
):
    info = kserve.deploy_kserve(
        exported_model, str(tmp_path / "repo"), NAME, NAMESPACE, poll_interval_s=0.01
    )
    assert info["action"] == "created"
    methods = [method for method, *_ in api_server.requests]
    assert methods[:2] == ["GET", "POST"] and set(methods[2:]) == {"GET"}
    assert api_server.authorizations == {"Bearer fake-token"}  # the kubeconfig's user


def test_component_creates_then_patches_in_kfp_local(
    kfp_local, api_server, exported_model, other_export, tmp_path
):
    from kfp import dsl

    from components.deploy.component import deploy_kserve
    from pipelines.run_local import output_artifact, run_pipeline, task_outputs

    repo = str(tmp_path / "repo")

    @dsl.pipeline(name="deploy-kserve-test")
    def pipeline(export_dir: str, traffic_percent: int):
        exported = dsl.importer(artifact_uri=export_dir, artifact_class=dsl.Model)
        deploy_kserve(
            model=exported.output,
            model_repository=repo,
            namespace=NAMESPACE,
            traffic_percent=traffic_percent,
            timeout_s=30.0,
        )

    first = run_pipeline(pipeline, str(kfp_local), export_dir=exported_model, traffic_percent=10)
    second = run_pipeline(pipeline, str(kfp_local), export_dir=other_export, traffic_percent=20)

    writes = [(m, c, b) for m, _, c, b in api_server.requests if m != "GET"]
    assert [(m, c) for m, c, _ in writes] == [
        ("POST", "application/json"),
        ("PATCH", "application/merge-patch+json"),
    ]
    assert writes[0][2]["spec"]["predictor"]["tensorflow"]["storageUri"] == _storage_uri(
        exported_model, repo
    )
    patch = writes[1][2]["spec"]["predictor"]
    assert patch["canaryTrafficPercent"] == 20
    assert patch["tensorflow"]["storageUri"] == _storage_uri(other_export, repo)

    created = output_artifact(task_outputs(first, "deploy-kserve"), "endpoint")
    patched = output_artifact(task_outputs(second, "deploy-kserve"), "endpoint")
    assert created["metadata"]["action"] == "created"
    assert patched["metadata"]["action"] == "patched"
    assert patched["metadata"]["predict_url"] == (
        f"http://{NAME}.{NAMESPACE}.example.com/v1/models/{NAME}:predict"
    )
    assert patched["metadata"]["target"] == "kserve"
    with open(os.path.join(patched["uri"], "endpoint.json")) as f:
        written = json.load(f)
    assert written == patched["metadata"]
    assert [t["percent"] for t in written["traffic"]] == [20, 80]


def test_cli_kserve_target(api_server, exported_model, tmp_path, capsys):
    from components.deploy.__main__ import main

    main(
        ["--target", "kserve", "--export-dir", exported_model, "--namespace", NAMESPACE,
         "--model-repository", str(tmp_path / "repo"), "--cpu", "500m", "--memory", "1Gi"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["action"] == "created" and printed["name"] == NAME
    [(_, _, _, body)] = [r for r in api_server.requests if r[0] == "POST"]
    assert body["spec"]["predictor"]["tensorflow"]["resources"]["requests"] == {
        "cpu": "500m",
        "memory": "1Gi",
    }
