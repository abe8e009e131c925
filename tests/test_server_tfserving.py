"""The model server's versions: TF Serving's API, complete (versions and labels, model
status and metadata, over REST and gRPC, with TF Serving's own client objects and
stubs), KServe v2's versioned routes (Triton's clients), and versions published and
removed while the server runs (its repository poll).

One model name holds two exports: version 1 a classifier (``image_bytes`` ->
``probabilities``, ``label``, ...), version 2 a detector (``inputs`` ->
``detection_boxes``, ...), so each answer shows which version gave it, and both tasks
are served side by side. The server runs with ``--version-label canary=1``; ``stable``
is the latest (2) by default.
"""

from __future__ import annotations

import base64
import contextlib
import io as bytes_io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from components.deploy import local
from components.deploy.model_repository import publish

MODEL_NAME = "mixed"
WAIT_S = 120.0
CLASSIFIER_OUTPUTS = {"probabilities", "class_index", "label", "score"}
DETECTOR_OUTPUTS = {
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
    "detection_multiclass_scores",
    "detection_labels",
}
OK_STATUS = {"error_code": "OK", "error_message": ""}


def _jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


IMAGES = [_jpeg(seed) for seed in range(2)]


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def repository(exported_model, detection_export, tmp_path_factory) -> str:
    repo = tmp_path_factory.mktemp("tfserving") / "repo"
    shutil.copytree(exported_model, repo / MODEL_NAME / "1")
    shutil.copytree(detection_export["dir"], repo / MODEL_NAME / "2")
    return str(repo)


@contextlib.contextmanager
def _serving(repository: str, log_path, *options: str):
    """``(base_url, grpc_target)`` of a server on ``repository`` run with ``options``,
    its output in ``log_path``; checks at the end that SIGTERM stops it with 0."""
    port, grpc_port = local.free_port(), local.free_port()
    command = local.server_command(repository, MODEL_NAME, port, grpc_port=grpc_port)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, str(log_path))
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    finally:
        code = local.stop_server(process, timeout_s=WAIT_S)
    assert code == 0, log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """``(base_url, grpc_target)`` of the server on both versions."""
    log_path = tmp_path_factory.mktemp("tfserving_log") / "server.log"
    with _serving(repository, log_path, "--version-label", "canary=1") as addresses:
        yield addresses


@pytest.fixture(scope="module")
def direct(exported_model, detection_export):
    """Each version's SavedModel called directly: ``{version: call(images) -> outputs}``."""
    import tensorflow as tf

    calls = {}
    for version, (path, input_name) in {
        1: (exported_model, "image_bytes"),
        2: (detection_export["dir"], "inputs"),
    }.items():
        signature = tf.saved_model.load(path).signatures["serving_default"]

        def call(images, signature=signature, input_name=input_name):
            outputs = signature(**{input_name: tf.constant(images)})
            return {name: tensor.numpy() for name, tensor in outputs.items()}

        calls[version] = call
    return calls


def _same_as_direct(columns: dict, expected: dict[str, np.ndarray]) -> None:
    """Outputs by name (lists or arrays) equal the SavedModel's own."""
    assert set(columns) == set(expected)
    for name, value in expected.items():
        if value.dtype == object:  # strings
            got = np.asarray(columns[name]).astype(object).ravel()
            want = [v.decode() if isinstance(got[0], str) else v for v in value.ravel()]
            assert list(got) == want, name
        else:
            np.testing.assert_allclose(columns[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def _rows_to_columns(rows: list[dict]) -> dict:
    return {name: [row[name] for row in rows] for name in rows[0]}


# --- REST -------------------------------------------------------------------------------

ROUTES = {  # the path after /v1/models/<name>, and the version that answers it
    "": 2,
    "/versions/2": 2,
    "/labels/stable": 2,
    "/versions/1": 1,
    "/labels/canary": 1,
}


def _status(version: int) -> dict:
    return {"version": str(version), "state": "AVAILABLE", "status": OK_STATUS}


@pytest.mark.parametrize("route", ROUTES, ids=[r or "latest" for r in ROUTES])
def test_rest_predict_by_version_and_label(server, direct, route):
    version = ROUTES[route]
    input_name = "image_bytes" if version == 1 else "inputs"
    body = {"instances": [{input_name: {"b64": base64.b64encode(i).decode()}} for i in IMAGES]}
    status, response = _http(f"{server[0]}/v1/models/{MODEL_NAME}{route}:predict", body)
    assert status == 200, response
    _same_as_direct(_rows_to_columns(response["predictions"]), direct[version](IMAGES))


def test_rest_predict_checks_against_the_named_versions_signature(server):
    base = f"{server[0]}/v1/models/{MODEL_NAME}"
    detector_body = {"instances": [{"inputs": {"b64": base64.b64encode(IMAGES[0]).decode()}}]}
    status, response = _http(f"{base}/versions/1:predict", detector_body)
    assert status == 400, response
    assert "unknown input 'inputs'; the signature's input is 'image_bytes'" in response["error"]
    for route, message in {
        "/versions/3": "has no version 3 served; versions: [1, 2]",
        "/labels/beta": "has no version label 'beta'; labels: {'canary': 1, 'stable': 2}",
        "/versions/latest": "version 'latest' is not a version number",
    }.items():
        status, response = _http(f"{base}{route}:predict", detector_body)
        assert status == 404 and message in response["error"], (route, response)


@pytest.mark.parametrize("route", ROUTES, ids=[r or "latest" for r in ROUTES])
def test_rest_status_has_kserve_and_tf_serving_fields(server, route):
    status, response = _http(f"{server[0]}/v1/models/{MODEL_NAME}{route}")
    assert status == 200, response
    versions = [1, 2] if route == "" else [ROUTES[route]]
    assert response == {
        "name": MODEL_NAME,
        "ready": True,
        "model_version_status": [_status(v) for v in versions],
    }


def test_rest_status_and_metadata_of_what_is_not_served(server):
    base = f"{server[0]}/v1/models"
    for path in (
        f"{MODEL_NAME}/versions/7",
        f"{MODEL_NAME}/labels/beta",
        f"{MODEL_NAME}/versions/7/metadata",
        "other",
        "other/metadata",
    ):
        status, response = _http(f"{base}/{path}")
        assert status == 404 and set(response) == {"error"}, (path, response)


@pytest.mark.parametrize("route", ROUTES, ids=[r or "latest" for r in ROUTES])
def test_rest_metadata_in_tf_servings_shape(server, route):
    version = ROUTES[route]
    status, response = _http(f"{server[0]}/v1/models/{MODEL_NAME}{route}/metadata")
    assert status == 200, response
    assert response["model_spec"] == {
        "name": MODEL_NAME,
        "version": str(version),
        "signature_name": "serving_default",
    }
    signatures = response["metadata"]["signature_def"]["signature_def"]
    signature = signatures["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    [(input_name, tensor)] = signature["inputs"].items()
    assert input_name == ("image_bytes" if version == 1 else "inputs")
    assert tensor["dtype"] == "DT_STRING"
    assert [dim["size"] for dim in tensor["tensor_shape"]["dim"]] == ["-1"]
    outputs = CLASSIFIER_OUTPUTS if version == 1 else DETECTOR_OUTPUTS
    assert set(signature["outputs"]) == outputs
    if version == 2:  # the Object Detection API's other signatures
        assert {"image_tensor", "tf_example"} <= set(signatures)


# --- gRPC: TF Serving's stubs -------------------------------------------------------------


def _spec(message, version: int | None = None, label: str = "", name: str = MODEL_NAME):
    message.model_spec.name = name
    if version is not None:
        message.model_spec.version.value = version
    if label:
        message.model_spec.version_label = label
    return message


SPECS = {"latest": {}, "2": {"version": 2}, "stable": {"label": "stable"}}
SPECS |= {"1": {"version": 1}, "canary": {"label": "canary"}}


def _spec_version(spec: dict) -> int:
    return spec.get("version") or {"canary": 1}.get(spec.get("label"), 2)


@pytest.fixture(scope="module")
def channel(server):
    import grpc

    with grpc.insecure_channel(server[1]) as channel:
        yield channel


@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_grpc_predict_by_version_and_label(channel, direct, spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    version = _spec_version(SPECS[spec])
    request = _spec(predict_pb2.PredictRequest(), **SPECS[spec])
    input_name = "image_bytes" if version == 1 else "inputs"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(IMAGES))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=WAIT_S)
    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == version
    got = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    _same_as_direct(got, direct[version](IMAGES))


@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_grpc_metadata_by_version_and_label(channel, spec):
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    version = _spec_version(SPECS[spec])
    request = _spec(get_model_metadata_pb2.GetModelMetadataRequest(), **SPECS[spec])
    request.metadata_field.append("signature_def")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.GetModelMetadata(request, timeout=WAIT_S)
    assert response.model_spec.version.value == version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert list(signature.inputs) == ["image_bytes" if version == 1 else "inputs"]
    assert set(signature.outputs) == (CLASSIFIER_OUTPUTS if version == 1 else DETECTOR_OUTPUTS)


def test_grpc_model_status(channel):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    for spec, versions in {"latest": [1, 2], "1": [1], "stable": [2], "canary": [1]}.items():
        request = _spec(get_model_status_pb2.GetModelStatusRequest(), **SPECS[spec])
        response = stub.GetModelStatus(request, timeout=WAIT_S)
        assert [s.version for s in response.model_version_status] == versions
        for status in response.model_version_status:
            assert status.state == available
            assert status.status.error_code == 0  # OK


def test_grpc_errors(channel):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def predict(**spec):
        request = _spec(predict_pb2.PredictRequest(), **spec)
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(IMAGES[:1]))
        return request

    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    calls = [
        (prediction.Predict, predict(version=3), "NOT_FOUND", "no version 3"),
        (prediction.Predict, predict(label="beta"), "NOT_FOUND", "no version label 'beta'"),
        (prediction.Predict, predict(name="other"), "NOT_FOUND", "other"),
        # Version 1's signature takes image_bytes.
        (prediction.Predict, predict(version=1), "INVALID_ARGUMENT", "'image_bytes'"),
        (
            status.GetModelStatus,
            _spec(get_model_status_pb2.GetModelStatusRequest(), version=9),
            "NOT_FOUND",
            "no version 9",
        ),
        (
            status.GetModelStatus,
            _spec(get_model_status_pb2.GetModelStatusRequest(), name="other"),
            "NOT_FOUND",
            "other",
        ),
    ]
    for method, request, code, message in calls:
        with pytest.raises(grpc.RpcError) as error:
            method(request, timeout=WAIT_S)
        assert error.value.code().name == code, error.value.details()
        assert message in error.value.details()


# --- KServe v2's versions: Triton's clients -------------------------------------------------

V2_VERSIONS = {"1": 1, "2": 2, "": 2}  # tritonclient's model_version, the version answering


def _input_name(version: int) -> str:
    return "image_bytes" if version == 1 else "inputs"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_by_version(server, direct, binary):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    for model_version, version in V2_VERSIONS.items():
        expected = direct[version](IMAGES)
        tensor = httpclient.InferInput(_input_name(version), [len(IMAGES)], "BYTES")
        if binary:  # the client's defaults: raw image bytes in, binary outputs back
            tensor.set_data_from_numpy(np.array(IMAGES, dtype=np.object_))
            outputs = None
        else:  # pure JSON
            images = [base64.b64encode(image) for image in IMAGES]
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=False)
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=False) for name in expected
            ]
        result = client.infer(MODEL_NAME, [tensor], model_version=model_version, outputs=outputs)
        assert result.get_response()["model_version"] == str(version)
        _same_as_direct({name: result.as_numpy(name) for name in expected}, expected)

        metadata = client.get_model_metadata(MODEL_NAME, model_version)
        assert metadata["versions"] == ([model_version] if model_version else ["1", "2"])
        assert [t["name"] for t in metadata["inputs"]] == [_input_name(version)]
        assert {t["name"] for t in metadata["outputs"]} == set(expected)
        assert client.is_model_ready(MODEL_NAME, model_version)

    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL_NAME, [tensor], model_version="3")
    assert error.value.status() == "404"
    assert "has no version 3 served; versions: [1, 2]" in error.value.message()
    assert not client.is_model_ready(MODEL_NAME, "3")
    client.close()


def test_v2_routes_of_versions_that_are_not_served(server):
    base = f"{server[0]}/v2/models/{MODEL_NAME}"
    body = {"inputs": [{"name": "inputs", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    for path, request, message in (
        ("/versions/3/infer", body, "has no version 3 served"),
        ("/versions/3", None, "has no version 3 served"),
        ("/versions/3/ready", None, "has no version 3 served"),
        ("/versions/latest/infer", body, "version 'latest' is not a version number"),
    ):
        status, response = _http(base + path, request)
        assert status == 404 and message in response["error"], (path, response)


# Triton's gRPC client runs in its own process: its protos and KServe's define the same
# messages (package inference), which one process's protobuf pool refuses to hold twice.
TRITON_GRPC_VERSIONS = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

target, model, *paths = sys.argv[1:]
client = grpcclient.InferenceServerClient(target)
images = [open(path, "rb").read() for path in paths]

def call(method, *args, **kwargs):
    try:
        return method(*args, **kwargs)
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}

def infer(version, input_name):
    tensor = grpcclient.InferInput(input_name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    result = call(client.infer, model, [tensor], model_version=version)
    if isinstance(result, dict):
        return result
    response = result.get_response()
    outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
    return {"version": response.model_version, "outputs": {
        name: [v.decode() for v in a.ravel()] if a.dtype == object else a.tolist()
        for name, a in outputs.items()
    }}

def metadata(version):
    answer = call(client.get_model_metadata, model, model_version=version)
    if isinstance(answer, dict):
        return answer
    return {"versions": list(answer.versions), "inputs": [t.name for t in answer.inputs]}

answer = {
    version: {
        "infer": infer(version, input_name),
        "metadata": metadata(version),
        "ready": call(client.is_model_ready, model, model_version=version),
    }
    for version, input_name in (("1", "image_bytes"), ("2", "inputs"), ("", "inputs"),
                                ("3", "inputs"))
}
print(json.dumps(answer))
"""


def test_tritonclient_grpc_by_version(server, direct, tmp_path):
    paths = []
    for i, image in enumerate(IMAGES):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(image)
    run = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_VERSIONS, server[1], MODEL_NAME, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    for model_version, version in V2_VERSIONS.items():
        got = answer[model_version]
        assert got["infer"]["version"] == str(version), got["infer"]
        _same_as_direct(got["infer"]["outputs"], direct[version](IMAGES))
        versions = [model_version] if model_version else ["1", "2"]
        assert got["metadata"] == {"versions": versions, "inputs": [_input_name(version)]}
        assert got["ready"] is True
    for call in ("infer", "metadata", "ready"):
        error = answer["3"][call]
        assert error["status"] == "StatusCode.NOT_FOUND", (call, error)
        assert "has no version 3 served" in error["message"]


# --- versions published and removed while the server runs -----------------------------------


def _wait_for(check, what: str) -> None:
    """Calls ``check`` until it returns True, for at most ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out after {WAIT_S:.0f} s waiting for {what}"
        time.sleep(0.1)


def _versions(base: str) -> list[tuple[str, str]]:
    """The versions the status route lists, with their states."""
    status, response = _http(f"{base}/v1/models/{MODEL_NAME}")
    assert status == 200, response
    return [(s["version"], s["state"]) for s in response["model_version_status"]]


def _available(*versions: int) -> list[tuple[str, str]]:
    return [(str(version), "AVAILABLE") for version in versions]


def _predict(base: str, route: str, export: int) -> tuple[int, dict]:
    """A TF Serving row-format request of ``IMAGES`` to ``route``, with the input name of
    the export first published as version ``export`` (1: the classifier, 2: the detector)."""
    name = _input_name(export)
    body = {"instances": [{name: {"b64": base64.b64encode(data).decode()}} for data in IMAGES]}
    return _http(f"{base}/v1/models/{MODEL_NAME}{route}:predict", body)


def _answers_as(base: str, route: str, export: int, direct) -> None:
    """``route`` answers as the export first published as version ``export`` does."""
    status, response = _predict(base, route, export)
    assert status == 200, response
    _same_as_direct(_rows_to_columns(response["predictions"]), direct[export](IMAGES))


def test_versions_published_and_removed_while_serving(
    exported_model, detection_export, direct, tmp_path
):
    repo = str(tmp_path / "repo")
    publish(exported_model, repo, MODEL_NAME)
    log_path = tmp_path / "server.log"
    with _serving(repo, log_path, "--file-system-poll-wait-seconds", "0.2") as (base, _):
        assert _versions(base) == _available(1)
        # The deploy stage publishes a version while the server serves.
        assert publish(detection_export["dir"], repo, MODEL_NAME)["version"] == 2
        _wait_for(lambda: _versions(base) == _available(1, 2), "version 2 served")
        _answers_as(base, "", 2, direct)  # the latest
        _answers_as(base, "/labels/stable", 2, direct)
        _answers_as(base, "/versions/1", 1, direct)

        shutil.rmtree(os.path.join(repo, MODEL_NAME, "1"))
        _wait_for(lambda: _versions(base) == _available(2), "version 1 no longer served")
        status, response = _predict(base, "/versions/1", 1)
        assert status == 404 and "has no version 1 served; versions: [2]" in response["error"]

        # A version that does not load is logged and not served, and the server serves
        # on; once its files change, it is tried again.
        broken = tmp_path / "broken"
        shutil.copytree(exported_model, broken)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.rename(broken, os.path.join(repo, MODEL_NAME, "3"))
        _wait_for(
            lambda: (
                "version 3 of 'mixed'" in log_path.read_text(errors="replace")
                and "failed to load, not served" in log_path.read_text(errors="replace")
            ),
            "version 3's failed load in the log",
        )
        assert _versions(base) == _available(2)
        _answers_as(base, "", 2, direct)
        repaired = tmp_path / "saved_model.pb"
        shutil.copy(os.path.join(exported_model, "saved_model.pb"), repaired)
        os.replace(repaired, os.path.join(repo, MODEL_NAME, "3", "saved_model.pb"))
        _wait_for(lambda: _versions(base) == _available(2, 3), "version 3 served once repaired")
        _answers_as(base, "", 1, direct)  # version 3 is version 1's export again


# --- versions and labels, without a server ---------------------------------------------------


def test_versions_served_and_labels_checked(repository):
    from tensorflow_serving.apis import get_model_status_pb2

    from components.deploy.server.model import ImageModel
    from components.deploy.server.tfserving import status_response

    model = ImageModel(MODEL_NAME, repository, version_labels={"canary": 1})
    model.resolve()
    assert (sorted(model.versions), model.version) == ([1, 2], 2)
    assert model.version_labels == {"canary": 1, "stable": 2}
    # Before loading, every version is LOADING.
    states = [s.state for s in status_response(model).model_version_status]
    assert states == [get_model_status_pb2.ModelVersionStatus.LOADING] * 2

    one = ImageModel(MODEL_NAME, repository, version=1)
    one.resolve()
    assert sorted(one.versions) == [1] and one.version_labels == {"stable": 1}

    with pytest.raises(ValueError, match="version labels {'canary': 3} name versions"):
        ImageModel(MODEL_NAME, repository, version_labels={"canary": 3}).resolve()


def test_cli_version_labels():
    from components.deploy.server.__main__ import parse_args

    args = parse_args(
        ["--model-repository", "r", "--model-name", "m", "--version-label", "canary=1"],
        environ={},
    )
    assert args.version_labels == {"canary": 1}
    for bad in ("canary", "canary=x", "=1"):
        with pytest.raises(SystemExit):
            parse_args(
                ["--model-repository", "r", "--model-name", "m", "--version-label", bad],
                environ={},
            )
