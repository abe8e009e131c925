"""pipelines.submit (checks before sending, and the exact calls to kfp.Client and
aiplatform.PipelineJob), the example parameters, the Makefile targets and cloudbuild.yaml.

Nothing here leaves the machine: the KFP host is a closed or a served loopback port, the
clients are fakes or real classes whose network call is replaced.
"""

from __future__ import annotations

import itertools
import json
import os
import re
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
from pipelines import submit
from pipelines.compile import TARGETS, compile_pipeline
from pipelines.submit import SubmitError, main, submit_kfp, submit_vertex, validate_params

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
            submit.check_kfp_host(host, timeout=0.2)


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
        submit.check_kfp_host(f"http://127.0.0.1:{server.server_port}")
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
    assert submit.load_params(_write(tmp_path / "empty.yaml", "")) == {}


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
    params = submit.load_params(path)
    assert {"image_dir", "epochs", "backbone"} <= set(params)
    commented = re.findall(r"^# ?([a-z_]+: .*)$", path.read_text(), re.MULTILINE)
    suggested = yaml.safe_load("\n".join(commented))
    assert {"class_weight", "tune_trials", "beam_runner", "dataflow_project"} <= set(suggested)
    spec = submit.load_pipeline_spec(compiled[target])
    every = {**params, **suggested}
    assert validate_params(every, submit.pipeline_parameters(spec)) == every


@pytest.mark.parametrize("target", TARGETS)
def test_the_detection_example_params_fit_the_detection_pipeline(target, tmp_path):
    path = ROOT / "pipelines" / "params.detection.example.yaml"
    params = submit.load_params(path)
    assert {"voc_dir", "epochs", "backbone", "map50_threshold"} <= set(params)
    commented = re.findall(r"^# ?([a-z_]+: [^#]*)", path.read_text(), re.MULTILINE)
    suggested = yaml.safe_load("\n".join(commented))
    assert {"coco_json", "family", "preset", "beam_runner"} <= set(suggested)
    compiled = compile_pipeline(target, str(tmp_path / "detection.yaml"), pipeline="detection")
    spec = submit.load_pipeline_spec(compiled)
    every = {**params, **suggested}
    assert validate_params(every, submit.pipeline_parameters(spec)) == every


# --- Vertex AI ---------------------------------------------------------------------------

VERTEX = ["vertex", "--project", "my-proj", "--region", "us-central1", "--bucket", "my-bucket"]


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
    assert submit.bucket_name(bucket) == "my-bucket"


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
        submit.bucket_name(bucket)


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
    result = submit_vertex(
        "my-proj",
        "europe-west4",
        "gs://my-bucket",
        service_account="runner@my-proj.iam.gserviceaccount.com",
        params=params,
        pipeline_file=compiled["vertex"],
        enable_caching=True,
        display_name="nightly",
        labels="team=vision,env=dev",
        job_factory=FakeJob,
        credentials_check=lambda: credentials,
    )
    job = FakeJob.last
    assert job.kwargs == {
        "display_name": "nightly",
        "template_path": compiled["vertex"],
        "pipeline_root": "gs://my-bucket/pipeline_root",
        "parameter_values": {"epochs": 5, "image_dir": "gs://b/img"},
        "enable_caching": True,
        "labels": {"team": "vision", "env": "dev"},
        "credentials": credentials,
        "project": "my-proj",
        "location": "europe-west4",
    }
    assert job.submitted == {"service_account": "runner@my-proj.iam.gserviceaccount.com"}
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
    assert job.submitted == {"service_account": None}


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
    assert job.submitted == {"service_account": None}
    assert job.project == "my-proj" and job.location == "us-central1"
    config = job._gca_resource.runtime_config
    assert config.gcs_output_directory == "gs://my-bucket/pipeline_root"
    assert dict(config.parameter_values)["epochs"] == 2
    assert list(dict(config.parameter_values)["beam_args"]) == ["--a=b"]
    assert result.url == submit.vertex_run_url("us-central1", job.job_id, "my-proj")


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
