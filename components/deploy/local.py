"""Deploys an exported model to the local target: a model repository and a checked server.

``deploy_local`` publishes the SavedModel as a new version (or reuses an identical
latest one), starts the local model server (``components.deploy.server``) on a free
loopback port, waits until the model is ready, asks it what the served signature takes
and answers (KServe's v2 model metadata), sends one real predict request with a
generated JPEG under that input's name, checks the answer by the task the signature's
outputs say (``probe_check``: a classifier's probabilities and label, or a detector's
boxes, classes and scores, each checked by its task's own ``predictions`` module),
checks the liveness and readiness routes, and stops the server. What it returns says
where the model lies and the exact command that serves it at the advertised URL.
"""

from __future__ import annotations

import base64
import io as bytes_io
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from components.classification import predictions as classification_predictions
from components.common import io, serving
from components.common.model_repository import evaluation_path
from components.deploy import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_MODEL_NAME, LOOPBACK
from components.deploy.model_repository import publish
from components.deploy.server.limits import GRACE_PERIOD_S, ServerLimits
from components.detection import predictions as detection_predictions

DEFAULT_MODEL_REPOSITORY = os.path.join(
    os.path.expanduser("~"), ".cache", "kfp-image-classification", "model_repository"
)
STOP_TIMEOUT_S = GRACE_PERIOD_S + 5
_LOG_TAIL_CHARS = 4000

log = logging.getLogger(__name__)


class TaskAnswers(Protocol):
    """What the probe needs of a task's served answers (its predictions module gives it)."""

    def check_answer(self, prediction: Mapping[str, Any], labels: Sequence[str]) -> Any:
        """Raises ValueError when one image's served answer is malformed."""

    def answer_summary(self, prediction: Mapping[str, Any]) -> dict[str, Any]:
        """The top label and score of a checked answer, for the deploy result."""


class DeployError(RuntimeError):
    """The server did not start, or did not answer the probe request correctly."""


def predict_url(model_name: str, port: int, host: str = LOOPBACK) -> str:
    return f"http://{host}:{port}/v1/models/{model_name}:predict"


def server_command(
    repository: str,
    model_name: str,
    port: int,
    host: str = LOOPBACK,
    version: int | None = None,
    limits: ServerLimits | None = None,
    grpc_port: int = 0,
) -> list[str]:
    """The command line that runs the local model server on a repository (with gRPC on
    ``grpc_port``, none for 0).

    Only the ``limits`` that differ from the defaults are passed, so the server's
    defaults apply to the others (``python -m components.deploy.server --help`` lists
    them).
    """
    command = [
        sys.executable,
        "-m",
        "components.deploy.server",
        "--model-repository",
        repository,
        "--model-name",
        model_name,
        "--http-port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--host",
        host,
    ]
    if version is not None:
        command += ["--model-version", str(version)]
    if limits is not None:
        command += limits.to_options()
    return command


def free_port(host: str = LOOPBACK) -> int:
    """An ephemeral port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe_jpeg(size: int = 64) -> bytes:
    """A small generated JPEG for the probe request."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40, 90, 160))
    ImageDraw.Draw(image).ellipse(
        (size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(230, 200, 40)
    )
    buffer = bytes_io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _request(url: str, body: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text}


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _LOG_TAIL_CHARS))
        return f.read().decode("utf-8", errors="replace")


def wait_until_ready(
    process: subprocess.Popen, model_name: str, port: int, timeout_s: float, log_path: str
) -> None:
    """Polls the model's readiness route until it answers ``ready``.

    Raises:
        DeployError: when the server exits first (with its output's tail).
        TimeoutError: when it is not ready within ``timeout_s``.
    """
    url = f"http://{LOOPBACK}:{port}/v1/models/{model_name}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise DeployError(
                f"the model server exited with code {process.returncode} before it was "
                f"ready; its output ends with:\n{_tail(log_path)}"
            )
        try:
            status, body = _request(url, timeout_s=2.0)
            if status == 200 and body.get("ready") is True:
                return
        except (OSError, ValueError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the model server was not ready within {timeout_s:.0f} s; its output ends "
                f"with:\n{_tail(log_path)}"
            )
        time.sleep(0.25)


def stop_server(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL when the server has not stopped within ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the model server did not stop within %.0f s: killing it", timeout_s)
            process.kill()
            process.wait()
    return process.returncode


def probe_check(output_names: Sequence[str]) -> TaskAnswers:
    """The task whose answer a signature answering ``output_names`` gives: a detector's
    (``components.detection.predictions``) when it answers the Object Detection API's
    boxes, else a classifier's (``components.classification.predictions``). Each has
    ``check_answer(prediction, labels)`` and ``answer_summary(prediction)``."""
    if detection_predictions.is_detection_export(output_names):
        return detection_predictions
    return classification_predictions


def check_probe_answer(response: dict, labels: list[str], output_names: Sequence[str]) -> dict:
    """Checks the server's answer to the one-image probe request by the task its outputs
    say (``probe_check``); returns the one prediction.

    Raises:
        DeployError: when the response is not one well-formed prediction of this model.
    """
    predictions = response.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != 1:
        raise DeployError(f"expected one prediction, got {response!r:.500}")
    try:
        probe_check(output_names).check_answer(predictions[0], labels)
    except ValueError as e:
        raise DeployError(f"malformed prediction: {e}") from None
    return predictions[0]


def served_signature(model_name: str, port: int, host: str = LOOPBACK) -> tuple[str, list[str]]:
    """The served signature's input name and output names, from the server's KServe v2
    model metadata (``GET /v2/models/<name>``).

    Raises:
        DeployError: when the metadata does not describe one input.
    """
    url = f"http://{host}:{port}/v2/models/{model_name}"
    status, body = _request(url, timeout_s=10.0)
    inputs, outputs = body.get("inputs"), body.get("outputs")
    if status != 200 or not isinstance(inputs, list) or len(inputs) != 1 or not outputs:
        raise DeployError(f"GET {url} answered HTTP {status}: {body!r:.500}")
    return inputs[0]["name"], [output["name"] for output in outputs]


def check_health(port: int, host: str = LOOPBACK) -> None:
    """Checks the liveness and readiness routes that Kubernetes probes would use.

    Raises:
        DeployError: when either does not answer 200.
    """
    for route, key in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        status, body = _request(f"http://{host}:{port}{route}", timeout_s=10.0)
        if status != 200 or body.get(key) is not True:
            raise DeployError(f"GET {route} answered HTTP {status}: {body!r:.200}")


def deploy_local(
    export_dir: str,
    model_name: str = DEFAULT_MODEL_NAME,
    model_repository: str = DEFAULT_MODEL_REPOSITORY,
    port: int = DEFAULT_HTTP_PORT,
    timeout_s: float = 120.0,
    evaluation: Mapping[str, Any] | None = None,
) -> dict:
    """Publishes an export to a local model repository and verifies that it serves.

    Args:
        export_dir: A SavedModel written by the export stage.
        model_name: The name the model is published and served under.
        model_repository: The model repository's root (local path or ``gs://``); empty
            means ``DEFAULT_MODEL_REPOSITORY``.
        port: The port the returned ``url`` and ``serve_command`` use. The check runs
            on a free ephemeral port, so a server already running on ``port`` is left
            alone.
        timeout_s: How long to wait for the server to load the model.
        evaluation: The evaluation the model passed the gate with (evaluate's metrics),
            recorded with the version it is published as (``evaluations/<version>.json``
            beside the versions); None records nothing.

    Returns:
        ``model_name``, ``version``, ``model_dir`` (the version directory),
        ``model_repository``, ``url``, ``verified`` (True), ``probe`` (``label``,
        ``score``, ``latency_ms`` of the check's request; for a detector the top
        detection's, and ``num_detections``), ``serve_command`` (the
        command line that serves the repository at ``url``), ``target`` and, with
        ``evaluation``, ``evaluation_record`` (where it was recorded).

    Raises:
        DeployError: when the server fails to start or answers the probe wrongly.
        TimeoutError: when the server is not ready within ``timeout_s``.
    """
    repository = model_repository or DEFAULT_MODEL_REPOSITORY
    labels = serving.read_export_labels(export_dir)
    published = publish(export_dir, repository, model_name)
    version = published["version"]
    log.info(
        "%s version %d of %s in %s",
        "reusing" if published["reused"] else "published",
        version,
        model_name,
        repository,
    )

    check_port = free_port()
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.NamedTemporaryFile(prefix="model-server-", suffix=".log") as server_log:
        # The server's output goes to a file: a pipe nobody drains would block it.
        process = subprocess.Popen(
            server_command(repository, model_name, check_port, version=version),
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_until_ready(process, model_name, check_port, timeout_s, server_log.name)
            input_name, output_names = served_signature(model_name, check_port)
            image = {"b64": base64.b64encode(probe_jpeg()).decode("ascii")}
            body = {"signature_name": serving.SIGNATURE, "instances": [{input_name: image}]}
            start = time.perf_counter()
            status, response = _request(predict_url(model_name, check_port), body)
            latency_ms = (time.perf_counter() - start) * 1000.0
            if status != 200:
                raise DeployError(
                    f"the probe request failed with HTTP {status}: {response!r:.500}; the "
                    f"server's output ends with:\n{_tail(server_log.name)}"
                )
            prediction = check_probe_answer(response, labels, output_names)
            check_health(check_port)
        finally:
            code = stop_server(process)
            log.info("model server stopped (exit code %s)", code)

    result = {
        "target": "local",
        "model_name": model_name,
        "version": version,
        "model_dir": published["model_dir"],
        "model_repository": repository,
        "url": predict_url(model_name, port),
        "verified": True,
        "probe": probe_check(output_names).answer_summary(prediction)
        | {"latency_ms": round(latency_ms, 2)},
        "serve_command": shlex.join(
            server_command(repository, model_name, port, grpc_port=DEFAULT_GRPC_PORT)
        ),
    }
    if evaluation is not None:
        result["evaluation_record"] = record_evaluation(
            repository, model_name, version, evaluation, published["digest"]
        )
    return result


def record_evaluation(
    repository: str, model_name: str, version: int, evaluation: Mapping[str, Any], digest: str
) -> str:
    """Writes the evaluation a version was deployed with beside the versions (where
    neither a server nor a version scan looks); returns its path."""
    path = evaluation_path(repository, model_name, version)
    io.makedirs(os.path.dirname(path))
    record = {"model_name": model_name, "version": version, "digest": digest}
    io.write_json(path, record | {"evaluation": dict(evaluation)})
    log.info("recorded the evaluation of version %d at %s", version, path)
    return path
