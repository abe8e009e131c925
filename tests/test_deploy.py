"""Tests of the deploy stage: model repository, local model server, deploy_local, component.

A server start-up (TensorFlow, KServe, the model) costs seconds, so the file has two:
one model server shared by the server tests, and the one deploy_local starts and stops
inside the component's kfp-local run.
"""

from __future__ import annotations

import base64
import io as bytes_io
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from components.deploy import local, model_repository
from components.deploy.model_repository import TMP_PREFIX, latest_version, publish
from pipelines.sample_data import CLASSES

LABELS = list(CLASSES)
MODEL_NAME = "shapes"


def _jpeg(size: int = 48, seed: int = 0, noise: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        pixels = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _encoded(image_format: str) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.new("RGB", (20, 30), (10, 200, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


_NOISE = _jpeg(size=64, noise=True)  # large enough that a truncated copy keeps its header


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _http(url: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _port_is_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (connections in TIME_WAIT are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _servers_on(repository: str) -> list[int]:
    """Pids of running model servers (any parent) serving ``repository``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"components.deploy.server" in args and repository.encode() in args:
            pids.append(int(pid))
    return pids


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 sockets listening on ``port`` (from /proc/net/tcp)."""
    addresses = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:
                addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


# --- model repository ---------------------------------------------------------------


def test_publish_versions_and_idempotence(exported_model, tmp_path):
    repo = str(tmp_path / "repo")

    first = publish(exported_model, repo, MODEL_NAME)
    assert first["version"] == 1 and not first["reused"]
    assert first["model_dir"] == os.path.join(repo, MODEL_NAME, "1")
    assert os.path.isfile(os.path.join(first["model_dir"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(first["model_dir"], "assets.extra", "labels.txt"))

    again = publish(exported_model, repo, MODEL_NAME)
    assert again["version"] == 1 and again["reused"]
    assert again["digest"] == first["digest"]
    assert sorted(os.listdir(os.path.join(repo, MODEL_NAME))) == ["1"]

    changed = tmp_path / "changed_export"
    shutil.copytree(exported_model, changed)
    (changed / "assets.extra" / "labels.txt").write_text("a\nb\nc\nd\n")
    second = publish(str(changed), repo, MODEL_NAME)
    assert second["version"] == 2 and not second["reused"]
    assert second["digest"] != first["digest"]
    assert latest_version(repo, MODEL_NAME) == (2, os.path.join(repo, MODEL_NAME, "2"))

    # The first export again after another one: a new latest version, so that the
    # repository serves what was published last (TF Serving serves the highest).
    rollback = publish(exported_model, repo, MODEL_NAME)
    assert rollback["version"] == 3 and rollback["digest"] == first["digest"]
    assert latest_version(repo, MODEL_NAME)[0] == 3
    assert publish(exported_model, repo, MODEL_NAME)["version"] == 3

    entries = os.listdir(os.path.join(repo, MODEL_NAME))
    assert sorted(entries) == ["1", "2", "3"], "no temporary directory may be left behind"
    assert model_repository.list_versions(repo, MODEL_NAME) == [1, 2, 3]


def test_latest_version_ignores_partial_and_temporary_dirs(exported_model, tmp_path):
    repo = tmp_path / "repo"
    publish(exported_model, str(repo), MODEL_NAME)
    (repo / MODEL_NAME / f"{TMP_PREFIX}abc").mkdir()  # a copy in progress
    (repo / MODEL_NAME / "7").mkdir()  # a numeric dir without a SavedModel
    assert latest_version(str(repo), MODEL_NAME)[0] == 1
    # A new version is numbered past every numeric directory, so it never lands in one.
    changed = tmp_path / "changed"
    shutil.copytree(exported_model, changed)
    (changed / "extra.txt").write_text("x")
    assert publish(str(changed), str(repo), MODEL_NAME)["version"] == 8


def test_latest_version_without_versions_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no version of model 'missing'"):
        latest_version(str(tmp_path), "missing")


def test_publish_rejects_a_directory_without_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        publish(str(tmp_path), str(tmp_path / "repo"), MODEL_NAME)
    assert not (tmp_path / "repo" / MODEL_NAME).exists()


# --- deploy_local ---------------------------------------------------------------------
# Its full run (publish, serve, probe, stop) is tested through the component below: a
# server start-up costs seconds, so the file runs it once.


def test_wait_until_ready_reports_a_server_that_exits(tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('model failed to load'); sys.exit(3)"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    with pytest.raises(local.DeployError, match=r"(?s)exited with code 3.*model failed to load"):
        local.wait_until_ready(process, MODEL_NAME, local.free_port(), 60, str(log_path))


def test_wait_until_ready_times_out_and_stop_server_kills_a_stuck_server(tmp_path):
    log_path = tmp_path / "server.log"
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('loading', flush=True); time.sleep(60)"
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=log)
    try:
        with pytest.raises(TimeoutError, match="(?s)not ready within.*loading"):
            local.wait_until_ready(process, MODEL_NAME, local.free_port(), 1.5, str(log_path))
    finally:
        code = local.stop_server(process, timeout_s=1)
    assert code == -signal.SIGKILL


def test_deploy_local_without_labels_fails_before_starting_a_server(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        local.deploy_local(str(tmp_path), model_repository=str(tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_check_prediction_rejects_malformed_answers():
    good = {"probabilities": [0.7, 0.1, 0.1, 0.1], "class_index": 0, "label": "circle"}
    assert local.check_prediction({"predictions": [good]}, LABELS) == good
    for bad in (
        {"predictions": []},
        {"predictions": [good, good]},
        {"predictions": [{**good, "label": "dog"}]},
        {"predictions": [{**good, "probabilities": [0.5, 0.1, 0.1, 0.1]}]},
        {"predictions": [{**good, "probabilities": [1.0]}]},
        {"predictions": [{**good, "class_index": 2}]},
    ):
        with pytest.raises(local.DeployError):
            local.check_prediction(bad, LABELS)


# --- the KFP component ----------------------------------------------------------------


def test_component_rejects_unknown_targets(tmp_path):
    from kfp import dsl

    from components.deploy.component import deploy

    model = dsl.Model(uri=str(tmp_path / "model"))
    endpoint = dsl.Artifact(uri=str(tmp_path / "endpoint"))
    with pytest.raises(ValueError, match="supported: local"):
        deploy.python_func(model=model, endpoint=endpoint, target="vertex")
    assert not (tmp_path / "endpoint").exists()


# server_process: the module's server loads while this test runs (saves a server start-up).
@pytest.mark.usefixtures("server_process")
def test_component_deploys_and_verifies_in_kfp_local(kfp_local, exported_model, tmp_path):
    from kfp import dsl

    from components.deploy import server
    from components.deploy.component import deploy

    repo = str(tmp_path / "model_repository")

    # A server already listening on the advertised port must not get in the way: the
    # check runs on a free port of its own.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        @dsl.pipeline(name="deploy-test")
        def pipeline():
            model = dsl.importer(
                artifact_uri=exported_model, artifact_class=dsl.Model, reimport=False
            )
            deploy(model=model.output, model_name="kfp-model", model_repository=repo, port=port)

        pipeline()

    assert _servers_on(repo) == [], "the check's model server is still running"
    assert latest_version(repo, "kfp-model") == (1, os.path.join(repo, "kfp-model", "1"))
    assert os.path.isfile(os.path.join(repo, "kfp-model", "1", "saved_model.pb"))

    [run] = [p for p in kfp_local.iterdir() if p.is_dir()]
    task_dir = run / "deploy"
    info = json.loads((task_dir / "endpoint" / "endpoint.json").read_text())
    assert info["verified"] is True
    assert (info["model_name"], info["version"]) == ("kfp-model", 1)
    assert info["model_repository"] == repo
    assert info["model_dir"] == os.path.join(repo, "kfp-model", "1")
    assert info["url"] == f"http://127.0.0.1:{port}/v1/models/kfp-model:predict"
    assert info["probe"]["label"] in LABELS
    assert 0.0 < info["probe"]["score"] <= 1.0 and info["probe"]["latency_ms"] > 0

    # The serve command serves this repository and model at the advertised URL.
    argv = shlex.split(info["serve_command"])
    assert argv[1:3] == ["-m", "components.deploy.server"]
    args = server.parse_args(argv[3:])
    assert (args.model_repository, args.model_name, args.http_port, args.host) == (
        repo,
        "kfp-model",
        port,
        "127.0.0.1",
    )
    assert args.model_version is None

    # The same as the artifact's metadata, which KFP and Vertex show.
    executor_output = json.loads((task_dir / "executor_output.json").read_text())
    [artifact] = executor_output["artifacts"]["endpoint"]["artifacts"]
    metadata = artifact["metadata"]
    assert metadata["url"] == info["url"] and metadata["verified"] is True
    assert metadata["version"] == 1 and metadata["model_dir"] == info["model_dir"]
    assert metadata["serve_command"] == info["serve_command"]


# --- the model server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server_process(exported_model, tmp_path_factory):
    """A model server process on a free loopback port for this module, maybe still loading.

    Yields ``(process, port, log_path)``; stops the server at the end of the module and
    checks that it stopped cleanly on SIGTERM.
    """
    repo = str(tmp_path_factory.mktemp("served") / "repo")
    publish(exported_model, repo, MODEL_NAME)
    port = local.free_port()
    log_path = str(tmp_path_factory.mktemp("server_log") / "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            local.server_command(repo, MODEL_NAME, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process, port, log_path
    finally:
        code = local.stop_server(process)
    assert code == 0, f"the server did not stop cleanly on SIGTERM (exit code {code})"
    assert _port_is_free(port)


@pytest.fixture
def server_url(server_process):
    """The base URL of the module's model server, once it is ready."""
    process, port, log_path = server_process
    local.wait_until_ready(process, MODEL_NAME, port, 120, log_path)
    return f"http://127.0.0.1:{port}"


def _check_predictions(body: dict, count: int) -> None:
    predictions = body["predictions"]
    assert len(predictions) == count
    for prediction in predictions:
        assert set(prediction) == {"probabilities", "class_index", "label", "score"}
        probabilities = prediction["probabilities"]
        assert len(probabilities) == len(LABELS)
        assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-4)
        assert prediction["label"] in LABELS
        assert prediction["class_index"] == LABELS.index(prediction["label"])
        assert prediction["class_index"] == int(np.argmax(probabilities))
        assert math.isclose(prediction["score"], max(probabilities), rel_tol=1e-5)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize(
    "shape",
    [lambda b: {"b64": b}, lambda b: {"image_bytes": {"b64": b}}],
    ids=["b64", "image_bytes"],
)
def test_server_predicts(server_url, shape, count):
    instances = [shape(_b64(_jpeg(seed=i, noise=i % 2 == 1))) for i in range(count)]
    status, body = _http(f"{server_url}/v1/models/{MODEL_NAME}:predict", {"instances": instances})
    assert status == 200, body
    _check_predictions(body, count)


def test_server_accepts_the_signature_name_and_png(server_url):
    body = {
        "signature_name": "serving_default",
        "instances": [{"b64": _b64(_encoded("PNG"))}, {"b64": _b64(_jpeg())}],
    }
    status, response = _http(f"{server_url}/v1/models/{MODEL_NAME}:predict", body)
    assert status == 200, response
    _check_predictions(response, 2)


def test_server_readiness_and_health(server_url):
    assert _http(f"{server_url}/v1/models/{MODEL_NAME}") == (
        200,
        {"name": MODEL_NAME, "ready": True},
    )
    assert _http(f"{server_url}/") == (200, {"status": "alive"})
    status, body = _http(f"{server_url}/v1/models/unknown-model")
    assert status == 404 and "unknown-model" in body["error"]


def test_server_listens_on_loopback_only(server_url):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp")
    port = int(server_url.rsplit(":", 1)[1])
    assert _listen_addresses(port) == {"127.0.0.1"}


BAD_REQUESTS = {
    "malformed JSON": (b'{"instances": [', "request format"),
    "not an object": ([{"b64": "x"}], "JSON object"),
    "no instances": ({"inputs": [{"b64": _b64(_NOISE)}]}, "instances"),
    "empty instances": ({"instances": []}, "non-empty"),
    "instance not b64": ({"instances": ["just a string"]}, "b64"),
    "bad base64": ({"instances": [{"b64": "@@not base64@@"}]}, "base64"),
    "not an image": ({"instances": [{"b64": _b64(b"plain text, not a JPEG")}]}, "not an image"),
    # A valid JPEG header over truncated data: only TensorFlow's decoder notices.
    "truncated JPEG": (
        {"instances": [{"b64": _b64(_jpeg())}, {"b64": _b64(_NOISE[: len(_NOISE) // 2])}]},
        "instance 1: the image does not decode",
    ),
    "unsupported format": (
        {"instances": [{"b64": _b64(_encoded("TIFF"))}]},
        "unsupported image format TIFF",
    ),
    "too many instances": ({"instances": [{"b64": _b64(_jpeg(8))}] * 65}, "limit of 64"),
    "unknown signature": (
        {"instances": [{"b64": _b64(_NOISE)}], "signature_name": "predict_uris"},
        "signature_name",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_server_rejects_bad_requests_with_400(server_url, case):
    body, message = BAD_REQUESTS[case]
    status, response = _http(f"{server_url}/v1/models/{MODEL_NAME}:predict", body)
    assert status == 400, response
    assert isinstance(response.get("error"), str) and message in response["error"]
    assert "Traceback" not in response["error"]


def test_server_still_serves_after_bad_requests(server_url):
    body = {"instances": [{"b64": _b64(_NOISE)}, {"image_bytes": {"b64": _b64(_jpeg())}}]}
    status, response = _http(f"{server_url}/v1/models/{MODEL_NAME}:predict", body)
    assert status == 200, response
    _check_predictions(response, 2)
