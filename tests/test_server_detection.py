"""The model server and the local deploy step on a detector's export (the Object Detection
API's contract: input ``inputs``, outputs ``detection_boxes``, ...), next to test_server.py's
classifier: the same server, which reads the input's name and the outputs from the signature.

The module trains a tiny detector (64 px, one epoch: its detections are arbitrary but
well-formed), exports it, serves it once, and checks every answer against the SavedModel
called directly.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io as bytes_io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from components.deploy import DEFAULT_MODEL_NAME, local
from components.deploy.model_repository import publish
from components.deploy.server import ServerLimits

MODEL_NAME = "detector"
MAX_INSTANCES = 4
MAX_BODY_BYTES = 200_000
WAIT_S = 120.0
OD_API_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
OUTPUTS = {*OD_API_OUTPUTS, "detection_multiclass_scores", "detection_labels"}
MAX_DETECTIONS = 100


def _jpeg(seed: int, size: int = 80) -> bytes:
    """A picture with a filled shape on a plain background (what the detector saw)."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    y, x = rng.integers(5, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3] = rng.integers(0, 256, 3)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


IMAGES = [_jpeg(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def direct(detection_export):
    """The SavedModel's own answer for some images: ``{output name: numpy array}``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(detection_export["dir"])
    signature = loaded.signatures["serving_default"]

    def call(images: list[bytes]) -> dict[str, np.ndarray]:
        outputs = signature(inputs=tf.constant(images))
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    return call


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection_files")
    (root / "a.jpg").write_bytes(IMAGES[0])
    return root


# Vertex AI's routes for a custom container, as it sets them (AIP_PREDICT_ROUTE, ...).
VERTEX_PREDICT_ROUTE = "/v1/endpoints/123/deployedModels/456:predict"
VERTEX_HEALTH_ROUTE = "/v1/endpoints/123/deployedModels/456"
VERTEX_ROUTES = {"AIP_PREDICT_ROUTE": VERTEX_PREDICT_ROUTE, "AIP_HEALTH_ROUTE": VERTEX_HEALTH_ROUTE}


@pytest.fixture(scope="module")
def server(detection_export, files, tmp_path_factory):
    """The detector served from a repository: ``(base_url, grpc_target)``, batching on
    (the default), at most ``MAX_INSTANCES`` images a request and ``MAX_BODY_BYTES`` a
    body, files read under ``files``, Vertex AI's routes set. Checks at the end that
    SIGTERM stops it with 0."""
    repo = str(tmp_path_factory.mktemp("detection_served") / "repo")
    publish(detection_export["dir"], repo, MODEL_NAME)
    log_path = tmp_path_factory.mktemp("detection_log") / "server.log"
    port, grpc_port = local.free_port(), local.free_port()
    command = local.server_command(
        repo,
        MODEL_NAME,
        port,
        limits=ServerLimits(max_instances=MAX_INSTANCES, max_body_bytes=MAX_BODY_BYTES),
        grpc_port=grpc_port,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "--allow-uri-prefix", str(files)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **VERTEX_ROUTES},
        )
    try:
        local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, str(log_path))
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    finally:
        code = local.stop_server(process, timeout_s=WAIT_S)
    assert code == 0, log_path.read_text()[-3000:]


def _predict_url(server) -> str:
    return f"{server[0]}/v1/models/{MODEL_NAME}:predict"


def _check_rows(rows: list[dict], expected: dict[str, np.ndarray], labels: list[str]) -> None:
    """Row-format predictions: the detector's outputs, well-formed, and the numbers and
    labels of the SavedModel called directly."""
    assert len(rows) == len(expected["num_detections"])
    for i, row in enumerate(rows):
        assert set(row) == OUTPUTS
        boxes = np.asarray(row["detection_boxes"])
        assert boxes.shape == (MAX_DETECTIONS, 4)
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        count = int(row["num_detections"])
        assert count > 0  # a score threshold of 0: there is always something
        classes = np.asarray(row["detection_classes"][:count])
        assert classes.min() >= 1 and classes.max() <= len(labels)
        assert all(isinstance(label, str) for label in row["detection_labels"])
        assert row["detection_labels"][:count] == [labels[int(c) - 1] for c in classes]
        for name in OUTPUTS - {"detection_labels"}:
            np.testing.assert_allclose(row[name], expected[name][i], rtol=1e-4, atol=1e-5)
        assert row["detection_labels"] == [v.decode() for v in expected["detection_labels"][i]]


def _columns_to_rows(columns: dict) -> list[dict]:
    count = len(columns["num_detections"])
    return [{name: columns[name][i] for name in columns} for i in range(count)]


# --- REST: the Object Detection API's requests --------------------------------------------


def test_the_2019_object_detection_request(server, direct, detection_export):
    body = {
        "signature_name": "serving_default",
        "instances": [{"inputs": {"b64": _b64(image)}} for image in IMAGES],
    }
    status, response = _http(_predict_url(server), body)
    assert status == 200, response
    _check_rows(response["predictions"], direct(IMAGES), detection_export["labels"])


def test_a_bare_b64_instance_names_the_one_input(server, direct, detection_export):
    status, response = _http(_predict_url(server), {"instances": [{"b64": _b64(IMAGES[1])}]})
    assert status == 200, response
    _check_rows(response["predictions"], direct(IMAGES[1:2]), detection_export["labels"])


@pytest.mark.parametrize(
    "inputs", [lambda values: values, lambda values: {"inputs": values}], ids=["list", "named"]
)
def test_columnar_requests_answer_in_columns(server, direct, detection_export, inputs):
    values = [{"b64": _b64(image)} for image in IMAGES]
    status, response = _http(_predict_url(server), {"inputs": inputs(values)})
    assert status == 200, response
    assert set(response["outputs"]) == OUTPUTS
    _check_rows(_columns_to_rows(response["outputs"]), direct(IMAGES), detection_export["labels"])


def test_files_named_under_the_allowed_prefix(server, direct, detection_export, files):
    body = {"instances": [{"filenames": str(files / "a.jpg")}]}
    status, response = _http(_predict_url(server), body)
    assert status == 200, response
    _check_rows(response["predictions"], direct(IMAGES[:1]), detection_export["labels"])


def test_concurrent_requests_batched_each_get_their_own_rows(server, direct, detection_export):
    images = [_jpeg(seed) for seed in range(10, 16)]

    def predict(image: bytes) -> list[dict]:
        status, response = _http(_predict_url(server), {"instances": [{"b64": _b64(image)}]})
        assert status == 200, response
        return response["predictions"]

    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(predict, images))
    for image, rows in zip(images, answers, strict=True):
        _check_rows(rows, direct([image]), detection_export["labels"])


BAD_REQUESTS = {
    "a classifier's input name": (
        {"instances": [{"image_bytes": {"b64": _b64(IMAGES[0])}}]},
        "unknown input 'image_bytes'; the signature's input is 'inputs'",
    ),
    "an unknown input beside it": (
        {"instances": [{"inputs": {"b64": _b64(IMAGES[0])}, "extra": 1}]},
        "unexpected inputs ['extra']; the signature takes only 'inputs'",
    ),
    "a wrong columnar input name": (
        {"inputs": {"image_bytes": [{"b64": _b64(IMAGES[0])}]}},
        "the signature takes only 'inputs'",
    ),
    "bad base64": (
        {"instances": [{"inputs": {"b64": "@@not base64@@"}}]},
        "instance 0: invalid base64",
    ),
    "not an image": (
        {"instances": [{"inputs": {"b64": _b64(b"plain text")}}]},
        "instance 0: not an image",
    ),
    "too many instances": (
        {"instances": [{"b64": _b64(IMAGES[0])}] * (MAX_INSTANCES + 1)},
        f"limit of {MAX_INSTANCES}",
    ),
    "another signature": (
        {"signature_name": "tf_example", "instances": [{"b64": _b64(IMAGES[0])}]},
        "unknown signature_name 'tf_example'",
    ),
}


# The routes a TF Serving body is predicted on: TF Serving's, SageMaker's and Vertex AI's.
PREDICT_ROUTES = (f"/v1/models/{MODEL_NAME}:predict", "/invocations", VERTEX_PREDICT_ROUTE)


@pytest.mark.parametrize("route", PREDICT_ROUTES, ids=["tf-serving", "sagemaker", "vertex"])
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_400_with_a_clear_message(server, case, route):
    body, message = BAD_REQUESTS[case]
    status, response = _http(server[0] + route, body)
    assert status == 400, response
    assert set(response) == {"error"} and message in response["error"], response


def test_an_oversized_body_gets_413_on_every_route(server):
    image = {"inputs": {"b64": _b64(b"\xff" * MAX_BODY_BYTES)}}
    for route in (*PREDICT_ROUTES, f"/v2/models/{MODEL_NAME}/infer"):
        status, response = _http(server[0] + route, {"instances": [image]})
        assert status == 413, (route, response)
        assert f"limit of {MAX_BODY_BYTES} bytes" in response["error"]


@pytest.fixture(scope="module")
def rest_answer(server) -> dict[str, np.ndarray]:
    """The REST (TF Serving row format) answer for ``IMAGES`` as columns: what every other
    client must get too."""
    body = {"instances": [{"inputs": {"b64": _b64(image)}} for image in IMAGES]}
    status, response = _http(_predict_url(server), body)
    assert status == 200, response
    rows = response["predictions"]
    return {name: np.asarray([row[name] for row in rows]) for name in OUTPUTS}


def _same_as_rest(got: dict, rest: dict[str, np.ndarray]) -> None:
    """Boxes, classes, scores and labels (bytes or text) as REST answered them."""
    for name in ("detection_boxes", "detection_classes", "detection_scores", "num_detections"):
        np.testing.assert_allclose(got[name], rest[name], rtol=1e-4, atol=1e-5, err_msg=name)
    labels = np.asarray(got["detection_labels"], dtype=object)
    text = [v.decode() if isinstance(v, bytes) else v for v in labels.ravel()]
    assert text == rest["detection_labels"].ravel().tolist()


def test_sagemaker_and_vertex_routes(server, rest_answer):
    # SageMaker's TF Serving container body, and Vertex AI's (with its parameters).
    images = [{"inputs": {"b64": _b64(image)}} for image in IMAGES]
    for route, body in {
        "/invocations": {"signature_name": "serving_default", "instances": images},
        VERTEX_PREDICT_ROUTE: {"instances": images, "parameters": {}},
    }.items():
        status, response = _http(server[0] + route, body)
        assert status == 200, (route, response)
        rows = response["predictions"]
        _same_as_rest({name: [row[name] for row in rows] for name in OUTPUTS}, rest_answer)
    for route in ("/ping", VERTEX_HEALTH_ROUTE):
        assert _http(server[0] + route) == (200, {"status": "healthy"})


def test_the_vertex_custom_container_contract_from_its_variables(
    detection_export, rest_answer, tmp_path
):
    """Started as Vertex AI starts the deploy image: the detector, port and routes come
    from the AIP_* variables alone."""
    port = local.free_port()
    env = {
        **os.environ,
        **VERTEX_ROUTES,
        "AIP_STORAGE_URI": detection_export["dir"],
        "AIP_HTTP_PORT": str(port),
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "components.deploy.server", "--grpc-port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        local.wait_until_ready(process, DEFAULT_MODEL_NAME, port, WAIT_S, str(log_path))
        assert _http(url + VERTEX_HEALTH_ROUTE) == (200, {"status": "healthy"})
        body = {"instances": [{"inputs": {"b64": _b64(image)}} for image in IMAGES]}
        status, response = _http(url + VERTEX_PREDICT_ROUTE, body)
        assert status == 200, response
        rows = response["predictions"]
        _same_as_rest({name: [row[name] for row in rows] for name in OUTPUTS}, rest_answer)
        status, response = _http(url + VERTEX_PREDICT_ROUTE, BAD_REQUESTS["not an image"][0])
        assert status == 400 and "not an image" in response["error"], response
    finally:
        code = local.stop_server(process, timeout_s=WAIT_S)
    assert code == 0, log_path.read_text()[-3000:]


# --- KServe v2, gRPC, health ----------------------------------------------------------------


def test_kserve_v2_infer_and_metadata_use_the_signature_names(server, direct, detection_export):
    url = f"{server[0]}/v2/models/{MODEL_NAME}"
    status, metadata = _http(url)
    assert status == 200, metadata
    assert metadata["inputs"] == [{"name": "inputs", "datatype": "BYTES", "shape": [-1]}]
    described = {output["name"]: output for output in metadata["outputs"]}
    assert set(described) == OUTPUTS
    assert described["detection_boxes"]["datatype"] == "FP32"
    assert described["detection_boxes"]["shape"] == [-1, MAX_DETECTIONS, 4]
    assert described["detection_labels"]["datatype"] == "BYTES"

    tensor = {"name": "inputs", "datatype": "BYTES", "shape": [len(IMAGES)]}
    request = {"inputs": [{**tensor, "data": [_b64(image) for image in IMAGES]}]}
    status, response = _http(f"{url}/infer", request)
    assert status == 200, response
    outputs = {output["name"]: output for output in response["outputs"]}
    assert set(outputs) == OUTPUTS
    assert outputs["detection_boxes"]["shape"] == [len(IMAGES), MAX_DETECTIONS, 4]
    assert outputs["detection_labels"]["datatype"] == "BYTES"
    columns = {
        name: np.reshape(output["data"], output["shape"]).tolist()
        for name, output in outputs.items()
    }
    _check_rows(_columns_to_rows(columns), direct(IMAGES), detection_export["labels"])

    # The classifier's input name is refused, naming the right one.
    request["inputs"][0]["name"] = "image_bytes"
    status, response = _http(f"{url}/infer", request)
    assert status == 400 and "one input named 'inputs'" in response["error"], response


def test_tensorflow_serving_grpc_predict_and_metadata(server, direct, rest_answer):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def predict_request(name: str = "inputs", images=IMAGES, model: str = MODEL_NAME):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        request.inputs[name].CopyFrom(tf.make_tensor_proto(images))
        return request

    with grpc.insecure_channel(server[1]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(), timeout=WAIT_S)
        got = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
        expected = direct(IMAGES)
        assert set(got) == OUTPUTS
        for name in OUTPUTS - {"detection_labels"}:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)
        assert (got["detection_labels"] == expected["detection_labels"]).all()
        _same_as_rest(got, rest_answer)

        # What REST answers with 400, 404 and 413.
        errors = {
            "INVALID_ARGUMENT": [
                (predict_request("image_bytes"), "one input named 'inputs'"),
                (predict_request(images=[b"plain text"]), "instance 0: not an image"),
                (
                    predict_request(images=IMAGES[:1] * (MAX_INSTANCES + 1)),
                    f"limit of {MAX_INSTANCES}",
                ),
            ],
            "NOT_FOUND": [(predict_request(model="other"), "other")],
            "RESOURCE_EXHAUSTED": [(predict_request(images=[b"\xff" * MAX_BODY_BYTES]), "")],
        }
        for code, requests in errors.items():
            for request, message in requests:
                with pytest.raises(grpc.RpcError) as error:
                    stub.Predict(request, timeout=WAIT_S)
                assert error.value.code().name == code, error.value.details()
                assert message in error.value.details()

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = MODEL_NAME
        metadata_request.metadata_field.append("signature_def")
        metadata = stub.GetModelMetadata(metadata_request, timeout=WAIT_S)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        assert {"serving_default", "image_tensor", "tf_example"} <= set(signatures.signature_def)
        signature = signatures.signature_def["serving_default"]
        assert list(signature.inputs) == ["inputs"]
        assert set(signature.outputs) == OUTPUTS


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http(server, rest_answer, binary):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    assert client.is_model_ready(MODEL_NAME)
    metadata = client.get_model_metadata(MODEL_NAME)
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["inputs"]
    tensor = httpclient.InferInput("inputs", [len(IMAGES)], "BYTES")
    if binary:  # the client's defaults: raw image bytes in, binary outputs back
        tensor.set_data_from_numpy(np.array(IMAGES, dtype=np.object_))
        outputs = None
    else:  # pure JSON
        images = [_b64(image).encode() for image in IMAGES]
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=False)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    result = client.infer(MODEL_NAME, [tensor], outputs=outputs)
    _same_as_rest({name: result.as_numpy(name) for name in OUTPUTS}, rest_answer)
    assert result.get_output("detection_labels")["datatype"] == "BYTES"
    assert result.get_output("detection_boxes")["shape"] == [len(IMAGES), MAX_DETECTIONS, 4]

    bad = httpclient.InferInput("inputs", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"plain text"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL_NAME, [bad])
    assert error.value.status() == "400" and "not an image" in error.value.message()
    client.close()


# Triton's gRPC client in its own process (its protos clash with KServe's in one process).
TRITON_GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

target, model, *paths = sys.argv[1:]
client = grpcclient.InferenceServerClient(target)
answer = {"inputs": [t.name for t in client.get_model_metadata(model).inputs]}

def infer(images, name=model, input_name="inputs"):
    tensor = grpcclient.InferInput(input_name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    try:
        result = client.infer(name, [tensor])
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    outputs = {o.name: o.datatype for o in result.get_response().outputs}
    answer = {"datatypes": outputs}
    for name in outputs:
        values = result.as_numpy(name)
        answer[name] = [v.decode() for v in values.ravel()] if values.dtype == object else (
            values.tolist()
        )
    return answer

images = [open(path, "rb").read() for path in paths]
answer["good"] = infer(images)
answer["bad"] = infer([b"plain text"])
answer["too_many"] = infer(images[:1] * 5)
answer["wrong_input"] = infer(images, input_name="image_bytes")
answer["other_model"] = infer(images, "no-such-model")
print(json.dumps(answer))
"""


def test_tritonclient_grpc(server, rest_answer, tmp_path):
    paths = []
    for i, image in enumerate(IMAGES):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(image)
    run = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_CLIENT, server[1], MODEL_NAME, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["inputs"] == ["inputs"]
    good = answer["good"]
    assert good["datatypes"]["detection_labels"] == "BYTES"
    assert good["datatypes"]["detection_boxes"] == "FP32"
    shaped = {name: np.reshape(good[name], rest_answer[name].shape) for name in OUTPUTS}
    _same_as_rest(shaped, rest_answer)
    for case, (code, message) in {
        "bad": ("INVALID_ARGUMENT", "instance 0: not an image"),
        "too_many": ("INVALID_ARGUMENT", f"limit of {MAX_INSTANCES}"),
        "wrong_input": ("INVALID_ARGUMENT", "one input named 'inputs'"),
        "other_model": ("NOT_FOUND", "no-such-model"),
    }.items():
        assert answer[case]["status"] == f"StatusCode.{code}", answer[case]
        assert message in answer[case]["message"]


def test_health_routes(server):
    base = server[0]
    assert _http(f"{base}/v2/health/live") == (200, {"live": True})
    assert _http(f"{base}/v2/health/ready") == (200, {"ready": True})
    ready = {"name": MODEL_NAME, "ready": True}
    status = {"version": "1", "state": "AVAILABLE"}
    status["status"] = {"error_code": "OK", "error_message": ""}
    assert _http(f"{base}/v1/models/{MODEL_NAME}") == (
        200,
        {**ready, "model_version_status": [status]},
    )
    assert _http(f"{base}/v2/models/{MODEL_NAME}/ready") == (200, ready)
    assert _http(f"{base}/ping") == (200, {"status": "healthy"})


def test_a_signature_that_takes_no_encoded_images_is_refused(tmp_path):
    import tensorflow as tf

    from components.deploy.server.model import image_input

    def signature(spec: tf.TensorSpec, fn):
        """``fn`` as the serving_default signature of a saved and loaded SavedModel."""
        module = tf.Module()
        module.fn = tf.function(fn, input_signature=[spec])
        path = str(tmp_path / spec.name)
        tf.saved_model.save(module, path, signatures={"serving_default": module.fn})
        return tf.saved_model.load(path).signatures["serving_default"]

    numbers = signature(tf.TensorSpec([None, 4], tf.float32, name="x"), lambda x: {"y": x * 2})
    with pytest.raises(ValueError, match="one string \\[batch\\] input of encoded images"):
        image_input(numbers)
    encoded = signature(
        tf.TensorSpec([None], tf.string, name="jpegs"), lambda s: {"n": tf.strings.length(s)}
    )
    name, spec = image_input(encoded)
    assert name == "jpegs" and spec.dtype == tf.string


# --- the local deploy step ---------------------------------------------------------------


def test_deploy_local_serves_and_checks_a_detector(detection_export, tmp_path):
    repo = str(tmp_path / "repo")
    info = local.deploy_local(detection_export["dir"], model_name=MODEL_NAME, model_repository=repo)
    assert info["verified"] is True and info["version"] == 1
    assert os.path.isfile(os.path.join(info["model_dir"], "saved_model.pb"))
    probe = info["probe"]
    assert 1 <= probe["num_detections"] <= MAX_DETECTIONS  # a score threshold of 0
    assert probe["label"] in detection_export["labels"]
    assert 0.0 <= probe["score"] <= 1.0 and probe["latency_ms"] > 0
