"""Tests of the Vertex AI deploy target (``components.deploy.vertex``) and its component.

No network: fake ModelService and EndpointService clients take the SDK's own request
types, keep Models, versions and Endpoints as the SDK's own resource types, answer
like the API (resource names with the project number, long-running operations with
``.result()``, DeployModel's ``"0"`` for the model being deployed, no undeploying a
model that has traffic), and record every request. The component runs under kfp local
in a subprocess; a ``sitecustomize`` put on that subprocess's PYTHONPATH installs the same
fakes there, with their state in a JSON file, so two runs see the same "cloud".
"""

import datetime
import json
import os
import random
import re

import pytest
from google.cloud import aiplatform_v1 as v1

from components.deploy import vertex, vertex_serving

PROJECT = "my-project"
PROJECT_NUMBER = "123456789"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
REGISTRY, TAG = "us-central1-docker.pkg.dev/my-project/kfp", "abc123"
DEPLOY_IMAGE = f"{REGISTRY}/deploy:{TAG}"  # stage_image("deploy") with REGISTRY and TAG
# The deploy image's model server as Vertex AI runs it: Vertex expands $(AIP_STORAGE_URI)
# to its copy of the artifact and calls these routes on the first port.
CUSTOM_SPEC = v1.ModelContainerSpec(
    image_uri=DEPLOY_IMAGE,
    command=["python", "-m", "components.deploy.server"],
    args=["--model-dir", "$(AIP_STORAGE_URI)", "--model-name", "image-classifier",
          "--host", "0.0.0.0", "--http-port", "8080", "--grpc-port", "0"],
    ports=[v1.Port(container_port=8080)],
    predict_route="/v1/models/image-classifier:predict",
    health_route="/v2/health/ready",
)  # fmt: skip
EXPORT_1 = "gs://bucket/root/run-1/export/exported_model"
EXPORT_2 = "gs://bucket/root/run-2/export/exported_model"
EXPORT_3 = "gs://bucket/root/run-3/export/exported_model"
MODEL_NAME = "image-classifier"
ENDPOINT_NAME = "image-classifier-endpoint"


# --- fakes of the Vertex AI API --------------------------------------------------------


class FakeOperation:
    """A finished long-running operation."""

    def __init__(self, response, log):
        self._response = response
        self._log = log

    def result(self, timeout=None):
        self._log.append(("result", timeout))
        return self._response


class FakeVertex:
    """The Models and Endpoints of one project and region, and every request made."""

    def __init__(self, state_path: str | None = None):
        self.models: dict[str, list[v1.Model]] = {}  # model name -> versions
        self.endpoints: dict[str, v1.Endpoint] = {}
        self.evaluations: dict[str, list[v1.ModelEvaluation]] = {}  # version name -> its
        self.next_id = 1000
        self.clock = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self.requests: list = []
        self.timeouts: list = []
        self.state_path = state_path
        if state_path and os.path.exists(state_path):
            self._load()

    # State in a file, for the component's subprocess and the next run's.
    def _load(self):
        with open(self.state_path) as f:
            state = json.load(f)
        self.models = {
            name: [v1.Model.from_json(m) for m in versions]
            for name, versions in state["models"].items()
        }
        self.endpoints = {n: v1.Endpoint.from_json(e) for n, e in state["endpoints"].items()}
        self.evaluations = {
            name: [v1.ModelEvaluation.from_json(e) for e in evaluations]
            for name, evaluations in state["evaluations"].items()
        }
        self.next_id = state["next_id"]
        self.clock = datetime.datetime.fromisoformat(state["clock"])
        self.requests = [getattr(v1, kind).from_json(body) for kind, body in state["requests"]]

    def _save(self):
        if not self.state_path:
            return
        state = {
            "models": {
                name: [v1.Model.to_json(m) for m in versions]
                for name, versions in self.models.items()
            },
            "endpoints": {n: v1.Endpoint.to_json(e) for n, e in self.endpoints.items()},
            "evaluations": {
                name: [v1.ModelEvaluation.to_json(e) for e in evaluations]
                for name, evaluations in self.evaluations.items()
            },
            "next_id": self.next_id,
            "clock": self.clock.isoformat(),
            "requests": [(type(r).__name__, type(r).to_json(r)) for r in self.requests],
        }
        with open(self.state_path, "w") as f:
            json.dump(state, f)

    def _record(self, request):
        self.requests.append(request)
        self._save()

    def _id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def _tick(self):
        self.clock += datetime.timedelta(minutes=1)
        return self.clock

    def operation(self, response):
        self._save()
        return FakeOperation(response, self.timeouts)

    @staticmethod
    def display_name(request_filter: str) -> str:
        match = re.fullmatch(r'display_name="((?:[^"\\]|\\.)*)"', request_filter)
        assert match, f"unexpected filter {request_filter!r}"
        return re.sub(r"\\(.)", r"\1", match[1])

    def requests_of(self, kind) -> list:
        return [r for r in self.requests if isinstance(r, kind)]


class FakeModelService:
    def __init__(self, cloud: FakeVertex):
        self.cloud = cloud

    def list_models(self, request):
        self.cloud._record(request)
        assert request.parent == PARENT
        name = self.cloud.display_name(request.filter)
        # ListModels lists each Model once, as its default version.
        return [
            next(v for v in versions if "default" in v.version_aliases)
            for versions in self.cloud.models.values()
            if versions[0].display_name == name
        ]

    def list_model_versions(self, request):
        self.cloud._record(request)
        return list(self.cloud.models[request.name])

    def upload_model(self, request):
        self.cloud._record(request)
        assert request.parent == PARENT
        model = v1.Model(request.model)
        if request.parent_model:
            versions = self.cloud.models[request.parent_model]
            name = request.parent_model
        else:
            name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/models/{self.cloud._id()}"
            versions = self.cloud.models.setdefault(name, [])
        if "default" in model.version_aliases:
            for other in versions:
                other.version_aliases = [a for a in other.version_aliases if a != "default"]
        model.name = name
        model.version_id = str(len(versions) + 1)
        model.version_create_time = self.cloud._tick()
        versions.append(model)
        response = v1.UploadModelResponse(model=name, model_version_id=model.version_id)
        return self.cloud.operation(response)

    def _version(self, name: str) -> v1.Model:
        """``<model>@<version ID or alias>``, as GetModel resolves it."""
        model, _, version = name.partition("@")
        for candidate in self.cloud.models[model]:
            if version in (candidate.version_id, *candidate.version_aliases):
                return candidate
        raise AssertionError(f"no version {name}")

    def get_model(self, request):
        self.cloud._record(request)
        return v1.Model(self._version(request.name))

    def merge_version_aliases(self, request):
        self.cloud._record(request)
        target = self._version(request.name)
        for other in self.cloud.models[request.name.partition("@")[0]]:
            other.version_aliases = [
                a for a in other.version_aliases if a not in request.version_aliases
            ]
        target.version_aliases = [*target.version_aliases, *request.version_aliases]
        self.cloud._save()
        return v1.Model(target)

    def list_model_evaluations(self, request):
        self.cloud._record(request)
        assert "@" in request.parent and self._version(request.parent)
        return list(self.cloud.evaluations.get(request.parent, []))

    def import_model_evaluation(self, request):
        self.cloud._record(request)
        evaluation = v1.ModelEvaluation(request.model_evaluation)
        evaluations = self.cloud.evaluations.setdefault(request.parent, [])
        evaluation.name = f"{request.parent.partition('@')[0]}/evaluations/{self.cloud._id()}"
        evaluations.append(evaluation)
        self.cloud._save()
        return evaluation


class FakeEndpointService:
    def __init__(self, cloud: FakeVertex):
        self.cloud = cloud

    def list_endpoints(self, request):
        self.cloud._record(request)
        assert request.parent == PARENT
        name = self.cloud.display_name(request.filter)
        return [v1.Endpoint(e) for e in self.cloud.endpoints.values() if e.display_name == name]

    def get_endpoint(self, request):
        self.cloud._record(request)
        return v1.Endpoint(self.cloud.endpoints[request.name])

    def create_endpoint(self, request):
        self.cloud._record(request)
        name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/{self.cloud._id()}"
        endpoint = v1.Endpoint(request.endpoint, name=name, create_time=self.cloud._tick())
        self.cloud.endpoints[name] = endpoint
        return self.cloud.operation(v1.Endpoint(endpoint))

    def deploy_model(self, request):
        self.cloud._record(request)
        endpoint = self.cloud.endpoints[request.endpoint]
        model, _, version = request.deployed_model.model.partition("@")
        assert model in self.cloud.models, f"no Model {model}"
        assert version in [v.version_id for v in self.cloud.models[model]], "no such version"
        deployed = v1.DeployedModel(
            request.deployed_model,
            id=self.cloud._id(),
            model=model,
            model_version_id=version,
            create_time=self.cloud._tick(),
        )
        if endpoint.network:  # Private Service Access: one deployment, no traffic split
            assert not request.traffic_split, "a private endpoint takes no traffic split"
            if endpoint.deployed_models:
                raise RuntimeError("FAILED_PRECONDITION: a private endpoint holds one model")
            deployed.private_endpoints = v1.PrivateEndpoints(
                predict_http_uri=private_predict_uri(endpoint.name, deployed.id)
            )
            endpoint.deployed_models.append(deployed)
            return self.cloud.operation(v1.DeployModelResponse(deployed_model=deployed))
        split = dict(request.traffic_split)
        if split:
            assert sum(split.values()) == 100, f"traffic split {split} does not sum to 100"
            split = {deployed.id if k == "0" else k: p for k, p in split.items()}
            known = {dm.id for dm in endpoint.deployed_models} | {deployed.id}
            assert set(split) <= known, f"traffic split {split} names unknown models"
        elif not endpoint.deployed_models:
            split = {deployed.id: 100}
        else:
            split = dict(endpoint.traffic_split)
        endpoint.deployed_models.append(deployed)
        endpoint.traffic_split = split
        return self.cloud.operation(v1.DeployModelResponse(deployed_model=deployed))

    def undeploy_model(self, request):
        self.cloud._record(request)
        endpoint = self.cloud.endpoints[request.endpoint]
        if endpoint.traffic_split.get(request.deployed_model_id, 0) > 0:
            raise RuntimeError("FAILED_PRECONDITION: the deployed model has traffic")
        kept = [dm for dm in endpoint.deployed_models if dm.id != request.deployed_model_id]
        assert len(kept) == len(endpoint.deployed_models) - 1, "no such deployed model"
        del endpoint.deployed_models[:]
        endpoint.deployed_models.extend(kept)
        endpoint.traffic_split = {
            k: p for k, p in endpoint.traffic_split.items() if k != request.deployed_model_id
        }
        return self.cloud.operation(v1.UndeployModelResponse())


def private_predict_uri(endpoint: str, deployed_model_id: str) -> str:
    """A private endpoint's address for one deployment, on the peered network (plain HTTP)."""
    endpoint_id = endpoint.rsplit("/", 1)[-1]
    return f"http://{endpoint_id}.aiplatform.googleapis.com/v1/models/{deployed_model_id}:predict"


def install_fakes():
    """Called by the sitecustomize of the component's subprocess: the module's client
    factories return fakes over the state file named by FAKE_VERTEX_STATE."""
    cloud = FakeVertex(os.environ["FAKE_VERTEX_STATE"])
    vertex.model_service_client = lambda region: FakeModelService(cloud)
    vertex.endpoint_service_client = lambda region: FakeEndpointService(cloud)


@pytest.fixture
def cloud():
    return FakeVertex()


def _deploy(cloud, artifact_uri=EXPORT_1, **kwargs):
    kwargs.setdefault("serving_image", IMAGE)
    kwargs.setdefault("model_display_name", MODEL_NAME)
    return vertex.deploy_to_vertex(
        artifact_uri,
        PROJECT,
        REGION,
        model_client=FakeModelService(cloud),
        endpoint_client=FakeEndpointService(cloud),
        **kwargs,
    )


def _model(model_id: str) -> str:
    return f"projects/{PROJECT_NUMBER}/locations/{REGION}/models/{model_id}"


# --- deploy_to_vertex ----------------------------------------------------------------


def test_first_deploy_uploads_creates_the_endpoint_and_deploys(cloud):
    info = _deploy(
        cloud,
        machine_type="n1-standard-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
        min_replica_count=1,
        max_replica_count=3,
        traffic_percent=10,  # nothing serves yet: the first deployment takes all
        labels={"team": "vision"},
        service_account="serving@my-project.iam.gserviceaccount.com",
    )

    model, endpoint = _model("1001"), f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/1002"
    assert cloud.requests == [
        v1.ListModelsRequest(parent=PARENT, filter='display_name="image-classifier"'),
        v1.ListEndpointsRequest(parent=PARENT, filter='display_name="image-classifier-endpoint"'),
        v1.UploadModelRequest(
            parent=PARENT,
            model=v1.Model(
                display_name=MODEL_NAME,
                artifact_uri=EXPORT_1,
                container_spec=v1.ModelContainerSpec(image_uri=IMAGE),
                labels={"team": "vision"},
                version_aliases=["default"],
            ),
        ),
        v1.CreateEndpointRequest(
            parent=PARENT,
            endpoint=v1.Endpoint(display_name=ENDPOINT_NAME, labels={"team": "vision"}),
        ),
        v1.DeployModelRequest(
            endpoint=endpoint,
            deployed_model=v1.DeployedModel(
                model=f"{model}@1",
                display_name="image-classifier-v1",
                dedicated_resources=v1.DedicatedResources(
                    machine_spec=v1.MachineSpec(
                        machine_type="n1-standard-8",
                        accelerator_type=v1.AcceleratorType.NVIDIA_TESLA_T4,
                        accelerator_count=1,
                    ),
                    min_replica_count=1,
                    max_replica_count=3,
                ),
                service_account="serving@my-project.iam.gserviceaccount.com",
            ),
            traffic_split={"0": 100},
        ),
        v1.GetEndpointRequest(name=endpoint),
    ]
    # Every operation waited for with the long deploy timeout, not api-core's 900 s.
    assert cloud.timeouts == [("result", 3600.0)] * 3
    assert info == {
        "region": REGION,
        "artifact_uri": EXPORT_1,
        "serving_image": IMAGE,
        "serving_container": "prebuilt",  # a serving image given is served as it is
        "uploaded": True,
        "endpoint_created": True,
        "already_deployed": False,
        "undeployed": [],
        "model": model,
        "model_version_id": "1",
        "model_version_name": f"{model}@1",
        "endpoint": endpoint,
        "deployed_model_id": "1003",
        "traffic_split": {"1003": 100},
        "predict_url": f"https://us-central1-aiplatform.googleapis.com/v1/{endpoint}:predict",
        "private_endpoint": False,
        "network": "",
    }


def test_the_same_export_again_does_nothing(cloud):
    first = _deploy(cloud)
    before = len(cloud.requests)

    again = _deploy(cloud, traffic_percent=30)

    assert [type(r) for r in cloud.requests[before:]] == [
        v1.ListModelsRequest,
        v1.ListModelVersionsRequest,
        v1.ListEndpointsRequest,
    ]
    assert cloud.requests[before + 1] == v1.ListModelVersionsRequest(name=first["model"])
    assert again == first | {"already_deployed": True, "uploaded": False, "endpoint_created": False}
    assert len(cloud.models) == 1 and len(cloud.endpoints) == 1
    assert len(cloud.models[first["model"]]) == 1
    assert len(cloud.endpoints[first["endpoint"]].deployed_models) == 1


def test_a_new_export_is_a_new_version_deployed_as_a_canary(cloud):
    first = _deploy(cloud)
    before = len(cloud.requests)

    second = _deploy(cloud, EXPORT_2, traffic_percent=10, keep_versions=1)

    uploads = cloud.requests_of(v1.UploadModelRequest)
    assert len(uploads) == 2
    # A version of the same Model (parent_model), the new default version.
    assert uploads[1].parent_model == first["model"]
    assert uploads[1].model.artifact_uri == EXPORT_2
    assert uploads[1].model.version_aliases == ["default"]
    assert not cloud.requests_of(v1.CreateEndpointRequest)[1:]
    [deploy] = [r for r in cloud.requests[before:] if isinstance(r, v1.DeployModelRequest)]
    assert deploy.deployed_model.model == f"{first['model']}@2"
    assert dict(deploy.traffic_split) == {"0": 10, first["deployed_model_id"]: 90}
    # The previous version keeps 90% of the traffic, so it stays whatever keep_versions.
    assert not cloud.requests_of(v1.UndeployModelRequest)
    assert second["model"] == first["model"] and second["model_version_id"] == "2"
    assert second["endpoint"] == first["endpoint"]
    assert second["traffic_split"] == {
        first["deployed_model_id"]: 90,
        second["deployed_model_id"]: 10,
    }
    assert second["undeployed"] == []


def test_full_rollout_undeploys_old_versions_without_traffic_beyond_keep_versions(cloud):
    first = _deploy(cloud)
    second = _deploy(cloud, EXPORT_2, traffic_percent=50)
    assert cloud.endpoints[first["endpoint"]].traffic_split == {
        first["deployed_model_id"]: 50,
        second["deployed_model_id"]: 50,
    }

    third = _deploy(cloud, EXPORT_3, traffic_percent=100, keep_versions=2)

    [deploy] = cloud.requests_of(v1.DeployModelRequest)[2:]
    assert dict(deploy.traffic_split) == {"0": 100}
    # Three deployments, none of the older two with traffic now: the newest of them stays.
    assert cloud.requests_of(v1.UndeployModelRequest) == [
        v1.UndeployModelRequest(
            endpoint=first["endpoint"], deployed_model_id=first["deployed_model_id"]
        )
    ]
    assert third["undeployed"] == [first["deployed_model_id"]]
    assert third["traffic_split"] == {third["deployed_model_id"]: 100}
    assert cloud.requests[-1] == v1.GetEndpointRequest(name=first["endpoint"])
    remaining = [dm.id for dm in cloud.endpoints[first["endpoint"]].deployed_models]
    assert remaining == [second["deployed_model_id"], third["deployed_model_id"]]


def test_keep_versions_one_undeploys_every_older_version_without_traffic(cloud):
    first = _deploy(cloud)
    second = _deploy(cloud, EXPORT_2)
    assert second["undeployed"] == [first["deployed_model_id"]]
    assert second["traffic_split"] == {second["deployed_model_id"]: 100}


def test_other_models_on_the_endpoint_keep_their_share_and_deployment(cloud):
    """A model of another display name shares the endpoint: it keeps its proportional
    share and is never undeployed by this Model's deployments."""
    other = vertex.deploy_to_vertex(
        "gs://bucket/other-model",
        PROJECT,
        REGION,
        "other-model",
        endpoint_display_name=ENDPOINT_NAME,
        serving_image=IMAGE,
        model_client=FakeModelService(cloud),
        endpoint_client=FakeEndpointService(cloud),
    )
    ours = _deploy(cloud, traffic_percent=20)
    assert ours["endpoint"] == other["endpoint"]
    assert ours["traffic_split"] == {other["deployed_model_id"]: 80, ours["deployed_model_id"]: 20}

    newer = _deploy(cloud, EXPORT_2, traffic_percent=25)
    # 75% left for the other model (80 -> 60) and our previous version (20 -> 15).
    assert newer["traffic_split"] == {
        other["deployed_model_id"]: 60,
        ours["deployed_model_id"]: 15,
        newer["deployed_model_id"]: 25,
    }
    full = _deploy(cloud, EXPORT_3, traffic_percent=100)
    assert full["undeployed"] == [newer["deployed_model_id"], ours["deployed_model_id"]]
    deployed = [dm.id for dm in cloud.endpoints[full["endpoint"]].deployed_models]
    assert deployed == [other["deployed_model_id"], full["deployed_model_id"]]


EVALUATION = {"accuracy": 0.9, "loss": 0.3, "examples": 50.0, "champion_accuracy": 0.85}
CONFUSION = {
    "confusionMatrix": {
        "annotationSpecs": [{"displayName": "cat"}, {"displayName": "dog"}],
        "rows": [{"row": [20, 3]}, {"row": [2, 25]}],
    }
}


def test_the_evaluation_is_imported_with_the_version_and_the_alias_moves(cloud):
    first = _deploy(cloud, evaluation=EVALUATION, confusion_matrix=CONFUSION)
    second = _deploy(cloud, EXPORT_2, evaluation=EVALUATION | {"accuracy": 0.95})

    [one, two] = cloud.models[first["model"]]
    assert "blessed" not in one.version_aliases  # moved to the version deployed last
    assert set(two.version_aliases) == {"default", "blessed"}
    assert second["version_aliases"] == list(two.version_aliases)
    [evaluation] = cloud.evaluations[first["model_version_name"]]
    assert first["model_evaluation"] == evaluation.name
    assert evaluation.metrics_schema_uri.endswith("classification_metrics_1.0.0.yaml")
    metrics = type(evaluation).to_dict(evaluation)["metrics"]
    assert metrics["logLoss"] == 0.3
    assert metrics["confidenceMetrics"][0]["precisionAt1"] == 0.9
    assert metrics["confusionMatrix"] == {
        "annotationSpecs": [{"displayName": "cat"}, {"displayName": "dog"}],
        "rows": [[20.0, 3.0], [2.0, 25.0]],
    }
    assert type(evaluation).to_dict(evaluation)["metadata"]["champion_accuracy"] == 0.85
    [later] = cloud.evaluations[second["model_version_name"]]
    assert type(later).to_dict(later)["metadata"]["accuracy"] == 0.95


def test_a_detectors_evaluation_is_imported_in_the_object_detection_schema(cloud):
    coco = {"map": 0.44, "map_50": 0.97, "map_75": 0.41, "objects": 90, "images": 41}
    deployed = _deploy(cloud, evaluation=coco)
    [evaluation] = cloud.evaluations[deployed["model_version_name"]]
    assert evaluation.metrics_schema_uri.endswith("image_object_detection_metrics_1.0.0.yaml")
    assert type(evaluation).to_dict(evaluation)["metrics"] == {
        "boundingBoxMeanAveragePrecision": 0.44,
        "boundingBoxMetrics": [
            {"iouThreshold": 0.5, "meanAveragePrecision": 0.97},
            {"iouThreshold": 0.75, "meanAveragePrecision": 0.41},
        ],
        "evaluatedBoundingBoxCount": 90.0,
    }
    assert type(evaluation).to_dict(evaluation)["metadata"]["map_50"] == 0.97


def test_a_rerun_completes_a_missing_evaluation_and_imports_it_once(cloud):
    first = _deploy(cloud)  # e.g. a run that failed before recording its evaluation
    assert first["model_version_name"] not in cloud.evaluations
    again = _deploy(cloud, evaluation=EVALUATION)
    assert again["already_deployed"] is True
    assert len(cloud.evaluations[first["model_version_name"]]) == 1
    _deploy(cloud, evaluation=EVALUATION)
    assert len(cloud.evaluations[first["model_version_name"]]) == 1
    assert len(cloud.requests_of(v1.ImportModelEvaluationRequest)) == 1
    assert len(cloud.requests_of(v1.MergeVersionAliasesRequest)) == 1


def test_without_an_evaluation_nothing_is_recorded(cloud):
    info = _deploy(cloud)
    assert "model_evaluation" not in info and not cloud.evaluations
    assert not cloud.requests_of(v1.MergeVersionAliasesRequest)


def test_vertex_champion_is_the_default_version(cloud):
    from components.deploy.champion import vertex_champion

    client = FakeModelService(cloud)
    assert vertex_champion(PROJECT, REGION, MODEL_NAME, model_client=client) == ""
    _deploy(cloud)
    _deploy(cloud, EXPORT_2, traffic_percent=10)
    assert vertex_champion(PROJECT, REGION, MODEL_NAME, model_client=client) == EXPORT_2
    # Someone rolls the default back to version 1: that is what serves by default now.
    model = next(iter(cloud.models))
    client.merge_version_aliases(
        v1.MergeVersionAliasesRequest(name=f"{model}@1", version_aliases=["default"])
    )
    assert vertex_champion(PROJECT, REGION, MODEL_NAME, model_client=client) == EXPORT_1


def test_an_uploaded_version_that_was_not_deployed_is_deployed_not_uploaded_again(cloud):
    """A run whose deploy failed after the upload: the re-run reuses the version."""
    FakeModelService(cloud).upload_model(
        vertex.upload_model_request(PARENT, MODEL_NAME, EXPORT_1, IMAGE)
    )
    before = len(cloud.requests)

    info = _deploy(cloud)

    assert not [r for r in cloud.requests[before:] if isinstance(r, v1.UploadModelRequest)]
    assert info["uploaded"] is False and info["model_version_id"] == "1"
    assert info["endpoint_created"] is True and not info["already_deployed"]
    [deploy] = cloud.requests_of(v1.DeployModelRequest)
    assert deploy.deployed_model.model == f"{info['model']}@1"


def test_another_serving_image_is_another_version(cloud):
    first = _deploy(cloud)
    gpu = _deploy(cloud, serving_image=IMAGE.replace("cpu", "gpu"))
    assert gpu["uploaded"] and gpu["model_version_id"] == "2"
    assert gpu["model"] == first["model"]


def test_explanation_spec_goes_into_the_uploaded_model(cloud):
    _deploy(
        cloud,
        explanation_metadata={
            "inputs": {"image": {"inputTensorName": "pixels", "modality": "image"}},
            "outputs": {"probabilities": {"outputTensorName": "probabilities"}},
        },
        explanation_parameters={"integratedGradientsAttribution": {"stepCount": 50}},
    )
    [upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.explanation_spec == v1.ExplanationSpec(
        metadata=v1.ExplanationMetadata(
            inputs={
                "image": v1.ExplanationMetadata.InputMetadata(
                    input_tensor_name="pixels", modality="image"
                )
            },
            outputs={
                "probabilities": v1.ExplanationMetadata.OutputMetadata(
                    output_tensor_name="probabilities"
                )
            },
        ),
        parameters=v1.ExplanationParameters(
            integrated_gradients_attribution=v1.IntegratedGradientsAttribution(step_count=50)
        ),
    )


def test_explanation_spec_from_json_checks_its_input():
    assert vertex_serving.explanation_spec_from_json({}, {}) == (None, None)
    with pytest.raises(ValueError, match="go together"):
        vertex_serving.explanation_spec_from_json({"inputs": {}}, {})
    with pytest.raises(ValueError):
        vertex_serving.explanation_spec_from_json({"no_such_field": 1}, {"xraiAttribution": {}})


def test_ambiguous_display_names_fail_before_any_change(cloud):
    models = FakeModelService(cloud)
    for uri in (EXPORT_1, EXPORT_2):  # two Models of one name (uploaded without parent)
        models.upload_model(vertex.upload_model_request(PARENT, MODEL_NAME, uri, IMAGE))
    with pytest.raises(vertex.VertexDeployError, match="2 Models are named 'image-classifier'"):
        _deploy(cloud, EXPORT_3)
    assert not cloud.requests_of(v1.DeployModelRequest)
    assert len(cloud.requests_of(v1.UploadModelRequest)) == 2


def test_display_names_are_quoted_in_filters(cloud):
    _deploy(cloud, endpoint_display_name='say "hi"')
    [_, endpoints, *_] = cloud.requests
    assert endpoints.filter == 'display_name="say \\"hi\\""'
    assert [e.display_name for e in cloud.endpoints.values()] == ['say "hi"']


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"artifact_uri": "/tmp/export"}, "Cloud Storage"),
        ({"keep_versions": 0}, "keep_versions"),
        ({"traffic_percent": 101}, "traffic_percent"),
        ({"min_replica_count": 2, "max_replica_count": 1}, "replicas"),
        ({"accelerator_count": 1}, "accelerator_type"),
    ],
)
def test_invalid_arguments_fail_before_any_request(cloud, kwargs, error):
    with pytest.raises(ValueError, match=error):
        _deploy(cloud, **kwargs)
    assert cloud.requests == []


# --- a project's rules: its key and its private network --------------------------------

KEY = f"projects/{PROJECT}/locations/{REGION}/keyRings/ml/cryptoKeys/vertex"
NETWORK = f"projects/{PROJECT_NUMBER}/global/networks/ml-vpc"
ACCOUNT = "pipelines@my-project.iam.gserviceaccount.com"


def test_a_key_encrypts_the_uploaded_version_and_the_created_endpoint(cloud):
    info = _deploy(cloud, encryption_spec_key_name=KEY, service_account=ACCOUNT)

    model, endpoint = _model("1001"), f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/1002"
    assert cloud.requests[2:4] == [
        v1.UploadModelRequest(
            parent=PARENT,
            model=v1.Model(
                display_name=MODEL_NAME,
                artifact_uri=EXPORT_1,
                container_spec=v1.ModelContainerSpec(image_uri=IMAGE),
                version_aliases=["default"],
                encryption_spec=v1.EncryptionSpec(kms_key_name=KEY),
            ),
        ),
        v1.CreateEndpointRequest(
            parent=PARENT,
            endpoint=v1.Endpoint(
                display_name=ENDPOINT_NAME, encryption_spec=v1.EncryptionSpec(kms_key_name=KEY)
            ),
        ),
    ]
    [deploy] = cloud.requests_of(v1.DeployModelRequest)
    assert deploy.deployed_model.service_account == ACCOUNT
    assert dict(deploy.traffic_split) == {"0": 100}  # a public endpoint, as by default
    assert info["model_version_name"] == f"{model}@1" and info["endpoint"] == endpoint
    assert info["private_endpoint"] is False and info["network"] == ""


def test_a_version_uploaded_without_the_key_is_not_reused_with_it(cloud):
    first = _deploy(cloud)
    keyed = _deploy(cloud, encryption_spec_key_name=KEY, endpoint_display_name="keyed")
    assert keyed["uploaded"] and keyed["model_version_id"] == "2"
    assert keyed["model"] == first["model"]
    [_, upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.encryption_spec.kms_key_name == KEY
    # With the key again: the keyed version is found, nothing is done.
    again = _deploy(cloud, encryption_spec_key_name=KEY, endpoint_display_name="keyed")
    assert again["already_deployed"] and again["model_version_id"] == "2"


def test_an_endpoint_encrypted_otherwise_is_an_error_before_any_change(cloud):
    _deploy(cloud)  # the endpoint of this name, with Google-managed encryption
    before = len(cloud.requests)
    with pytest.raises(vertex.VertexDeployError, match="Google-managed encryption, not with"):
        _deploy(cloud, EXPORT_2, encryption_spec_key_name=KEY)
    assert [type(r) for r in cloud.requests[before:]] == [
        v1.ListModelsRequest,
        v1.ListModelVersionsRequest,
        v1.ListEndpointsRequest,
    ]


def test_a_private_endpoint_is_created_on_the_network_and_deployed_without_a_split(cloud):
    info = _deploy(
        cloud,
        private_endpoint=True,
        network=NETWORK,
        encryption_spec_key_name=KEY,
        service_account=ACCOUNT,
    )

    model, endpoint = _model("1001"), f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/1002"
    assert cloud.requests[3:] == [
        v1.CreateEndpointRequest(
            parent=PARENT,
            endpoint=v1.Endpoint(
                display_name=ENDPOINT_NAME,
                network=NETWORK,
                encryption_spec=v1.EncryptionSpec(kms_key_name=KEY),
            ),
        ),
        v1.DeployModelRequest(
            endpoint=endpoint,
            deployed_model=v1.DeployedModel(
                model=f"{model}@1",
                display_name="image-classifier-v1",
                dedicated_resources=v1.DedicatedResources(
                    machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                    min_replica_count=1,
                    max_replica_count=1,
                ),
                service_account=ACCOUNT,
            ),
        ),
        v1.GetEndpointRequest(name=endpoint),
    ]
    assert info["private_endpoint"] is True and info["network"] == NETWORK
    # Reached on the network at the deployment's own address, not the public API's.
    assert info["predict_url"] == private_predict_uri(endpoint, info["deployed_model_id"])
    assert info["traffic_split"] == {}


def test_a_new_version_replaces_the_one_a_private_endpoint_serves(cloud):
    private = {"private_endpoint": True, "network": NETWORK}
    first = _deploy(cloud, **private)
    before = len(cloud.requests)

    second = _deploy(cloud, EXPORT_2, **private)

    requests = cloud.requests[before:]
    assert [type(r) for r in requests] == [
        v1.ListModelsRequest,
        v1.ListModelVersionsRequest,
        v1.ListEndpointsRequest,
        v1.UploadModelRequest,
        v1.UndeployModelRequest,  # after the upload, before the deployment
        v1.GetEndpointRequest,
        v1.DeployModelRequest,
        v1.GetEndpointRequest,
    ]
    assert requests[4] == v1.UndeployModelRequest(
        endpoint=first["endpoint"], deployed_model_id=first["deployed_model_id"]
    )
    assert second["endpoint"] == first["endpoint"] and second["model_version_id"] == "2"
    assert second["undeployed"] == [first["deployed_model_id"]]
    deployed = cloud.endpoints[first["endpoint"]].deployed_models
    assert [dm.id for dm in deployed] == [second["deployed_model_id"]]
    # The same export again: nothing to do there either.
    assert _deploy(cloud, EXPORT_2, **private)["already_deployed"]


def test_a_private_endpoint_serving_another_model_is_an_error_before_any_change(cloud):
    private = {"private_endpoint": True, "network": NETWORK}
    _deploy(cloud, model_display_name="other-model", endpoint_display_name=ENDPOINT_NAME, **private)
    before = len(cloud.requests)
    with pytest.raises(vertex.VertexDeployError, match="serves another Model"):
        _deploy(cloud, **private)
    assert not [r for r in cloud.requests[before:] if not type(r).__name__.startswith("List")]


@pytest.mark.parametrize(
    "first, then, error",
    [
        ({}, {"private_endpoint": True, "network": NETWORK}, "is public, but a private on"),
        (
            {"private_endpoint": True, "network": NETWORK},
            {},
            f"is private on {NETWORK}, but a public",
        ),
        (
            {"private_endpoint": True, "network": NETWORK},
            {"private_endpoint": True, "network": NETWORK.replace("ml-vpc", "other")},
            "but a private on projects/123456789/global/networks/other endpoint",
        ),
        # The network alone (for the training jobs) asks for a public endpoint.
        ({"private_endpoint": True, "network": NETWORK}, {"network": NETWORK}, "but a public"),
    ],
)
def test_public_and_private_endpoints_of_one_name_do_not_mix(cloud, first, then, error):
    _deploy(cloud, **first)
    before = len(cloud.requests)
    with pytest.raises(vertex.VertexDeployError, match=re.escape(error)):
        _deploy(cloud, EXPORT_2, **then)
    assert not [r for r in cloud.requests[before:] if not type(r).__name__.startswith("List")]


def test_the_component_passes_the_key_and_the_private_network(cloud, monkeypatch, tmp_path):
    """The component's body (``python_func``, in process) with the project's rules."""
    from google_cloud_pipeline_components.types.artifact_types import (
        VertexEndpoint,
        VertexModel,
    )
    from kfp import dsl

    from components.deploy.component import deploy_vertex

    monkeypatch.setattr(vertex, "model_service_client", lambda region: FakeModelService(cloud))
    monkeypatch.setattr(
        vertex, "endpoint_service_client", lambda region: FakeEndpointService(cloud)
    )
    vertex_endpoint = VertexEndpoint(uri=str(tmp_path / "e"), metadata={})
    deploy_vertex.python_func(
        model=dsl.Model(uri=EXPORT_1, metadata={}),
        vertex_model=VertexModel(uri=str(tmp_path / "m"), metadata={}),
        vertex_endpoint=vertex_endpoint,
        project=PROJECT,
        location=REGION,
        serving_image=IMAGE,
        service_account=ACCOUNT,
        encryption_spec_key_name=KEY,
        network=NETWORK,
        private_endpoint=True,
    )
    [create] = cloud.requests_of(v1.CreateEndpointRequest)
    assert create.endpoint.network == NETWORK
    assert create.endpoint.encryption_spec.kms_key_name == KEY
    [upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.encryption_spec.kms_key_name == KEY
    [deploy] = cloud.requests_of(v1.DeployModelRequest)
    assert deploy.deployed_model.service_account == ACCOUNT
    metadata = vertex_endpoint.metadata
    assert metadata["private_endpoint"] is True and metadata["network"] == NETWORK
    assert metadata["predict_url"].startswith("http://")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"private_endpoint": True}, "needs the VPC network"),
        # Vertex AI names the network by the project's number, not its ID.
        (
            {"private_endpoint": True, "network": f"projects/{PROJECT}/global/networks/v"},
            "project number",
        ),
        ({"private_endpoint": True, "network": "ml-vpc"}, "project number"),
        ({"private_endpoint": True, "network": NETWORK, "traffic_percent": 10}, "must be 100"),
        ({"encryption_spec_key_name": f"{KEY}/cryptoKeyVersions/3"}, "Cloud KMS key"),
        ({"encryption_spec_key_name": "vertex"}, "Cloud KMS key"),
    ],
)
def test_invalid_rules_fail_before_any_request(cloud, kwargs, error):
    with pytest.raises(ValueError, match=error):
        _deploy(cloud, **kwargs)
    assert cloud.requests == []


# --- traffic split -------------------------------------------------------------------


@pytest.mark.parametrize(
    "current, percent, expected",
    [
        ({}, 10, {"0": 100}),
        ({"7": 0}, 0, {"0": 100}),
        ({"7": 100}, 10, {"0": 10, "7": 90}),
        ({"7": 100}, 100, {"0": 100}),
        ({"7": 100}, 0, {"7": 100}),
        ({"a": 50, "b": 50}, 15, {"0": 15, "a": 43, "b": 42}),
        ({"a": 70, "b": 30}, 10, {"0": 10, "a": 63, "b": 27}),
        ({"a": 1, "b": 1, "c": 1}, 0, {"a": 34, "b": 33, "c": 33}),
        # b's 0.5% rounds away (ties go to the larger share): it gets no traffic.
        ({"a": 99, "b": 1}, 50, {"0": 50, "a": 50}),
        ({"a": 99, "b": 1}, 40, {"0": 40, "a": 59, "b": 1}),
    ],
)
def test_split_traffic(current, percent, expected):
    assert vertex.split_traffic(current, percent) == expected


def test_split_traffic_always_sums_to_100():
    rng = random.Random(0)
    for _ in range(500):
        shares = [rng.randint(0, 100) for _ in range(rng.randint(1, 5))]
        current = {str(1000 + i): s for i, s in enumerate(shares)}
        percent = rng.randint(0, 100)
        split = vertex.split_traffic(current, percent)
        assert sum(split.values()) == 100
        assert all(p > 0 for p in split.values())
        if sum(shares):
            assert split.get("0", 0) == percent


def test_split_traffic_rejects_percentages_out_of_range():
    with pytest.raises(ValueError):
        vertex.split_traffic({}, -1)


# --- serving image -------------------------------------------------------------------


@pytest.mark.parametrize(
    "region, tf_version, accelerated, expected",
    [
        ("us-central1", "2.21.0", False, "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15"),
        ("europe-west4", "2.12.1", True, "europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-12"),
        ("asia-east1", "", False, "asia-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15"),
        (
            "australia-southeast1",
            "2.13",
            False,
            "asia-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-13",
        ),
        ("me-west1", "2.15.0", False, "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15"),
    ],
)
def test_prebuilt_serving_image(region, tf_version, accelerated, expected):
    assert (
        vertex_serving.prebuilt_serving_image(region, tf_version, accelerated)
        == f"{expected}:latest"
    )


def test_the_newest_prebuilt_version_is_the_documented_default():
    """When the SDK lists a newer prebuilt TensorFlow, NEWEST_PREBUILT_TF is stale."""
    assert (
        vertex_serving.prebuilt_tf_versions()[-1]
        == (2, 15)
        == (2, int(vertex_serving.NEWEST_PREBUILT_TF[2:]))
    )


def test_prebuilt_image_for_an_accelerated_deploy_is_the_gpu_one(cloud):
    info = _deploy(
        cloud,
        serving_image="",
        export_metadata={"framework_version": "2.21.0"},
        accelerator_type="NVIDIA_L4",
        accelerator_count=1,
        machine_type="g2-standard-8",
    )
    # TF 2.21 has no prebuilt container, but the deploy image would leave the GPU idle.
    assert info["serving_image"] == "us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"
    assert info["serving_container"] == "prebuilt"


@pytest.fixture
def registry(monkeypatch):
    """The images of REGISTRY and TAG, as a pushed build names them."""
    monkeypatch.setenv("IMAGE_REGISTRY", REGISTRY)
    monkeypatch.setenv("IMAGE_TAG", TAG)


def _upload_spec(cloud, artifact_uri: str = EXPORT_1) -> v1.ModelContainerSpec:
    """The container spec of the one upload of ``artifact_uri``."""
    [upload] = [
        r for r in cloud.requests_of(v1.UploadModelRequest) if r.model.artifact_uri == artifact_uri
    ]
    return upload.model.container_spec


def test_auto_serves_a_tf_2_21_export_on_the_deploy_image_and_again_does_nothing(cloud, registry):
    info = _deploy(cloud, serving_image="", export_metadata={"framework_version": "2.21.0"})

    assert _upload_spec(cloud) == CUSTOM_SPEC
    assert info["serving_container"] == "custom" and info["serving_image"] == DEPLOY_IMAGE
    assert info["uploaded"]

    # The same export again: the version of the same artifact and image is found.
    again = _deploy(cloud, serving_image="", export_metadata={"framework_version": "2.21.0"})
    assert len(cloud.requests_of(v1.UploadModelRequest)) == 1
    assert again["already_deployed"] and not again["uploaded"]
    assert again["model_version_name"] == info["model_version_name"]
    assert again["serving_container"] == "custom"


def test_auto_serves_a_tf_2_15_export_on_the_prebuilt_container(cloud, registry):
    info = _deploy(cloud, serving_image="", export_metadata={"framework_version": "2.15.1"})
    assert _upload_spec(cloud) == v1.ModelContainerSpec(image_uri=IMAGE)
    assert info["serving_container"] == "prebuilt" and info["serving_image"] == IMAGE


def test_prebuilt_on_request_serves_a_tf_2_21_export_on_the_newest_prebuilt(cloud, registry):
    info = _deploy(
        cloud,
        serving_image="",
        serving_container="prebuilt",
        export_metadata={"framework_version": "2.21.0"},
    )
    assert _upload_spec(cloud) == v1.ModelContainerSpec(image_uri=IMAGE)
    assert info["serving_container"] == "prebuilt" and info["serving_image"] == IMAGE


def test_switching_the_container_of_an_export_is_a_new_version(cloud, registry):
    first = _deploy(cloud, serving_image="", export_metadata={"framework_version": "2.21.0"})
    prebuilt = _deploy(
        cloud,
        serving_image="",
        serving_container="prebuilt",
        export_metadata={"framework_version": "2.21.0"},
    )
    assert prebuilt["uploaded"] and prebuilt["model_version_id"] == "2"
    assert prebuilt["undeployed"] == [first["deployed_model_id"]]


def test_custom_on_request_takes_the_given_images_and_warns_of_idle_gpus(cloud, caplog):
    pinned = "europe-docker.pkg.dev/other/kfp/deploy:v7"
    info = _deploy(
        cloud,
        model_display_name="Flowers v2",  # not a URL path segment: made one in the server
        serving_image="",
        serving_container="custom",
        deploy_image=pinned,
        export_metadata={"framework_version": "2.15.1"},  # custom even with a prebuilt
        accelerator_type="NVIDIA_L4",
        accelerator_count=1,
        machine_type="g2-standard-8",
    )
    spec = _upload_spec(cloud)
    assert spec.image_uri == pinned and info["serving_container"] == "custom"
    assert spec.predict_route == "/v1/models/Flowers-v2:predict"
    assert list(spec.args[2:4]) == ["--model-name", "Flowers-v2"]
    assert "runs CPU TensorFlow" in caplog.text

    # serving_image replaces the deploy image too.
    other = _deploy(
        cloud,
        EXPORT_2,
        serving_image="europe-docker.pkg.dev/other/kfp/deploy:v8",
        serving_container="custom",
    )
    [_, upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.container_spec.image_uri == other["serving_image"]
    assert upload.model.container_spec.command == CUSTOM_SPEC.command


def test_a_custom_container_on_a_local_image_fails_before_any_request(cloud, monkeypatch):
    monkeypatch.delenv("IMAGE_REGISTRY", raising=False)  # the local images' default name
    with pytest.raises(ValueError, match="Vertex AI cannot pull"):
        _deploy(cloud, serving_image="", export_metadata={"framework_version": "2.21.0"})
    with pytest.raises(ValueError, match="serving_container must be one of"):
        _deploy(cloud, serving_container="docker")
    assert cloud.requests == []


def test_auto_keeps_the_prebuilt_container_for_explanations(registry):
    container = vertex_serving.serving_container_for(
        EXPORT_1, REGION, tf_version="2.21.0", explained=True
    )
    assert container == ("prebuilt", v1.ModelContainerSpec(image_uri=IMAGE))
    assert vertex_serving.serving_container_for(EXPORT_1, REGION, tf_version="2.21.0") == (
        "custom",
        CUSTOM_SPEC,
    )


@pytest.mark.parametrize(
    "tf_version, prebuilt",
    [("2.21.0", False), ("2.16.0rc0", False), ("2.15.1", True), ("2.12", True), ("1.15", False)],
)
def test_has_prebuilt_container(tf_version, prebuilt):
    assert vertex_serving.has_prebuilt_container(tf_version) is prebuilt


def test_saved_model_tf_version(exported_model):
    import tensorflow as tf

    assert vertex_serving.saved_model_tf_version(exported_model) == tf.__version__


# --- the component -------------------------------------------------------------------


def _fakes_in_subprocesses(monkeypatch, tmp_path, state_name: str) -> str:
    """Makes Python processes started from now on install this module's fakes
    (kfp local runs each task in a subprocess, out of reach of monkeypatching)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.environ['FAKE_VERTEX_TESTS'])\n"
        "import test_deploy_vertex\n"
        "test_deploy_vertex.install_fakes()\n"
    )
    state = str(tmp_path / state_name)
    monkeypatch.setenv("FAKE_VERTEX_STATE", state)
    monkeypatch.setenv("FAKE_VERTEX_TESTS", os.path.dirname(os.path.abspath(__file__)))
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), inherited) if p))
    return state


@pytest.mark.filterwarnings("ignore:It looks like you're using the remote file")
def test_component_deploys_in_kfp_local_and_again_does_nothing(kfp_local, tmp_path, monkeypatch):
    from kfp import dsl

    from components.deploy.component import deploy_vertex
    from pipelines.run_local import output_artifact, run_pipeline, task_outputs

    state = _fakes_in_subprocesses(monkeypatch, tmp_path, "cloud.json")

    @dsl.pipeline(name="deploy-vertex-test")
    def pipeline(export_uri: str):
        exported = dsl.importer(
            artifact_uri=export_uri,
            artifact_class=dsl.Model,
            reimport=False,
            metadata={"framework_version": "2.21.0"},
        )
        deploy_vertex(
            model=exported.output,
            project=PROJECT,
            location=REGION,
            traffic_percent=20,
            machine_type="n1-standard-2",
            deploy_image=DEPLOY_IMAGE,  # as the pipeline passes the one it compiled with
        )

    runs = [run_pipeline(pipeline, str(kfp_local), export_uri=EXPORT_1) for _ in range(2)]
    first, second = (task_outputs(run, "deploy-vertex") for run in runs)

    model = output_artifact(first, "vertex_model")
    endpoint = output_artifact(first, "vertex_endpoint")
    model_name, endpoint_name = _model("1001") + "@1", endpoint["metadata"]["resourceName"]
    # GCPC's convention: the REST URL of the resource, and its name as resourceName.
    assert model["uri"] == f"https://us-central1-aiplatform.googleapis.com/v1/{model_name}"
    assert model["metadata"]["resourceName"] == model_name
    # No prebuilt container for TF 2.21's export: the deploy image as a custom container.
    assert model["metadata"]["serving_image"] == DEPLOY_IMAGE
    assert model["metadata"]["serving_container"] == "custom"
    assert model["metadata"]["uploaded"] is True
    assert endpoint["uri"] == f"https://us-central1-aiplatform.googleapis.com/v1/{endpoint_name}"
    assert endpoint_name.startswith(f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/")
    assert endpoint["metadata"]["predict_url"] == f"{endpoint['uri']}:predict"
    assert endpoint["metadata"]["already_deployed"] is False

    again = output_artifact(second, "vertex_endpoint")
    assert again["metadata"]["already_deployed"] is True
    assert again["uri"] == endpoint["uri"]
    assert output_artifact(second, "vertex_model")["metadata"]["uploaded"] is False

    cloud = FakeVertex(state)
    assert [type(r).__name__ for r in cloud.requests] == [
        "ListModelsRequest",
        "ListEndpointsRequest",
        "UploadModelRequest",
        "CreateEndpointRequest",
        "DeployModelRequest",
        "GetEndpointRequest",
        "ListModelsRequest",
        "ListModelVersionsRequest",
        "ListEndpointsRequest",
    ]
    [deploy] = cloud.requests_of(v1.DeployModelRequest)
    resources = deploy.deployed_model.dedicated_resources
    assert resources.machine_spec == v1.MachineSpec(machine_type="n1-standard-2")
    [upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.container_spec == CUSTOM_SPEC


def test_component_uses_the_exported_explanation_spec(cloud, monkeypatch, tmp_path):
    """The explanation branch of the component's body (``python_func``, in process)."""
    from google_cloud_pipeline_components.types.artifact_types import (
        VertexEndpoint,
        VertexModel,
    )
    from kfp import dsl

    from components.deploy.component import deploy_vertex

    monkeypatch.setattr(vertex, "model_service_client", lambda region: FakeModelService(cloud))
    monkeypatch.setattr(
        vertex, "endpoint_service_client", lambda region: FakeEndpointService(cloud)
    )
    spec = {
        "explanation_metadata": {
            "inputs": {"image": {"inputTensorName": "pixels", "modality": "image"}},
            "outputs": {"probabilities": {"outputTensorName": "probabilities"}},
        },
        "explanation_parameters": {"xraiAttribution": {"stepCount": 20}},
    }
    exported = dsl.Model(uri=EXPORT_1, metadata={"framework_version": "2.21.0", **spec})
    vertex_model = VertexModel(uri=str(tmp_path / "m"), metadata={})
    vertex_endpoint = VertexEndpoint(uri=str(tmp_path / "e"), metadata={})

    deploy_vertex.python_func(
        model=exported,
        vertex_model=vertex_model,
        vertex_endpoint=vertex_endpoint,
        project=PROJECT,
        location=REGION,
        enable_explanations=True,
    )

    [upload] = cloud.requests_of(v1.UploadModelRequest)
    assert upload.model.explanation_spec.parameters == v1.ExplanationParameters(
        xrai_attribution=v1.XraiAttribution(step_count=20)
    )
    # XRAI runs on Vertex AI's TensorFlow container: auto keeps it for TF 2.21's export.
    assert upload.model.container_spec == v1.ModelContainerSpec(image_uri=IMAGE)
    assert vertex_model.metadata["serving_container"] == "prebuilt"
    assert upload.model.explanation_spec.metadata.inputs["image"].input_tensor_name == "pixels"
    assert vertex_model.metadata["resourceName"] == _model("1001") + "@1"

    # Neither the artifact's metadata nor the export itself holds a spec.
    with pytest.raises(ValueError, match="holds no explanation spec"):
        vertex_serving.export_explanation_spec(str(tmp_path / "export"))


# --- the command line ----------------------------------------------------------------


def test_cli_vertex_target(cloud, monkeypatch, capsys):
    from components.deploy.__main__ import main

    monkeypatch.setattr(vertex, "model_service_client", lambda region: FakeModelService(cloud))
    monkeypatch.setattr(
        vertex, "endpoint_service_client", lambda region: FakeEndpointService(cloud)
    )
    main(
        ["--target", "vertex", "--export-dir", EXPORT_1, "--project", PROJECT,
         "--region", REGION, "--serving-image", IMAGE, "--traffic-percent", "30",
         "--machine-type", "n1-highcpu-4", "--max-replicas", "2"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_version_name"] == _model("1001") + "@1"
    assert printed["serving_container"] == "prebuilt"
    [deploy] = cloud.requests_of(v1.DeployModelRequest)
    resources = deploy.deployed_model.dedicated_resources
    assert resources.machine_spec.machine_type == "n1-highcpu-4"
    assert (resources.min_replica_count, resources.max_replica_count) == (1, 2)

    main(
        ["--target", "vertex", "--export-dir", EXPORT_2, "--project", PROJECT,
         "--region", REGION, "--serving-container", "custom", "--deploy-image", DEPLOY_IMAGE]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["serving_container"] == "custom"
    assert _upload_spec(cloud, EXPORT_2) == CUSTOM_SPEC

    main(
        ["--target", "vertex", "--export-dir", EXPORT_3, "--project", PROJECT,
         "--region", REGION, "--serving-image", IMAGE, "--endpoint-display-name", "private",
         "--private-endpoint", "--network", NETWORK, "--encryption-spec-key-name", KEY]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["private_endpoint"] is True and printed["network"] == NETWORK
    create = cloud.requests_of(v1.CreateEndpointRequest)[-1]
    assert create.endpoint.network == NETWORK
    assert create.endpoint.encryption_spec.kms_key_name == KEY


def test_cli_checks_each_targets_arguments():
    from components.deploy.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--target", "vertex", "--export-dir", EXPORT_1])
    with pytest.raises(SystemExit):
        parse_args(["--target", "vertex", "--export-dir", EXPORT_1, "--project", PROJECT,
                    "--region", REGION, "--serving-container", "docker"])  # fmt: skip
    with pytest.raises(SystemExit):
        parse_args(["--target", "kserve", "--export-dir", EXPORT_1, "--namespace", "ns"])
    assert parse_args(["--export-dir", "e"]).target == "local"
