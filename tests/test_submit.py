"""pipelines.submit, with pipelines.submit_checks and pipelines.schedules (checks before
sending, and the exact calls to kfp.Client and aiplatform.PipelineJob), the example
parameters, the Makefile targets and cloudbuild.yaml.

Nothing here leaves the machine: the KFP host is a closed or a served loopback port, the
clients are fakes or real classes whose network call is replaced.
"""

from __future__ import annotations

import datetime
import email.parser
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components.images import STAGES
from pipelines import schedules, submit, submit_checks
from pipelines.compile import TARGETS, compile_pipeline
from pipelines.submit import SubmitError, main, submit_kfp, submit_vertex
from pipelines.submit_checks import validate_params

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = "europe-west4-docker.pkg.dev/acme/kfp"


def _with_images(src: str, dst: Path, registry: str) -> str:
    """A copy of a compiled pipeline whose stage images are under ``registry``."""
    docs = list(yaml.safe_load_all(Path(src).read_text()))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        container = executor.get("container", {})
        if "image" in container:
            name = container["image"].rsplit("/", 1)[-1].split(":")[0]
            container["image"] = f"{registry}/{name}:abc123"
    dst.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(dst)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    """Both targets compiled once, with their images under REGISTRY."""
    base = tmp_path_factory.mktemp("compiled")
    return {
        target: _with_images(
            compile_pipeline(target, str(base / f"raw-{target}.yaml")),
            base / f"pipeline-{target}.yaml",
            REGISTRY,
        )
        for target in TARGETS
    }


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_kfphost(monkeypatch):
    monkeypatch.delenv("KFPHOST", raising=False)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class FakeClient:
    """Records kfp.Client(...) and create_run_from_pipeline_package(...)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.runs = []
        FakeClient.last = self

    def create_run_from_pipeline_package(self, **kwargs):
        self.runs.append(kwargs)
        return SimpleNamespace(run_id="run-123")


class FakeJob:
    """Records aiplatform.PipelineJob(...) and .submit(...)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.job_id = "image-classification-20250101000000"
        self.submitted = None
        FakeJob.last = self

    def submit(self, **kwargs):
        self.submitted = kwargs


# --- KFP: host ---------------------------------------------------------------------------


def test_missing_host_is_a_clear_error_with_exit_code_2(compiled, capsys):
    assert main(["kfp", "--pipeline-file", compiled["kfp"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no KFP host: pass --host or set KFPHOST")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("host", ["localhost:8080", "ftp://kfp.example", "http://", "kfp"])
def test_a_host_that_is_not_an_http_url_is_refused(host, compiled, capsys):
    assert main(["kfp", "--host", host, "--pipeline-file", compiled["kfp"]]) == 2
    assert "KFP host must be an http:// or https:// URL" in capsys.readouterr().err


def test_an_unreachable_host_is_refused_before_anything_is_sent(compiled, closed_port, capsys):
    host = f"http://127.0.0.1:{closed_port}"
    assert main(["kfp", "--host", host, "--pipeline-file", compiled["kfp"]]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot reach KFP host {host}: " in err
    assert "refused" in err.lower()


def test_kfphost_from_the_environment(compiled, closed_port, monkeypatch, capsys):
    monkeypatch.setenv("KFPHOST", f"http://127.0.0.1:{closed_port}/")
    assert main(["kfp", "--pipeline-file", compiled["kfp"]]) == 2
    assert f"cannot reach KFP host http://127.0.0.1:{closed_port}:" in capsys.readouterr().err

    monkeypatch.setenv("KFPHOST", "https://kfp.example/")
    submit_kfp(pipeline_file=compiled["kfp"], client_factory=FakeClient, preflight=None)
    assert FakeClient.last.kwargs == {"host": "https://kfp.example"}


def test_a_host_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SubmitError, match=rf"^cannot reach KFP host {host}: .*timed out"):
            submit_checks.check_kfp_host(host, timeout=0.2)


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [200, 403])
def test_any_http_answer_counts_as_reachable(status):
    handler = type("Handler", (_Answer,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        submit_checks.check_kfp_host(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


# --- KFP: the run ------------------------------------------------------------------------


def test_kfp_run_gets_exactly_these_arguments(compiled, tmp_path, capsys):
    params = _write(tmp_path / "p.yaml", "image_dir: gs://b/images\nepochs: 3\nbackbone: B0\n")
    seen = []
    result = submit_kfp(
        "http://kfp.example:8080/",
        pipeline_file=compiled["kfp"],
        params=params,
        experiment="exp-1",
        run_name="run-a",
        namespace="team-a",
        enable_caching=False,
        client_factory=FakeClient,
        preflight=lambda host, timeout: seen.append((host, timeout)),
    )
    assert seen == [("http://kfp.example:8080", 5.0)]
    client = FakeClient.last
    assert client.kwargs == {"host": "http://kfp.example:8080", "namespace": "team-a"}
    assert client.runs == [
        {
            "pipeline_file": compiled["kfp"],
            "arguments": {"image_dir": "gs://b/images", "epochs": 3, "backbone": "B0"},
            "run_name": "run-a",
            "experiment_name": "exp-1",
            "namespace": "team-a",
            "enable_caching": False,
            "pipeline_root": None,
        }
    ]
    url = "http://kfp.example:8080/#/runs/details/run-123"
    assert result.url == url and result.run_id == "run-123"
    assert url in capsys.readouterr().out


def test_kfp_defaults_compile_the_kfp_target_into_build(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGE_REGISTRY", REGISTRY)
    compiled_targets = []

    def fake_compile(target, output, pipeline):
        compiled_targets.append((target, output, pipeline))
        return compile_pipeline(target, output, pipeline=pipeline)

    monkeypatch.setattr("pipelines.compile.compile_pipeline", fake_compile)
    result = submit_kfp(
        "http://kfp.example",
        client_factory=FakeClient,
        preflight=None,
        allow_local_images=True,
    )
    assert compiled_targets == [
        ("kfp", os.path.join("build", "pipeline-kfp.yaml"), "classification")
    ]
    (run,) = FakeClient.last.runs
    assert run["pipeline_file"] == result.pipeline_file == "build/pipeline-kfp.yaml"
    assert (tmp_path / "build" / "pipeline-kfp.yaml").is_file()
    assert re.fullmatch(r"image-classification-\d{8}-\d{6}", run["run_name"])
    assert run["experiment_name"] == "image-classification"
    assert run["arguments"] == {} and run["enable_caching"] is None
    assert FakeClient.last.kwargs == {"host": "http://kfp.example"}

    detection = submit_kfp(
        "http://kfp.example",
        pipeline="detection",
        client_factory=FakeClient,
        preflight=None,
        allow_local_images=True,
    )
    assert compiled_targets[-1] == (
        "kfp",
        os.path.join("build", "detection-pipeline-kfp.yaml"),
        "detection",
    )
    assert detection.pipeline_file == "build/detection-pipeline-kfp.yaml"
    assert re.fullmatch(r"object-detection-\d{8}-\d{6}", FakeClient.last.runs[-1]["run_name"])


def test_kfp_cli_caching_flags(compiled, monkeypatch):
    calls = []
    monkeypatch.setattr(submit, "submit_kfp", lambda host, **kw: calls.append(kw))
    base = ["kfp", "--host", "http://h", "--pipeline-file", compiled["kfp"]]
    assert main(base) == 0
    assert main([*base, "--no-cache"]) == 0
    assert main([*base, "--enable-caching"]) == 0
    assert [c["enable_caching"] for c in calls] == [None, False, True]
    with pytest.raises(SystemExit) as e:
        main([*base, "--no-cache", "--enable-caching"])
    assert e.value.code == 2


def test_local_images_are_refused_unless_allowed(compiled, tmp_path, capsys):
    local = _with_images(compiled["kfp"], tmp_path / "local.yaml", "localhost/kfp-ic")
    args = ["kfp", "--host", "http://127.0.0.1:1", "--pipeline-file", local]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "uses local images no cluster can pull (localhost/kfp-ic/" in err
    assert "IMAGE_REGISTRY" in err
    submit_kfp(
        "http://h",
        pipeline_file=local,
        allow_local_images=True,
        client_factory=FakeClient,
        preflight=None,
    )
    assert FakeClient.last.runs[0]["pipeline_file"] == local


class _KfpApi(BaseHTTPRequestHandler):
    """The three KFP v2beta1 endpoints kfp.Client uses to start a run."""

    def _json(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/apis/v2beta1/healthz":
            self._json({"multi_user": False})
        elif url.path == "/apis/v2beta1/experiments":
            self.server.filters.append(parse_qs(url.query)["filter"][0])
            self._json({"experiments": [{"experiment_id": "exp-9", "display_name": "exp"}]})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.runs.append((self.path, body))
        self._json({"run_id": "run-42", "display_name": body["display_name"]})

    def log_message(self, *args):
        pass


def test_the_real_kfp_client_sends_the_run_to_a_kfp_api(compiled, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file of the user's
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    server.filters, server.runs = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_port}"
    try:
        result = submit_kfp(
            host,
            pipeline_file=compiled["kfp"],
            params={"epochs": 2, "learning_rate": 0.01},
            experiment="exp",
            run_name="run-b",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.url == f"{host}/#/runs/details/run-42"
    (predicate,) = json.loads(server.filters[0])["predicates"]
    assert predicate["key"] == "display_name" and "exp" in predicate.values()
    ((path, body),) = server.runs
    assert path == "/apis/v2beta1/runs"
    assert body["display_name"] == "run-b" and body["experiment_id"] == "exp-9"
    assert body["runtime_config"]["parameters"] == {"epochs": 2, "learning_rate": 0.01}
    sent = body["pipeline_spec"]  # with a platform spec: {pipeline_spec, platform_spec}
    assert sent.get("pipeline_spec", sent)["pipelineInfo"]["name"] == "image-classification"
    assert f"{host}/#/runs/details/run-42" in capsys.readouterr().out


# --- parameters --------------------------------------------------------------------------

PARAMETERS = {
    "name": {"parameterType": "STRING", "defaultValue": "x", "isOptional": True},
    "epochs": {"parameterType": "NUMBER_INTEGER", "defaultValue": 10.0, "isOptional": True},
    "rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.1, "isOptional": True},
    "flag": {"parameterType": "BOOLEAN", "defaultValue": False, "isOptional": True},
    "items": {"parameterType": "LIST", "defaultValue": [], "isOptional": True},
    "config": {"parameterType": "STRUCT", "defaultValue": {}, "isOptional": True},
}


def test_values_of_the_declared_types_pass():
    values = {
        "name": "n",
        "epochs": 3,
        "rate": 1,
        "flag": True,
        "items": ["--a=b"],
        "config": {"k": 1},
    }
    assert validate_params(values, PARAMETERS) == values
    assert validate_params({"epochs": 4.0}, PARAMETERS) == {"epochs": 4}
    assert validate_params({}, PARAMETERS) == {}


@pytest.mark.parametrize(
    "name, value",
    [
        ("name", 3),
        ("epochs", "10"),
        ("epochs", 2.5),
        ("epochs", True),
        ("rate", "0.1"),
        ("rate", False),
        ("flag", "true"),
        ("flag", 1),
        ("items", "a,b"),
        ("config", ["k"]),
        ("epochs", None),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(name, value):
    with pytest.raises(SubmitError, match=rf"^{name} must be .*got {type(value).__name__}"):
        validate_params({name: value}, PARAMETERS)


def test_an_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(SubmitError) as e:
        validate_params({"epoch": 3, "lr": 0.1}, PARAMETERS)
    assert str(e.value) == (
        "unknown pipeline parameter(s): epoch, lr; the pipeline's parameters are: "
        "config, epochs, flag, items, name, rate"
    )


def test_a_required_parameter_left_out_is_refused():
    parameters = {**PARAMETERS, "project": {"parameterType": "STRING"}}
    with pytest.raises(SubmitError, match="missing required parameter.*: project"):
        validate_params({"epochs": 1}, parameters)


def test_params_files_in_yaml_and_json(compiled, tmp_path):
    as_yaml = _write(tmp_path / "p.yaml", "epochs: 3\nbeam_args: ['--x=1']\nweights: none\n")
    as_json = _write(
        tmp_path / "p.json", '{"epochs": 3, "beam_args": ["--x=1"], "weights": "none"}'
    )
    for path in (as_yaml, as_json):
        submit_kfp(
            "http://h",
            pipeline_file=compiled["kfp"],
            params=path,
            client_factory=FakeClient,
            preflight=None,
        )
        assert FakeClient.last.runs[0]["arguments"] == {
            "epochs": 3,
            "beam_args": ["--x=1"],
            "weights": "none",
        }
    assert submit_checks.load_params(_write(tmp_path / "empty.yaml", "")) == {}


@pytest.mark.parametrize(
    "file, text, message",
    [
        (
            "list.yaml",
            "- epochs\n- 3\n",
            "must hold a mapping of parameter names to values, not a list",
        ),
        ("scalar.json", "3", "must hold a mapping of parameter names to values, not a int"),
        ("bad.json", "{epochs: 3}", "is not valid JSON"),
        ("bad.yaml", "epochs: [3\n", "is not valid YAML"),
    ],
)
def test_a_params_file_that_is_not_a_mapping_is_refused(
    file, text, message, tmp_path, compiled, capsys
):
    path = _write(tmp_path / file, text)
    args = ["kfp", "--host", "http://127.0.0.1:1", "--pipeline-file", compiled["kfp"]]
    assert main([*args, "--params", path]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_params_are_checked_against_the_compiled_pipeline_before_the_host(
    compiled, tmp_path, capsys
):
    path = _write(tmp_path / "p.yaml", "epochs: 3\nepoch: 4\n")
    # A host that would not answer: the parameters are refused first.
    args = ["kfp", "--host", "http://127.0.0.1:1", "--pipeline-file", compiled["kfp"]]
    assert main([*args, "--params", path]) == 2
    err = capsys.readouterr().err
    assert "unknown pipeline parameter(s): epoch; the pipeline's parameters are: " in err
    # Sorted, so a user scanning for the name they meant finds it.
    assert "accuracy_threshold, augment, backbone, backup_dir, batch_size" in err
    missing = str(tmp_path / "missing.yaml")
    assert main([*args, "--params", missing]) == 2
    assert f"params file not found: {missing}" in capsys.readouterr().err


def test_a_file_that_is_not_a_compiled_pipeline_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "x.yaml", "name: not a pipeline\n")
    assert main(["kfp", "--host", "http://h", "--pipeline-file", path]) == 2
    assert "is not a compiled KFP v2 pipeline" in capsys.readouterr().err
    assert main(["kfp", "--host", "http://h", "--pipeline-file", str(tmp_path / "no.yaml")]) == 2
    assert "pipeline file not found" in capsys.readouterr().err


@pytest.mark.parametrize("target", TARGETS)
def test_the_example_params_fit_both_targets(target, compiled):
    """Each name in the example is a parameter of the pipeline, its value of the
    parameter's type: those set, and those commented out for a user to uncomment."""
    path = ROOT / "pipelines" / "params.example.yaml"
    params = submit_checks.load_params(path)
    assert {"image_dir", "epochs", "backbone"} <= set(params)
    commented = re.findall(r"^# ?([a-z_]+: .*)$", path.read_text(), re.MULTILINE)
    suggested = yaml.safe_load("\n".join(commented))
    assert {"class_weight", "tune_trials", "beam_runner", "dataflow_project"} <= set(suggested)
    spec = submit_checks.load_pipeline_spec(compiled[target])
    every = {**params, **suggested}
    assert validate_params(every, submit_checks.pipeline_parameters(spec)) == every


@pytest.mark.parametrize("target", TARGETS)
def test_the_detection_example_params_fit_the_detection_pipeline(target, tmp_path):
    path = ROOT / "pipelines" / "params.detection.example.yaml"
    params = submit_checks.load_params(path)
    assert {"voc_dir", "epochs", "backbone", "map50_threshold"} <= set(params)
    commented = re.findall(r"^# ?([a-z_]+: [^#]*)", path.read_text(), re.MULTILINE)
    suggested = yaml.safe_load("\n".join(commented))
    assert {"coco_json", "family", "preset", "beam_runner"} <= set(suggested)
    compiled = compile_pipeline(target, str(tmp_path / "detection.yaml"), pipeline="detection")
    spec = submit_checks.load_pipeline_spec(compiled)
    every = {**params, **suggested}
    assert validate_params(every, submit_checks.pipeline_parameters(spec)) == every


# --- Vertex AI ---------------------------------------------------------------------------

VERTEX = ["vertex", "--project", "my-proj", "--region", "us-central1", "--bucket", "my-bucket"]
KEY = "projects/kms-proj/locations/{region}/keyRings/ml/cryptoKeys/pipelines"
NETWORK = "projects/123456789012/global/networks/ml-vpc"


@pytest.mark.parametrize(
    "drop, missing",
    [
        ("--project", "missing --project for"),
        ("--region", "missing --region for"),
        ("--bucket", "missing --bucket (or --pipeline-root) for"),
    ],
)
def test_vertex_needs_project_region_and_bucket(drop, missing, compiled, capsys):
    i = VERTEX.index(drop)
    args = VERTEX[:i] + VERTEX[i + 2 :]
    assert main([*args, "--pipeline-file", compiled["vertex"]]) == 2
    assert f"error: {missing} a Vertex AI submission" in capsys.readouterr().err
    assert main(["vertex", "--pipeline-file", compiled["vertex"]]) == 2
    assert "missing --project, --region, --bucket" in capsys.readouterr().err


@pytest.mark.parametrize("bucket", ["my-bucket", "gs://my-bucket", "gs://my-bucket/"])
def test_bucket_name_or_gs_uri(bucket):
    assert submit_checks.bucket_name(bucket) == "my-bucket"


@pytest.mark.parametrize(
    "bucket, message",
    [
        ("My_Bucket", "invalid bucket name"),
        ("b", "invalid bucket name"),
        ("-bucket", "invalid bucket name"),
        ("gs://bucket/some/path", "pass a folder as --pipeline-root"),
    ],
)
def test_an_invalid_bucket_is_refused(bucket, message):
    with pytest.raises(SubmitError, match=message):
        submit_checks.bucket_name(bucket)


def test_missing_credentials_name_the_fix(compiled, monkeypatch, capsys):
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    assert main([*VERTEX, "--pipeline-file", compiled["vertex"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Google Cloud credentials found: ")
    assert "gcloud auth application-default login" in err
    assert "GOOGLE_APPLICATION_CREDENTIALS" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_vertex_job_gets_exactly_these_arguments(compiled, tmp_path, capsys):
    params = _write(tmp_path / "p.json", '{"epochs": 5, "image_dir": "gs://b/img"}')
    credentials = object()
    settings = {
        "service_account": "runner@my-proj.iam.gserviceaccount.com",
        "encryption_spec_key_name": KEY.format(region="europe-west4"),
        "network": NETWORK,
    }
    result = submit_vertex(
        "my-proj",
        "europe-west4",
        "gs://my-bucket",
        service_account=settings["service_account"],
        encryption_key=settings["encryption_spec_key_name"],
        network=NETWORK,
        failure_policy="fast",
        params=params,
        pipeline_file=compiled["vertex"],
        enable_caching=True,
        display_name="nightly",
        labels="team=vision,env=dev",
        job_factory=FakeJob,
        credentials_check=lambda: credentials,
    )
    # The flags also set the pipeline's parameters of the same name, where it has them.
    declared = submit_checks.pipeline_parameters(
        submit_checks.load_pipeline_spec(compiled["vertex"])
    )
    job = FakeJob.last
    assert job.kwargs == {
        "display_name": "nightly",
        "template_path": compiled["vertex"],
        "pipeline_root": "gs://my-bucket/pipeline_root",
        "parameter_values": {
            "epochs": 5,
            "image_dir": "gs://b/img",
            **{name: value for name, value in settings.items() if name in declared},
        },
        "enable_caching": True,
        "encryption_spec_key_name": settings["encryption_spec_key_name"],
        "labels": {"team": "vision", "env": "dev"},
        "credentials": credentials,
        "project": "my-proj",
        "location": "europe-west4",
        "failure_policy": "fast",
    }
    assert job.submitted == {
        "service_account": "runner@my-proj.iam.gserviceaccount.com",
        "network": NETWORK,
    }
    assert result.run_id == job.job_id and result.schedule_id is None
    url = (
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/"
        "image-classification-20250101000000?project=my-proj"
    )
    assert result.url == url
    assert url in capsys.readouterr().out


def test_vertex_defaults_and_pipeline_root(compiled):
    submit_vertex(
        "my-proj",
        "us-central1",
        pipeline_root="gs://other/root",
        pipeline_file=compiled["vertex"],
        job_factory=FakeJob,
        credentials_check=None,
    )
    job = FakeJob.last
    assert job.kwargs["display_name"] == "image-classification"
    assert job.kwargs["pipeline_root"] == "gs://other/root"
    assert job.kwargs["parameter_values"] == {}
    assert job.kwargs["enable_caching"] is None and job.kwargs["labels"] is None
    assert job.kwargs["encryption_spec_key_name"] is None and job.kwargs["failure_policy"] is None
    assert job.submitted == {"service_account": None, "network": None}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"project": "My Project"}, "invalid project id"),
        ({"region": "uscentral"}, "invalid region"),
        ({"pipeline_root": "/tmp/root"}, "--pipeline-root must be a gs:// URI"),
        ({"service_account": "runner"}, "--service-account takes a service account email"),
        ({"labels": "Team=x"}, "invalid label Team=x"),
        ({"labels": "team"}, "labels are key=value pairs"),
    ],
)
def test_vertex_argument_checks(kwargs, message, compiled):
    args = {"project": "my-proj", "region": "us-central1", "bucket": "my-bucket", **kwargs}
    with pytest.raises(SubmitError, match=re.escape(message)):
        submit_vertex(
            **args, pipeline_file=compiled["vertex"], job_factory=FakeJob, credentials_check=None
        )


def test_the_real_pipeline_job_accepts_the_arguments(compiled, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    def fake_submit(self, **kwargs):  # the one call that would reach Vertex AI
        self.submitted = kwargs

    monkeypatch.setattr(aiplatform.PipelineJob, "submit", fake_submit)

    result = submit_vertex(
        "my-proj",
        "us-central1",
        "my-bucket",
        params={"epochs": 2, "learning_rate": 0.5, "beam_args": ["--a=b"]},
        pipeline_file=compiled["vertex"],
        job_factory=None,  # aiplatform.PipelineJob
        credentials_check=AnonymousCredentials,
    )
    job = result.handle
    assert job.submitted == {"service_account": None, "network": None}
    assert job.project == "my-proj" and job.location == "us-central1"
    config = job._gca_resource.runtime_config
    assert config.gcs_output_directory == "gs://my-bucket/pipeline_root"
    assert dict(config.parameter_values)["epochs"] == 2
    assert list(dict(config.parameter_values)["beam_args"]) == ["--a=b"]
    assert result.url == submit.vertex_run_url("us-central1", job.job_id, "my-proj")


# --- Vertex AI: service account, CMEK, network, failure policy ---------------------------

SA = "pipelines@my-proj.iam.gserviceaccount.com"
SETTINGS = ("service_account", "encryption_spec_key_name", "network")


@pytest.fixture(scope="module")
def settings_pipeline(tmp_path_factory) -> str:
    """A small compiled pipeline that, like the vertex target's, declares the parameters
    service_account, encryption_spec_key_name and network for the jobs it starts."""
    from kfp import compiler, dsl

    def job(epochs, service_account, encryption_spec_key_name, network):
        return dsl.ContainerSpec(
            image=f"{REGISTRY}/train:abc123",
            command=["echo"],
            args=[epochs, service_account, encryption_spec_key_name, network],
        )

    def job_settings(epochs=1, service_account="", encryption_spec_key_name="", network=""):
        job_component(
            epochs=epochs,
            service_account=service_account,
            encryption_spec_key_name=encryption_spec_key_name,
            network=network,
        )

    # Real types, not the strings this module's `from __future__ import annotations` makes.
    types = {"epochs": int, **dict.fromkeys(SETTINGS, str)}
    job.__annotations__ = {**types, "return": dsl.ContainerSpec}
    job_settings.__annotations__ = types
    job_component = dsl.container_component(job)
    path = tmp_path_factory.mktemp("settings") / "job-settings.yaml"
    compiler.Compiler().compile(dsl.pipeline(name="job-settings")(job_settings), str(path))
    return str(path)


def test_the_flags_fill_the_pipeline_parameters_of_the_same_name(settings_pipeline):
    key = KEY.format(region="us-central1")
    common = {"pipeline_file": settings_pipeline, "job_factory": FakeJob, "credentials_check": None}
    submit_vertex(
        "my-proj",
        "us-central1",
        "my-bucket",
        service_account=SA,
        encryption_key=key,
        network=NETWORK,
        params={"epochs": 2},
        **common,
    )
    job = FakeJob.last
    assert job.kwargs["parameter_values"] == {
        "epochs": 2,
        "service_account": SA,
        "encryption_spec_key_name": key,
        "network": NETWORK,
    }
    assert job.kwargs["encryption_spec_key_name"] == key
    assert job.submitted == {"service_account": SA, "network": NETWORK}

    # The same value twice is no conflict; a parameter without its flag is the user's alone.
    submit_vertex(
        "my-proj",
        "us-central1",
        "my-bucket",
        service_account=SA,
        params={"service_account": SA, "network": NETWORK},
        **common,
    )
    job = FakeJob.last
    assert job.kwargs["parameter_values"] == {"service_account": SA, "network": NETWORK}
    assert job.kwargs["encryption_spec_key_name"] is None
    assert job.submitted == {"service_account": SA, "network": None}


@pytest.mark.parametrize(
    "flag, name, value",
    [
        ("--service-account", "service_account", SA),
        ("--encryption-key", "encryption_spec_key_name", KEY.format(region="us-central1")),
        ("--network", "network", NETWORK),
    ],
)
def test_a_parameter_that_differs_from_its_flag_is_refused(
    flag, name, value, settings_pipeline, tmp_path, capsys
):
    params = _write(tmp_path / "p.yaml", f"{name}: other\n")
    FakeJob.last = None
    args = [*VERTEX, "--pipeline-file", settings_pipeline, "--params", params, flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {flag} is {value!r} but the pipeline parameter {name} is 'other': leave "
        f"{name} out of the parameters (the flag sets it) or give both the same value\n"
    )


def _vertex_api(monkeypatch) -> list:
    """Stands in for the Vertex AI API at the GAPIC clients the SDK calls: the real
    PipelineJob and PipelineJobSchedule build the requests, which are recorded."""
    from google.cloud.aiplatform.compat.services import (
        pipeline_service_client,
        schedule_service_client,
    )
    from google.cloud.aiplatform.compat.types import (
        pipeline_job as gca_pipeline_job,
        schedule as gca_schedule,
    )
    from google.cloud.aiplatform.utils import gcs_utils

    sent = []

    def create_pipeline_job(self, *, parent, pipeline_job, pipeline_job_id, **kwargs):
        sent.append(("create_pipeline_job", parent, pipeline_job))
        created = gca_pipeline_job.PipelineJob(pipeline_job)
        created.name = f"{parent}/pipelineJobs/{pipeline_job_id}"
        return created

    def create_schedule(self, *, parent, schedule, **kwargs):
        sent.append(("create_schedule", parent, schedule))
        created = gca_schedule.Schedule(schedule)
        created.name = f"{parent}/schedules/4242"
        return created

    monkeypatch.setattr(
        pipeline_service_client.PipelineServiceClient, "create_pipeline_job", create_pipeline_job
    )
    monkeypatch.setattr(
        schedule_service_client.ScheduleServiceClient, "create_schedule", create_schedule
    )
    # PipelineJob.submit would otherwise look for the pipeline root's bucket in Cloud Storage.
    monkeypatch.setattr(
        gcs_utils,
        "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
        lambda **kwargs: None,
    )
    return sent


def _assert_job_settings(job, key: str) -> None:
    """The request's PipelineJob carries what a production project relies on."""
    from google.cloud.aiplatform.compat.types import pipeline_failure_policy

    assert job.service_account == SA and job.network == NETWORK
    assert job.encryption_spec.kms_key_name == key
    assert dict(job.labels) == {"team": "vision"}
    config = job.runtime_config
    assert config.gcs_output_directory == "gs://my-bucket/pipeline_root"
    assert (
        config.failure_policy
        == pipeline_failure_policy.PipelineFailurePolicy.PIPELINE_FAILURE_POLICY_FAIL_FAST
    )
    assert dict(config.parameter_values) == {
        "epochs": 4,
        "service_account": SA,
        "encryption_spec_key_name": key,
        "network": NETWORK,
    }
    tasks = job.pipeline_spec["root"]["dag"]["tasks"]
    assert [task["cachingOptions"]["enableCache"] for task in tasks.values()] == [False]


def test_the_real_pipeline_job_request_carries_the_settings(settings_pipeline, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    sent = _vertex_api(monkeypatch)
    key = KEY.format(region="us-central1")
    result = submit_vertex(
        "my-proj",
        "us-central1",
        "my-bucket",
        service_account=SA,
        encryption_key=key,
        network=NETWORK,
        failure_policy="fast",
        labels="team=vision",
        enable_caching=False,
        params={"epochs": 4},
        pipeline_file=settings_pipeline,
        credentials_check=AnonymousCredentials,
    )
    ((call, parent, job),) = sent
    assert call == "create_pipeline_job" and parent == "projects/my-proj/locations/us-central1"
    _assert_job_settings(job, key)
    assert result.run_id == result.handle.job_id and result.schedule_id is None


def test_a_vertex_schedule_carries_the_settings_to_its_runs(
    settings_pipeline, tmp_path, monkeypatch, capsys
):
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    sent = _vertex_api(monkeypatch)
    monkeypatch.setattr(google.auth, "default", lambda **kwargs: (AnonymousCredentials(), None))
    key = KEY.format(region="us-central1")
    params = _write(tmp_path / "p.yaml", "epochs: 4\n")
    args = [
        *VERTEX,
        "--pipeline-file", settings_pipeline,
        "--params", params,
        "--service-account", SA,
        "--encryption-key", key,
        "--network", NETWORK,
        "--failure-policy", "fast",
        "--labels", "team=vision",
        "--cache", "off",
        "--schedule", "TZ=America/New_York 0 3 * * 1-5",
        "--schedule-name", "nightly",
        "--max-concurrent-runs", "2",
        "--max-runs", "30",
        "--start-time", "2030-01-01T00:00:00Z",
        "--end-time", "2031-01-01T06:00:00+01:00",
    ]  # fmt: skip
    assert main(args) == 0
    ((call, parent, schedule),) = sent  # a schedule, and no job of its own
    assert call == "create_schedule" and parent == "projects/my-proj/locations/us-central1"
    assert schedule.display_name == "nightly"
    assert schedule.cron == "TZ=America/New_York 0 3 * * 1-5"
    assert schedule.max_concurrent_run_count == 2 and schedule.max_run_count == 30
    utc = datetime.UTC
    assert schedule.start_time == datetime.datetime(2030, 1, 1, tzinfo=utc)
    assert schedule.end_time == datetime.datetime(2031, 1, 1, 5, tzinfo=utc)
    request = schedule.create_pipeline_job_request
    assert request.parent == parent
    _assert_job_settings(request.pipeline_job, key)
    url = (
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/pipelines/"
        "schedules/4242?project=my-proj"
    )
    assert url in capsys.readouterr().out


def test_a_vertex_schedule_returns_its_id_and_url(compiled):
    class ScheduledJob(FakeJob):
        def create_schedule(self, **kwargs):
            self.scheduled = kwargs
            return SimpleNamespace(resource_name="projects/1/locations/us-central1/schedules/77")

    result = submit_vertex(
        "my-proj",
        "us-central1",
        "my-bucket",
        pipeline_file=compiled["vertex"],
        schedule="0 3 * * *",
        job_factory=ScheduledJob,
        credentials_check=None,
    )
    job = ScheduledJob.last
    assert job.submitted is None  # no run now
    assert job.scheduled == {
        "cron": "0 3 * * *",
        "display_name": "image-classification-schedule",
        "start_time": None,
        "end_time": None,
        "max_run_count": None,
        "max_concurrent_run_count": 1,
        "service_account": None,
        "network": None,
    }
    assert result.run_id is None and result.schedule_id == "77"
    assert result.url == schedules.vertex_schedule_url("us-central1", "77", "my-proj")


# --- schedules: cron and options ----------------------------------------------------------


@pytest.mark.parametrize(
    "cron, vertex, kfp",
    [
        ("0 3 * * *", "0 3 * * *", "0 0 3 * * *"),
        ("  */15  9-17 * * MON-FRI ", "*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("0 3 1,15 JAN,JUL 0", "0 3 1,15 JAN,JUL 0", "0 0 3 1,15 JAN,JUL 0"),
        ("TZ=America/New_York 0 3 * * *", "TZ=America/New_York 0 3 * * *", None),
        ("CRON_TZ=Europe/Berlin 30 6 * * 1", "CRON_TZ=Europe/Berlin 30 6 * * 1", None),
        ("30 0 3 * * 1-5", None, "30 0 3 * * 1-5"),
        ("0 0/30 * * * ?", None, "0 0/30 * * * ?"),
    ],
)
def test_cron_as_each_host_takes_it(cron, vertex, kfp):
    for convert, expected in ((schedules.vertex_cron, vertex), (schedules.kfp_cron, kfp)):
        if expected is None:
            with pytest.raises(SubmitError, match=re.escape(f"invalid schedule {cron!r}")):
                convert(cron)
        else:
            assert convert(cron) == expected


@pytest.mark.parametrize(
    "convert, cron, message",
    [
        (schedules.vertex_cron, "0 3 * *", "a Vertex AI schedule takes 5 cron fields"),
        (schedules.vertex_cron, "0 0 3 * * *", "optionally after TZ=<time zone>; got 6"),
        (schedules.vertex_cron, "TZ=Mars/Olympus 0 3 * * *", "'Mars/Olympus' is not an IANA"),
        (schedules.vertex_cron, "0 3 * * ?", "the day of week field '?' may only hold"),
        (schedules.vertex_cron, "0 24 * * *", "the hour field '24' is outside 0-23"),
        (schedules.vertex_cron, "60 3 * * *", "the minute field '60' is outside 0-59"),
        (schedules.vertex_cron, "0 3 0 * *", "the day of month field '0' is outside 1-31"),
        (schedules.vertex_cron, "0 3 * 13 *", "the month field '13' is outside 1-12"),
        (schedules.kfp_cron, "0 3 * *", "give 5 cron fields"),
        (schedules.kfp_cron, "0 0 0 3 * * *", "or KFP's 6 with seconds first"),
        (schedules.kfp_cron, "@daily", "got 1"),
        (schedules.kfp_cron, "0 3 * * $", "the day of week field '$' may only hold"),
        (schedules.kfp_cron, "61 0 3 * * *", "the second field '61' is outside 0-59"),
        (schedules.kfp_cron, "TZ=UTC 0 3 * * *", "drop the TZ= prefix"),
    ],
)
def test_a_cron_a_host_would_refuse_is_refused(convert, cron, message):
    with pytest.raises(SubmitError, match=re.escape(message)):
        convert(cron)


VERTEX_SCHEDULE = {"schedule": "0 3 * * *"}
KFP_SCHEDULE = {"schedule": "0 3 * * *"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule_name": "nightly"}, "--schedule-name only apply with --schedule"),
        (
            {"max_concurrent_runs": 2, "start_time": "2030-01-01T00:00:00Z"},
            "--max-concurrent-runs, --start-time only apply with --schedule",
        ),
        ({"max_runs": 3}, "--max-runs only apply with --schedule"),
        (
            {**VERTEX_SCHEDULE, "display_name": "x"},
            "--display-name names one run; a schedule's runs are named after --schedule-name",
        ),
        ({**VERTEX_SCHEDULE, "max_concurrent_runs": 0}, "--max-concurrent-runs takes a whole"),
        ({**VERTEX_SCHEDULE, "max_runs": 0}, "--max-runs takes a whole number from 1"),
        ({**VERTEX_SCHEDULE, "start_time": "tomorrow"}, "--start-time takes an RFC 3339 time"),
        ({**VERTEX_SCHEDULE, "start_time": "2030-01-01T03:00:00"}, "has no time zone"),
        ({**VERTEX_SCHEDULE, "end_time": "2001-01-01T00:00:00Z"}, "is not after now"),
        (
            {
                **VERTEX_SCHEDULE,
                "start_time": "2031-01-01T00:00:00Z",
                "end_time": "2030-01-01T00:00:00Z",
            },
            "--end-time 2030-01-01T00:00:00Z is not after now and --start-time",
        ),
        ({"encryption_key": "projects/p/locations/global/keyRings/r/cryptoKeys/k"},
         "--encryption-key is in location 'global' but the job runs in 'us-central1'"),
        ({"encryption_key": KEY.format(region="europe-west4")},
         "Vertex AI needs a key in the same region as the job"),
        ({"encryption_key": KEY.format(region="us-central1") + "/cryptoKeyVersions/1"},
         "(the key, not one of its versions)"),
        ({"encryption_key": "pipelines-key"}, "--encryption-key takes a Cloud KMS key name"),
        ({"network": "projects/my-proj/global/networks/ml-vpc"}, "the number, not the project id"),
        ({"network": "ml-vpc"}, "--network takes projects/<project number>/global/networks/"),
        ({"failure_policy": "quick"}, "--failure-policy takes slow or fast, got 'quick'"),
    ],
)  # fmt: skip
def test_vertex_options_are_checked_before_anything_is_sent(kwargs, message, compiled):
    FakeJob.last = None
    with pytest.raises(SubmitError, match=re.escape(message)):
        submit_vertex(
            "my-proj",
            "us-central1",
            "my-bucket",
            pipeline_file=compiled["vertex"],
            job_factory=FakeJob,
            credentials_check=None,
            **kwargs,
        )
    assert FakeJob.last is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule_name": "nightly"}, "--schedule-name only apply with --schedule"),
        ({**KFP_SCHEDULE, "run_name": "r"}, "--run-name names one run"),
        ({**KFP_SCHEDULE, "max_concurrent_runs": 11}, "--max-concurrent-runs is at most 10"),
        ({"schedule": "TZ=UTC 0 3 * * *"}, "CRON_SCHEDULE_TIMEZONE"),
        ({**KFP_SCHEDULE, "end_time": "2001-01-01T00:00:00Z"}, "is not after now"),
    ],
)
def test_kfp_schedule_options_are_checked_before_anything_is_sent(kwargs, message, compiled):
    FakeClient.last = None
    with pytest.raises(SubmitError, match=re.escape(message)):
        submit_kfp(
            "http://h",
            pipeline_file=compiled["kfp"],
            client_factory=FakeClient,
            preflight=None,
            **kwargs,
        )
    assert FakeClient.last is None


def test_cache_on_off_on_the_command_line(compiled, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(submit, "submit_kfp", lambda host, **kw: calls.append(kw))
    monkeypatch.setattr(submit, "submit_vertex", lambda *args, **kw: calls.append(kw))
    for target in (["kfp", "--host", "http://h"], VERTEX):
        for value in ("on", "off"):
            assert main([*target, "--cache", value]) == 0
        with pytest.raises(SystemExit) as e:
            main([*target, "--cache", "yes"])
        assert (
            e.value.code == 2 and "--cache: takes on or off, got 'yes'" in capsys.readouterr().err
        )
        with pytest.raises(SystemExit):
            main([*target, "--cache", "on", "--no-cache"])
    assert [c["enable_caching"] for c in calls] == [True, False, True, False]


# --- KFP: recurring runs ------------------------------------------------------------------

CREATED = "2030-01-01T00:00:00Z"


class _KfpV2Api(BaseHTTPRequestHandler):
    """The KFP v2beta1 endpoints kfp.Client and the kfp CLI call, recording each request as
    (method, path, query, body): JSON, or for an upload the form's file and its bytes."""

    def _json(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = None
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            message = email.parser.BytesParser().parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw
            )
            body = {
                part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                for part in message.get_payload()
            }
        elif raw:
            body = json.loads(raw)
        self.server.requests.append((self.command, url.path, parse_qs(url.query), body))
        return url.path, body

    def _recurring_run(self, body=None):
        return {
            "recurring_run_id": "rr-1",
            "display_name": (body or {}).get("display_name", "nightly"),
            "created_at": CREATED,
            "experiment_id": "exp-1",
            "status": "ENABLED",
        }

    def do_GET(self):
        path, _ = self._record()
        if path == "/apis/v2beta1/healthz":
            self._json({"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            self._json({})  # none yet: the client creates it
        elif path.startswith("/apis/v2beta1/runs/"):
            run_id = path.rsplit("/", 1)[-1]
            self._json({"run_id": run_id, "display_name": "by-hand", "created_at": CREATED})
        elif path == "/apis/v2beta1/recurringruns":
            self._json({"recurringRuns": [self._recurring_run()], "total_size": 1})
        elif path.startswith("/apis/v2beta1/recurringruns/"):
            self._json(self._recurring_run())
        else:
            self._json({"error": f"no {path}"}, 404)

    def do_POST(self):
        path, body = self._record()
        if path == "/apis/v2beta1/experiments":
            self._json({"experiment_id": "exp-1", **body, "created_at": CREATED})
        elif path == "/apis/v2beta1/pipelines/upload":
            name = parse_qs(urlsplit(self.path).query)["name"][0]
            self._json({"pipeline_id": "pl-1", "display_name": name, "created_at": CREATED})
        elif path == "/apis/v2beta1/runs":
            self._json(
                {"run_id": "run-1", "display_name": body["display_name"], "created_at": CREATED}
            )
        elif path == "/apis/v2beta1/recurringruns":
            self._json(self._recurring_run(body))
        elif path.endswith((":enable", ":disable")):
            self._json({})
        else:
            self._json({"error": f"no {path}"}, 404)

    def do_DELETE(self):
        self._record()
        self._json({})

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api(tmp_path, monkeypatch):
    """A local KFP API (see _KfpV2Api): ``.url``, and ``.requests`` as they came."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file of the user's
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpV2Api)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _sent(kfp_api, method: str, path: str) -> list:
    return [body for m, p, _, body in kfp_api.requests if (m, p) == (method, path)]


def _spec(body: dict) -> dict:
    sent = body["pipeline_spec"]  # with a platform spec: {pipeline_spec, platform_spec}
    return sent.get("pipeline_spec", sent)


def test_the_real_kfp_client_creates_the_recurring_run(compiled, kfp_api, capsys):
    result = submit_kfp(
        kfp_api.url,
        pipeline_file=compiled["kfp"],
        params={"epochs": 2, "image_dir": "gs://b/images"},
        experiment="exp",
        enable_caching=False,
        schedule="0 3 * * 1-5",
        schedule_name="nightly",
        max_concurrent_runs=2,
        start_time="2030-01-01T00:00:00Z",
    )
    assert _sent(kfp_api, "POST", "/apis/v2beta1/runs") == []  # no run now
    ((experiment,),) = [_sent(kfp_api, "POST", "/apis/v2beta1/experiments")]
    assert experiment["display_name"] == "exp"
    (body,) = _sent(kfp_api, "POST", "/apis/v2beta1/recurringruns")
    assert body["display_name"] == "nightly" and body["experiment_id"] == "exp-1"
    assert body["trigger"] == {
        "cron_schedule": {"cron": "0 0 3 * * 1-5", "start_time": "2030-01-01T00:00:00+00:00"}
    }
    assert int(body["max_concurrency"]) == 2
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"epochs": 2, "image_dir": "gs://b/images"}
    spec = _spec(body)
    assert spec["pipelineInfo"]["name"] == "image-classification"
    caching = [t["cachingOptions"] for t in spec["root"]["dag"]["tasks"].values()]
    assert caching and all(c == {} or c.get("enableCache") is False for c in caching)
    url = f"{kfp_api.url}/#/recurringrun/details/rr-1"
    assert result.url == url and result.schedule_id == "rr-1" and result.run_id is None
    assert url in capsys.readouterr().out


# --- README: the kfp CLI, Vertex schedules, the make commands -----------------------------


def _readme_block(marker: str, language: str) -> list[str]:
    """The code blocks after each ``<!-- marker`` comment, as commands (a continued line
    joined, comments and blank lines dropped) or, for python, as source."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(
        rf"<!-- {re.escape(marker)}\b[^>]*-->\n```{language}\n(.*?)\n```", text, re.DOTALL
    )
    assert blocks, f"no {language} block after <!-- {marker} in README.md"
    if language == "python":
        return blocks
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _kfp_cli(args: list[str], input: str = "") -> str:
    from click.testing import CliRunner
    from kfp.cli.cli import cli

    result = CliRunner().invoke(cli, args, obj={}, input=input, auto_envvar_prefix="KFP")
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_the_readme_kfp_cli_commands(compiled, kfp_api, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    yaml_text = Path(compiled["kfp"]).read_text()
    (tmp_path / "build" / "pipeline-kfp.yaml").write_text(yaml_text)
    monkeypatch.setenv("KFPHOST", kfp_api.url)
    monkeypatch.setenv("RECURRING_RUN_ID", "rr-1")
    lines = _readme_block("kfp-cli", "bash")
    commands = [shlex.split(os.path.expandvars(line), comments=True) for line in lines]
    subcommands = [tuple(c[3:5]) for c in commands]
    assert subcommands == [
        ("pipeline", "create"),
        ("run", "create"),
        ("recurring-run", "create"),
        ("recurring-run", "list"),
        ("recurring-run", "disable"),
        ("recurring-run", "enable"),
        ("recurring-run", "delete"),
    ]
    for command in commands:
        assert command[:3] == ["kfp", "--endpoint", kfp_api.url]
        kfp_api.requests.clear()
        output = _kfp_cli(command[1:], input="y\n")
        sent = {(m, p): body for m, p, _, body in kfp_api.requests if p != "/apis/v2beta1/healthz"}
        if command[3:5] == ["pipeline", "create"]:
            ((method, path, query, upload),) = [r for r in kfp_api.requests if "upload" in r[1]]
            assert query["name"] == ["image-classification"]
            assert upload["uploadfile"].decode() == yaml_text
        elif command[3:5] == ["run", "create"]:
            run = sent[("POST", "/apis/v2beta1/runs")]
            assert run["display_name"] == "by-hand" and run["experiment_id"] == "exp-1"
            assert _spec(run) == next(yaml.safe_load_all(yaml_text))
            parameters = run["runtime_config"]["parameters"]
            assert parameters == {
                "image_dir": "gs://my-bucket/images",
                "epochs": 3,
                "backbone": "B0",
            }
            # ... and of the types the compiled pipeline declares.
            declared = submit_checks.pipeline_parameters(next(yaml.safe_load_all(yaml_text)))
            assert validate_params(parameters, declared) == parameters
        elif command[3:5] == ["recurring-run", "create"]:
            recurring = sent[("POST", "/apis/v2beta1/recurringruns")]
            assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
            assert recurring["display_name"] == "nightly"
            assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
            assert recurring["runtime_config"]["parameters"] == {
                "image_dir": "gs://my-bucket/images"
            }
            assert _spec(recurring) == next(yaml.safe_load_all(yaml_text))
        elif command[4] == "list":
            assert ("GET", "/apis/v2beta1/recurringruns") in sent and "rr-1" in output
        elif command[4] in ("disable", "enable"):
            assert ("POST", f"/apis/v2beta1/recurringruns/rr-1:{command[4]}") in sent
        else:
            assert ("DELETE", "/apis/v2beta1/recurringruns/rr-1") in sent

    # What the README says of the CLI: `run submit` is `run create`, with a warning; and
    # recurring-run create sends its values as strings.
    run_create = commands[1]
    kfp_api.requests.clear()
    output = _kfp_cli([*run_create[1:4], "submit", *run_create[5:]])
    assert "'submit' is deprecated, use 'create' instead" in output
    (run,) = _sent(kfp_api, "POST", "/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["epochs"] == 3
    kfp_api.requests.clear()
    _kfp_cli([*commands[2][1:], "epochs=3"])
    (recurring,) = _sent(kfp_api, "POST", "/apis/v2beta1/recurringruns")
    assert recurring["runtime_config"]["parameters"]["epochs"] == "3"


def test_the_readme_vertex_schedule_commands(monkeypatch, capsys):
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform import initializer
    from google.cloud.aiplatform.compat.services import schedule_service_client
    from google.cloud.aiplatform.compat.types import schedule as gca_schedule

    name = "projects/my-project/locations/us-central1/schedules/4242"
    active, paused = gca_schedule.Schedule.State.ACTIVE, gca_schedule.Schedule.State.PAUSED
    stored = {
        name: gca_schedule.Schedule(
            name=name, display_name="nightly", cron="0 3 * * *", state=active
        )
    }
    calls = []

    def list_schedules(self, request, **kwargs):
        calls.append(("list", request["parent"], request.get("filter")))
        return [
            s
            for s in stored.values()
            if f'display_name="{s.display_name}"' == request.get("filter")
        ]

    def get_schedule(self, name, **kwargs):
        return stored[name]

    def state_setter(verb, state):
        def set_state(self, name, **kwargs):
            calls.append((verb, name))
            stored[name].state = state

        return set_state

    def delete_schedule(self, name, **kwargs):
        calls.append(("delete", name))
        del stored[name]
        return SimpleNamespace(
            result=lambda *args, **kwargs: None,
            operation=SimpleNamespace(name=f"{name}/operations/1"),
        )

    client = schedule_service_client.ScheduleServiceClient
    monkeypatch.setattr(client, "list_schedules", list_schedules)
    monkeypatch.setattr(client, "get_schedule", get_schedule)
    monkeypatch.setattr(client, "pause_schedule", state_setter("pause", paused))
    monkeypatch.setattr(client, "resume_schedule", state_setter("resume", active))
    monkeypatch.setattr(client, "delete_schedule", delete_schedule)
    monkeypatch.setattr(google.auth, "default", lambda **kwargs: (AnonymousCredentials(), None))
    (source,) = _readme_block("vertex-schedules", "python")
    config = vars(initializer.global_config)  # what aiplatform.init sets, for later tests
    saved = dict(config)
    try:
        exec(compile(source, "README.md", "exec"), {})
    finally:
        config.clear()
        config.update(saved)
    assert f"{name} ACTIVE 0 3 * * *" in capsys.readouterr().out
    assert calls == [
        ("list", "projects/my-project/locations/us-central1", 'display_name="nightly"'),
        ("pause", name),
        ("resume", name),
        ("delete", name),
    ]
    assert stored == {}


def _make_command(line: str) -> list[str]:
    """The python -m pipelines.submit arguments ``make -n`` prints for a README make line."""
    args = shlex.split(line)
    assert args[0] == "make"
    out = _make("-n", *args[1:])
    command = shlex.split(out.replace("\\\n", " "))
    return command[command.index("pipelines.submit") + 1 :]


def test_the_readme_make_commands_reach_the_command_line():
    (kfp,) = _readme_block("make-schedules", "bash")
    args = submit.build_parser().parse_args(_make_command(kfp))
    assert (args.command, args.host, args.params) == (
        "kfp",
        "https://<your-kfp-host>",
        "my-params.yaml",
    )
    assert (args.schedule, args.schedule_name, args.max_concurrent_runs) == (
        "0 3 * * *",
        "nightly",
        1,
    )
    assert args.enable_caching is False
    assert schedules.kfp_cron(args.schedule) == "0 0 3 * * *"

    settings, scheduled = _readme_block("make-vertex", "bash")
    args = submit.build_parser().parse_args(_make_command(settings))
    assert args.service_account == "pipelines@my-project.iam.gserviceaccount.com"
    assert (
        submit_checks.check_encryption_key(args.encryption_key, args.region) == args.encryption_key
    )
    assert submit_checks.check_network(args.network) == args.network
    assert args.failure_policy == "fast" and args.enable_caching is False
    assert submit_checks.parse_labels(args.labels) == {"team": "vision", "env": "prod"}
    assert args.schedule is None

    args = submit.build_parser().parse_args(_make_command(scheduled))
    assert args.schedule == "TZ=America/New_York 0 3 * * *"
    assert schedules.vertex_cron(args.schedule) == args.schedule
    assert (args.schedule_name, args.max_concurrent_runs) == ("nightly", 1)


# --- Makefile ----------------------------------------------------------------------------


def _make(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_make_help_lists_the_submit_targets():
    out = _make("help")
    assert re.search(r"make submit +Run the pipeline on Kubeflow Pipelines", out)
    assert re.search(r"make submit-vertex +Run it on Vertex AI", out)


def test_make_submit_commands():
    # -n prints the commands without running them (nor setup's).
    kfp = _make("-n", "submit", "KFPHOST=http://kfp:8080", "PARAMS=p.yaml", "EXPERIMENT=e")
    assert (
        '-m pipelines.submit kfp --pipeline classification --host "http://kfp:8080" '
        '--experiment "e" --params "p.yaml"'
    ) in " ".join(kfp.replace("\\\n", " ").split())
    detection = _make("-n", "submit", "KFPHOST=http://kfp:8080", "PIPELINE=detection")
    assert (
        '-m pipelines.submit kfp --pipeline detection --host "http://kfp:8080" '
        '--experiment "object-detection"'
    ) in " ".join(detection.replace("\\\n", " ").split())
    compiled = _make("-n", "compile", "PIPELINE=detection", "TARGET=vertex")
    assert (
        "-m pipelines.compile --pipeline detection --target vertex "
        "--output build/detection-pipeline-vertex.yaml"
    ) in compiled
    vertex = _make(
        "-n",
        "submit-vertex",
        "PROJECT=p",
        "REGION=us-central1",
        "BUCKET=b",
        "SERVICE_ACCOUNT=sa@p.iam.gserviceaccount.com",
    )
    assert (
        '-m pipelines.submit vertex --pipeline classification --project "p" '
        '--region "us-central1" --bucket "b" '
        '--service-account "sa@p.iam.gserviceaccount.com"'
    ) in " ".join(vertex.replace("\\\n", " ").split())
    phony = " ".join(re.findall(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M))
    assert {"submit", "submit-vertex"} <= set(phony.split())


def test_make_passes_the_new_submit_variables_only_when_set():
    bare = _make_command("make submit KFPHOST=http://kfp:8080")
    assert not {"--cache", "--schedule", "--schedule-name", "--max-concurrent-runs"} & set(bare)
    kfp = submit.build_parser().parse_args(
        _make_command(
            "make submit KFPHOST=http://kfp:8080 CACHE=on SCHEDULE='0 3 * * 1,3' "
            "SCHEDULE_NAME=nightly MAX_CONCURRENT_RUNS=3"
        )
    )
    assert (kfp.enable_caching, kfp.schedule) == (True, "0 3 * * 1,3")
    assert (kfp.schedule_name, kfp.max_concurrent_runs) == ("nightly", 3)

    base = "make submit-vertex PROJECT=p REGION=us-central1 BUCKET=b"
    bare = _make_command(base)
    flags = {"--encryption-key", "--network", "--failure-policy", "--labels", "--cache"}
    assert not (flags | {"--schedule", "--schedule-name", "--max-concurrent-runs"}) & set(bare)
    key = KEY.format(region="us-central1")
    vertex = submit.build_parser().parse_args(
        _make_command(
            f"{base} ENCRYPTION_KEY={key} NETWORK={NETWORK} FAILURE_POLICY=fast "
            "LABELS=team=vision,env=prod CACHE=off SCHEDULE='TZ=Europe/Berlin 0 3 * * 1,3' "
            "SCHEDULE_NAME=nightly MAX_CONCURRENT_RUNS=2"
        )
    )
    assert (vertex.encryption_key, vertex.network, vertex.failure_policy) == (key, NETWORK, "fast")
    assert (vertex.labels, vertex.enable_caching) == ("team=vision,env=prod", False)
    assert vertex.schedule == "TZ=Europe/Berlin 0 3 * * 1,3"
    assert (vertex.schedule_name, vertex.max_concurrent_runs) == ("nightly", 2)

    help_lines = {line.split()[1]: line for line in _make("help").splitlines()}
    for name in ("CACHE", "SCHEDULE", "SCHEDULE_NAME", "MAX_CONCURRENT_RUNS"):
        assert f"{name}=" in help_lines["submit"] and f"{name}=" in help_lines["submit-vertex"]
    for name in ("ENCRYPTION_KEY", "NETWORK", "FAILURE_POLICY", "LABELS"):
        assert f"{name}=" in help_lines["submit-vertex"]


# --- cloudbuild.yaml ---------------------------------------------------------------------

BUILT_IN = {
    "PROJECT_ID",
    "BUILD_ID",
    "PROJECT_NUMBER",
    "LOCATION",
    "COMMIT_SHA",
    "SHORT_SHA",
    "REVISION_ID",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "TRIGGER_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
}


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _steps(cloudbuild, prefix):
    return [s for s in cloudbuild["steps"] if s["id"].startswith(prefix)]


def test_cloudbuild_builds_and_pushes_every_stage_image(cloudbuild):
    expected = {f"containers/{stage}/Dockerfile": stage.replace("_", "-") for stage in STAGES}
    built = set()
    for step in _steps(cloudbuild, "build-"):
        args = step["args"]
        assert args[0] == "build" and args[-1] == "."
        target = args[args.index("--target") + 1] if "--target" in args else None
        built.add((args[args.index("-f") + 1], target, args[args.index("-t") + 1]))
    tag = "${{_REGISTRY}}/{}:$COMMIT_SHA"
    # Every stage's default image, plus the Beam stages' Dataflow worker images.
    assert built == {(f, None, tag.format(name)) for f, name in expected.items()} | {
        (f"containers/{stage}/Dockerfile", "dataflow-worker", tag.format(f"{name}-dataflow"))
        for stage, name in (
            ("create_tfrecords", "create-tfrecords"),
            ("batch_predict", "batch-predict"),
        )
    }
    pushed = {s["args"][1] for s in _steps(cloudbuild, "push-")}
    assert pushed == {image for _, _, image in built} == set(cloudbuild["images"])
    for step in _steps(cloudbuild, "push-"):
        assert "tests" in step["waitFor"]  # nothing is pushed from a failing commit


def test_cloudbuild_tests_then_compiles_both_targets_and_publishes(cloudbuild):
    (tests,) = _steps(cloudbuild, "tests")
    assert tests["name"].startswith("python:3.11") and tests["entrypoint"] == "make"
    assert tests["args"][0] == "test"
    (step,) = _steps(cloudbuild, "compile")
    assert "tests" in step["waitFor"]
    assert {"IMAGE_REGISTRY=${_REGISTRY}", "IMAGE_TAG=$COMMIT_SHA"} <= set(step["env"])
    script = step["args"][-1]
    for target in TARGETS:
        assert (
            f"-m pipelines.compile --target {target} --output build/pipeline-{target}.yaml"
            in script
        )
        assert (
            f"-m pipelines.compile --pipeline detection --target {target} "
            f"--output build/detection-pipeline-{target}.yaml" in script
        )
    (gcs,) = _steps(cloudbuild, "publish-gcs")
    assert gcs["args"][-1] == "gs://${_BUCKET}/pipelines/$COMMIT_SHA/"
    assert {f"build/{p}pipeline-{t}.yaml" for t in TARGETS for p in ("", "detection-")} <= set(
        gcs["args"]
    )
    assert {"compile", *(s["id"] for s in _steps(cloudbuild, "push-"))} <= set(gcs["waitFor"])
    subs = cloudbuild["substitutions"]
    assert subs["_REGISTRY"] == "${_REGION}-docker.pkg.dev/${PROJECT_ID}/kfp"
    assert {"_REGION", "_BUCKET", "_KFP_REPOSITORY"} <= set(subs)
    assert cloudbuild["options"]["dynamicSubstitutions"] is True  # _REGISTRY uses _REGION
    assert cloudbuild["options"]["machineType"] and cloudbuild["timeout"].endswith("s")


def test_cloudbuild_pins_its_builders_and_only_uses_known_substitutions(cloudbuild):
    for step in cloudbuild["steps"]:
        name, _, tag = step["name"].rpartition(":")
        assert name and re.match(r"^\d", tag), f"{step['id']}: unpinned builder {step['name']}"
    declared = set(cloudbuild["substitutions"])
    for text in _strings(cloudbuild):
        for braced, bare in re.findall(r"\$\{(\w+)\}|\$(\w+)", text.replace("$$", "")):
            name = braced or bare
            assert name in BUILT_IN or name in declared, f"unknown substitution {name} in {text!r}"
    assert "acme" not in (ROOT / "cloudbuild.yaml").read_text()


def test_cloudbuild_compiles_images_that_it_pushes(cloudbuild, tmp_path):
    images = {
        i.replace("${_REGISTRY}", REGISTRY).replace("$COMMIT_SHA", "abc123")
        for i in cloudbuild["images"]
    }
    env = {**os.environ, "IMAGE_REGISTRY": REGISTRY, "IMAGE_TAG": "abc123"}
    for pipeline, target in itertools.product(("classification", "detection"), TARGETS):
        out = tmp_path / f"{pipeline}-{target}.yaml"
        command = ["-m", "pipelines.compile", "--pipeline", pipeline, "--target", target]
        subprocess.run(
            [sys.executable, *command, "--output", str(out)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        spec = next(yaml.safe_load_all(out.read_text()))
        used = {
            e["container"]["image"]
            for e in spec["deploymentSpec"]["executors"].values()
            if e["container"]["image"].startswith(REGISTRY)
        }
        assert used and used <= images, (target, used - images)


def test_cloudbuild_registry_upload_is_optional_and_uses_the_kfp_registry(
    cloudbuild, monkeypatch, tmp_path
):
    (step,) = _steps(cloudbuild, "publish-kfp-registry")
    script = step["args"][-1].replace("$$", "$")
    skipped = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": os.environ["PATH"], "KFP_REPOSITORY": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert skipped.returncode == 0 and "not uploading" in skipped.stdout

    code = re.search(r"-c '\n(.*?)'\n", script, re.S).group(1)
    uploads = []

    class FakeRegistry:
        def __init__(self, host):
            self.host = host

        def upload_pipeline(self, file_name, tags):
            uploads.append((self.host, file_name, tags))
            return "image-classification", "sha256:0"

    import kfp.registry

    monkeypatch.setattr(kfp.registry, "RegistryClient", FakeRegistry)
    for key, value in {
        "REGION": "us-central1",
        "PROJECT_ID": "proj-1",
        "KFP_REPOSITORY": "pipelines",
        "COMMIT_SHA": "abc123",
    }.items():
        monkeypatch.setenv(key, value)
    exec(compile(code, "cloudbuild-registry-step", "exec"), {})
    host = "https://us-central1-kfp.pkg.dev/proj-1/pipelines"
    assert uploads == [
        (host, "build/pipeline-vertex.yaml", ["abc123", "latest"]),
        (host, "build/detection-pipeline-vertex.yaml", ["abc123", "latest"]),
    ]
    real = kfp.registry.registry_client.RegistryClient(host=host, auth=object())
    assert real._is_ar_host()
