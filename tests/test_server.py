"""Tests of the local model server (the components.deploy.server package).

A server start-up (TensorFlow, KServe, the model) costs seconds, so the file starts two:
one shared by the request tests (batching on, a small in-flight bound and body limit),
and one for loading, draining and SIGTERM (batching off). Both run the real server CLI
through a wrapper that can hold the model's loading and its signature calls while a file
exists: slow requests on demand, so that overload and shutdown are tested without timing
assumptions. Every wait is bounded, with room for a slow, loaded machine.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io as bytes_io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import Message

import numpy as np
import pytest
from PIL import Image

from components.deploy import local
from components.deploy.model_repository import publish
from components.deploy.server import ServerLimits
from pipelines.sample_data import CLASSES

LABELS = list(CLASSES)
MODEL_NAME = "shapes"
MAX_INFLIGHT = 4
MAX_BODY_BYTES = 200_000
WAIT_S = 120.0

# The server's CLI, with the model's load and signature calls held while the files
# load.hold / predict.hold exist in $TEST_HOLD_DIR; each held call first writes a
# predict.entered-* file, so a test knows when a request has reached the model.
HELD_SERVER = """
import os, sys, time, uuid
from components.deploy.server.__main__ import main
from components.deploy.server.model import ImageModel

hold_dir = os.environ["TEST_HOLD_DIR"]

def held(method, name):
    def call(self, *args):
        if name == "predict":
            open(os.path.join(hold_dir, "predict.entered-" + uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + 300
        while os.path.exists(os.path.join(hold_dir, name + ".hold")):
            if time.monotonic() > deadline:
                raise RuntimeError(name + " held for too long")
            time.sleep(0.02)
        return method(self, *args)
    return call

ImageModel.load = held(ImageModel.load, "load")
ImageModel.run_signature = held(ImageModel.run_signature, "predict")
main(sys.argv[1:])
"""


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


def _http(
    url: str, body: bytes | dict | None = None, content_type: str = "application/json"
) -> tuple[int, dict]:
    status, _, response = _http_full(url, body, content_type)
    return status, response


def _http_full(
    url: str, body: bytes | dict | None = None, content_type: str = "application/json"
) -> tuple[int, Message, dict]:
    """(status, headers, JSON body) of one request; the body must be JSON, errors too."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def _raw_http(port: int, head: bytes, body_parts: tuple[bytes, ...] = ()) -> tuple[int, dict]:
    """Sends a hand-made request on a new connection; (status, JSON body) of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"<eof>"
            assert not data.endswith(b"<eof>"), f"connection closed before an answer: {data!r}"
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of an answer"
            body += chunk
    return int(lines[0].split()[1]), {"headers": headers, "json": json.loads(body)}


def _poll(check, what: str, timeout_s: float = WAIT_S, interval_s: float = 0.1):
    """Calls ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def _entered(hold_dir) -> int:
    return sum(name.startswith("predict.entered-") for name in os.listdir(hold_dir))


def _status(url: str) -> int | None:
    try:
        return _http(url)[0]
    except OSError:
        return None


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6;
    an IPv4-mapped IPv6 address, as gRPC listens on, as its IPv4 address)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if fields[3] != "0A" or int(port_hex, 16) != port:
                    continue
                # Each 4-byte word of the address is in host (little-endian) order.
                raw = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                )
                if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
                    raw = raw[12:]
                addresses.add(
                    socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
                )
    return addresses


def _start_held_server(
    repo: str,
    port: int,
    hold_dir,
    log_path,
    limits: ServerLimits,
    grpc_port: int = 0,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    argv = local.server_command(repo, MODEL_NAME, port, limits=limits, grpc_port=grpc_port)[3:]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", HELD_SERVER, *argv, *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "TEST_HOLD_DIR": str(hold_dir)},
        )


@pytest.fixture(scope="module")
def served_repo(exported_model, tmp_path_factory) -> str:
    repo = str(tmp_path_factory.mktemp("served") / "repo")
    publish(exported_model, repo, MODEL_NAME)
    return repo


# Vertex AI's routes for a custom container, as it sets them (AIP_PREDICT_ROUTE, ...).
VERTEX_PREDICT_ROUTE = "/v1/endpoints/123/deployedModels/456:predict"
VERTEX_HEALTH_ROUTE = "/v1/endpoints/123/deployedModels/456"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image files for requests that name them: ``allowed/`` is the server's one allowed
    prefix; ``outside/`` is not (nor ``allowed-not/``, which only shares its beginning)."""
    root = tmp_path_factory.mktemp("files")
    for folder in ("allowed", "outside", "allowed-not"):
        (root / folder).mkdir()
        (root / folder / "a.jpg").write_bytes(_jpeg(seed=7, noise=True))
    (root / "allowed" / "b.png").write_bytes(_encoded("PNG"))
    (root / "allowed" / "text.jpg").write_bytes(b"not an image")
    # A symbolic link inside that leads outside, and a FIFO outside: a server that opened
    # it would hang in open() with it open for reading, which a writer would notice.
    (root / "allowed" / "link.jpg").symlink_to(root / "outside" / "a.jpg")
    os.mkfifo(root / "outside" / "pipe.jpg")
    (root / "allowed" / "pipe.jpg").symlink_to(root / "outside" / "pipe.jpg")
    return root


@pytest.fixture(scope="module")
def server(served_repo, files, tmp_path_factory):
    """The module's server: batching on (the default), in-flight bound 4, 200 kB bodies,
    gRPC on, files read under ``files/allowed``, Vertex AI's routes set.

    Yields ``(base_url, port, hold_dir, grpc_port)``; checks at the end that SIGTERM stops
    it with 0.
    """
    hold_dir = tmp_path_factory.mktemp("hold")
    log_path = tmp_path_factory.mktemp("server_log") / "server.log"
    port, grpc_port = local.free_port(), local.free_port()
    process = _start_held_server(
        served_repo,
        port,
        hold_dir,
        log_path,
        ServerLimits(max_inflight=MAX_INFLIGHT, max_body_bytes=MAX_BODY_BYTES),
        grpc_port=grpc_port,
        options=("--allow-uri-prefix", str(files / "allowed")),
        env={"AIP_PREDICT_ROUTE": VERTEX_PREDICT_ROUTE, "AIP_HEALTH_ROUTE": VERTEX_HEALTH_ROUTE},
    )
    try:
        local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, str(log_path))
        yield f"http://127.0.0.1:{port}", port, hold_dir, grpc_port
    finally:
        for hold in hold_dir.glob("*.hold"):
            hold.unlink()
        code = local.stop_server(process, timeout_s=WAIT_S)
    assert code == 0, f"the server did not stop cleanly on SIGTERM (exit code {code})"


@pytest.fixture
def server_url(server) -> str:
    return server[0]


@pytest.fixture
def grpc_target(server) -> str:
    """``host:port`` of the module server's gRPC services."""
    return f"127.0.0.1:{server[3]}"


def _predict_url(base: str) -> str:
    return f"{base}/v1/models/{MODEL_NAME}:predict"


def _check_predictions(predictions: list, count: int) -> None:
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


def _same_predictions(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a["label"] == b["label"] and a["class_index"] == b["class_index"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-4, atol=1e-6)


# --- the request formats ----------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize(
    "shape",
    [lambda b: {"b64": b}, lambda b: {"image_bytes": {"b64": b}}],
    ids=["b64", "image_bytes"],
)
def test_row_format(server_url, shape, count):
    instances = [shape(_b64(_jpeg(seed=i, noise=i % 2 == 1))) for i in range(count)]
    status, body = _http(_predict_url(server_url), {"instances": instances})
    assert status == 200, body
    _check_predictions(body["predictions"], count)


@pytest.mark.parametrize(
    "inputs",
    [lambda values: {"image_bytes": values}, lambda values: values],
    ids=["named", "list"],
)
def test_columnar_format_answers_in_columns(server_url, inputs):
    images = [_jpeg(seed=1, noise=True), _encoded("PNG"), _jpeg(seed=2)]
    values = [{"b64": _b64(image)} for image in images]
    status, body = _http(_predict_url(server_url), {"inputs": inputs(values)})
    assert status == 200, body
    outputs = body["outputs"]
    assert set(outputs) == {"probabilities", "class_index", "label", "score"}
    assert all(len(column) == len(images) for column in outputs.values())
    rows = [{name: outputs[name][i] for name in outputs} for i in range(len(images))]
    _check_predictions(rows, len(images))
    # The same images in the row format: the same answers.
    _, row_body = _http(_predict_url(server_url), {"instances": values})
    _same_predictions(rows, row_body["predictions"])


def test_signature_name_png_and_plain_text_content_type(server_url):
    body = {
        "signature_name": "serving_default",
        "instances": [{"b64": _b64(_encoded("PNG"))}, {"b64": _b64(_jpeg())}],
    }
    status, response = _http(_predict_url(server_url), body)
    assert status == 200, response
    _check_predictions(response["predictions"], 2)
    # curl's default content type: KServe hands the raw body over, parsed all the same.
    raw = json.dumps(body).encode()
    status, response = _http(_predict_url(server_url), raw, "application/x-www-form-urlencoded")
    assert status == 200, response
    _check_predictions(response["predictions"], 2)


def test_kserve_v2_infer_with_base64_bytes(server_url):
    images = [_jpeg(seed=3, noise=True), _jpeg(seed=4)]
    request = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [2],
                "data": [_b64(image) for image in images],
            }
        ],
    }
    status, body = _http(f"{server_url}/v2/models/{MODEL_NAME}/infer", request)
    assert status == 200, body
    assert body["id"] == "req-1" and body["model_name"] == MODEL_NAME
    assert body["model_version"] == "1"
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, len(LABELS)]
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert (outputs["label"]["datatype"], outputs["label"]["shape"]) == ("BYTES", [2])
    assert outputs["class_index"]["datatype"] == "INT64"
    probabilities = np.reshape(outputs["probabilities"]["data"], (2, len(LABELS)))
    rows = [
        {
            "probabilities": probabilities[i].tolist(),
            "class_index": outputs["class_index"]["data"][i],
            "label": outputs["label"]["data"][i],
            "score": outputs["score"]["data"][i],
        }
        for i in range(2)
    ]
    _check_predictions(rows, 2)
    _, v1 = _http(_predict_url(server_url), {"instances": [{"b64": _b64(i)} for i in images]})
    _same_predictions(rows, v1["predictions"])

    # Requested outputs only.
    status, body = _http(
        f"{server_url}/v2/models/{MODEL_NAME}/infer", {**request, "outputs": [{"name": "label"}]}
    )
    assert status == 200, body
    assert [output["name"] for output in body["outputs"]] == ["label"]


def test_kserve_v2_model_metadata(server_url):
    status, body = _http(f"{server_url}/v2/models/{MODEL_NAME}")
    assert status == 200, body
    assert body["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["probabilities"] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [-1, len(LABELS)],
    }
    assert outputs["label"]["datatype"] == "BYTES"


# --- bad requests -------------------------------------------------------------------------

_IMAGE = {"b64": _b64(_NOISE)}

BAD_REQUESTS = {
    "malformed JSON": (b'{"instances": [', "request format"),
    "not an object": ([{"b64": "x"}], "JSON object"),
    "neither instances nor inputs": ({"signature_name": "serving_default"}, "neither"),
    "both instances and inputs": ({"instances": [_IMAGE], "inputs": [_IMAGE]}, "not both"),
    "unknown key": ({"instances": [_IMAGE], "params": {}}, "unexpected keys"),
    "parameters": ({"instances": [_IMAGE], "parameters": {"top_k": 2}}, 'no "parameters"'),
    "empty instances": ({"instances": []}, "non-empty"),
    "instances not a list": ({"instances": _IMAGE}, "non-empty list"),
    "instance not b64": ({"instances": ["just a string"]}, "b64"),
    "instance a nested list": ({"instances": [[_IMAGE]]}, "got a JSON list"),
    "b64 not a string": ({"instances": [{"b64": 12}]}, '"b64" must be a base64 string'),
    "b64 with other keys": ({"instances": [{"b64": _IMAGE["b64"], "x": 1}]}, "expected"),
    "wrong input name in an instance": (
        {"instances": [{"image_bytes": _IMAGE, "extra": 1}]},
        "unexpected inputs ['extra']",
    ),
    "wrong input name in inputs": ({"inputs": {"images": [_IMAGE]}}, "takes only"),
    "inputs a single value": ({"inputs": _IMAGE}, "takes only"),
    "inputs not a list": ({"inputs": {"image_bytes": _IMAGE}}, "non-empty list"),
    "a URI under another key": ({"instances": [{"uri": "gs://b/a.jpg"}]}, '{"filenames": '),
    "filenames not a string": ({"instances": [{"filenames": 3}]}, "one file's path"),
    "a relative path": ({"instances": [{"filenames": "a.jpg"}]}, "not an absolute path"),
    "an http URL": ({"instances": [{"image_uri": "http://x/a.jpg"}]}, "http:// is not read"),
    "bad base64": ({"instances": [{"b64": "@@not base64@@"}]}, "base64"),
    "empty image": ({"instances": [{"b64": ""}]}, "empty"),
    "not an image": ({"instances": [{"b64": _b64(b"plain text, not a JPEG")}]}, "not an image"),
    "not an image, columnar": ({"inputs": [{"b64": _b64(b"text")}]}, "instance 0: not an image"),
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
        {"instances": [_IMAGE], "signature_name": "predict_uris"},
        "signature_name",
    ),
}


def _check_error(status: int, response: dict, expected_status: int, message: str) -> None:
    assert status == expected_status, response
    assert set(response) == {"error"} and isinstance(response["error"], str), response
    assert message in response["error"]
    assert "Traceback" not in response["error"]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_400_with_a_json_error(server_url, case):
    body, message = BAD_REQUESTS[case]
    _check_error(*_http(_predict_url(server_url), body), 400, message)


def test_malformed_json_without_a_json_content_type_gets_400(server_url):
    status, response = _http(_predict_url(server_url), b'{"instances": [', "text/plain")
    _check_error(status, response, 400, "not JSON")


def _v2(**fields) -> dict:
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [_b64(_NOISE)]}
    return {"inputs": [{**tensor, **fields}]}


BAD_V2_REQUESTS = {
    "malformed JSON": (b'{"inputs": [', "invalid request"),
    "missing fields": ({"inputs": [{"name": "image_bytes"}]}, "Field required"),
    "wrong input name": (_v2(name="images"), "one input named 'image_bytes'"),
    "two inputs": ({"inputs": _v2()["inputs"] * 2}, "one input named"),
    "wrong datatype": (_v2(datatype="FP32", data=[1.0]), "datatype BYTES"),
    "shape mismatch": (_v2(shape=[2]), "does not match"),
    "not strings": (_v2(data=[1]), "base64 strings"),
    "bad base64": (_v2(data=["@@"]), "invalid base64"),
    "not an image": (_v2(data=[_b64(b"text")]), "not an image"),
    "unknown output": ({**_v2(), "outputs": [{"name": "logits"}]}, "logits"),
}


@pytest.mark.parametrize("case", BAD_V2_REQUESTS, ids=list(BAD_V2_REQUESTS))
def test_bad_v2_requests_get_400_with_a_json_error(server_url, case):
    body, message = BAD_V2_REQUESTS[case]
    url = f"{server_url}/v2/models/{MODEL_NAME}/infer"
    _check_error(*_http(url, body), 400, message)


def _binary_v2(header: dict, tail: bytes, length: int | None = None) -> tuple[bytes, dict]:
    data = json.dumps(header).encode()
    return data + tail, {"Inference-Header-Content-Length": str(length or len(data))}


def _elements(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


BAD_BINARY_V2 = {
    "no JSON at all": ((b"\x00\x01binary", {}), "JSON is invalid"),
    "header length past the body": (
        (b"{}", {"Inference-Header-Content-Length": "99"}),
        "not a length within",
    ),
    "binary size past the body": (
        _binary_v2(
            {"inputs": [{**_v2()["inputs"][0], "parameters": {"binary_data_size": 999}}]}, b"x"
        ),
        "runs past",
    ),
    "an input without data": (
        _binary_v2(
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1]}]},
            b"extra",
        ),
        "neither data nor binary_data_size",
    ),
    "bytes after the tensors": (
        _binary_v2(
            {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4 + len(_NOISE)},
                    }
                ]
            },
            _elements(_NOISE) + b"extra",
        ),
        "5 bytes follow the last binary tensor",
    ),
    "element length past its tensor": (
        _binary_v2(
            {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            (500).to_bytes(4, "little") + b"abcd",
        ),
        "not BYTES elements",
    ),
    "binary tensor not an image": (
        _binary_v2(
            {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            _elements(b"text"),
        ),
        "not an image",
    ),
}


@pytest.mark.parametrize("case", BAD_BINARY_V2, ids=list(BAD_BINARY_V2))
def test_bad_binary_v2_requests_get_400(server_url, case):
    (body, headers), message = BAD_BINARY_V2[case]
    request = urllib.request.Request(
        f"{server_url}/v2/models/{MODEL_NAME}/infer",
        data=body,
        headers={"Content-Type": "application/octet-stream", **headers},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=WAIT_S)
    _check_error(error.value.code, json.loads(error.value.read()), 400, message)


def test_unknown_model_route_and_method_get_json_errors(server_url):
    _check_error(
        *_http(f"{server_url}/v1/models/unknown:predict", {"instances": [_IMAGE]}), 404, "unknown"
    )
    _check_error(*_http(f"{server_url}/v1/models/unknown"), 404, "unknown")
    _check_error(*_http(f"{server_url}/no/such/route"), 404, "Not Found")
    _check_error(*_http(f"{server_url}/v2/models/{MODEL_NAME}/infer"), 405, "Method Not Allowed")


def test_an_oversized_body_is_refused_from_its_content_length(server):
    server_url, port, _, _ = server
    # Only the headers are sent: the answer comes without the body being read.
    head = (
        f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    status, answer = _raw_http(port, head.encode())
    _check_error(status, answer["json"], 413, f"limit of {MAX_BODY_BYTES} bytes")
    # Clients that send the whole body before they read get the 413 too, those that keep
    # the connection (raw HTTP/1.1 here) and those that close it (urllib) alike: more
    # than the socket buffers hold, so that the body is still arriving when answered.
    big = json.dumps({"instances": [{"b64": "A" * 8_000_000}]}).encode()
    head = head.replace(str(MAX_BODY_BYTES + 1), str(len(big)))
    status, answer = _raw_http(port, head.encode(), (big,))
    _check_error(status, answer["json"], 413, f"is {len(big)} bytes")
    _check_error(*_http(_predict_url(server_url), big), 413, f"is {len(big)} bytes")


def test_an_oversized_chunked_body_is_refused_while_read(server):
    server_url, port, _, _ = server
    # Valid JSON, one image too many bytes: refused by size, not parsed.
    big = json.dumps({"instances": [{"b64": "A" * MAX_BODY_BYTES}]}).encode()
    chunks = tuple(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (big[i : i + 32_768] for i in range(0, len(big), 32_768))
    )
    head = (
        f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, answer = _raw_http(port, head.encode(), (*chunks, b"0\r\n\r\n"))
    _check_error(status, answer["json"], 413, f"limit of {MAX_BODY_BYTES} bytes")
    # A chunked body under the limit is served.
    small = json.dumps({"instances": [_IMAGE]}).encode()
    status, answer = _raw_http(
        port, head.encode(), (b"%x\r\n%s\r\n" % (len(small), small), b"0\r\n\r\n")
    )
    assert status == 200, answer
    _check_predictions(answer["json"]["predictions"], 1)
    # So is an ordinary request afterwards.
    status, body = _http(_predict_url(server_url), {"instances": [_IMAGE]})
    assert status == 200, body


# --- the clients people already use ------------------------------------------------------


def _rows_of(labels, probabilities) -> list[dict]:
    return [
        {
            "label": label.decode() if isinstance(label, bytes) else label,
            "class_index": LABELS.index(label.decode() if isinstance(label, bytes) else label),
            "probabilities": np.asarray(p).tolist(),
        }
        for label, p in zip(labels, probabilities, strict=True)
    ]


_CLIENT_IMAGES = [_jpeg(seed=21, noise=True), _jpeg(seed=22), _encoded("PNG")]


@pytest.fixture(scope="module")
def rest_answer(server) -> list[dict]:
    """The REST (TF Serving row format) predictions of ``_CLIENT_IMAGES``: what every
    other protocol must answer too."""
    body = {"instances": [{"b64": _b64(image)} for image in _CLIENT_IMAGES]}
    status, response = _http(_predict_url(server[0]), body)
    assert status == 200, response
    _check_predictions(response["predictions"], len(_CLIENT_IMAGES))
    return response["predictions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_with_binary_and_json_tensors(server, rest_answer, binary):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    tensor = httpclient.InferInput("image_bytes", [len(_CLIENT_IMAGES)], "BYTES")
    if binary:  # the client's defaults: raw image bytes in, binary outputs back
        tensor.set_data_from_numpy(np.array(_CLIENT_IMAGES, dtype=np.object_))
        outputs = None
    else:  # pure JSON, which it sends without a JSON content type
        images = [_b64(image).encode() for image in _CLIENT_IMAGES]
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=False)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=False)
            for name in ("label", "probabilities")
        ]
    result = client.infer(MODEL_NAME, [tensor], outputs=outputs)
    _same_predictions(
        _rows_of(result.as_numpy("label"), result.as_numpy("probabilities")), rest_answer
    )
    client.close()


# Triton's gRPC client runs in its own process: its protos and KServe's define the same
# messages (package inference), which one process's protobuf pool refuses to hold twice.
TRITON_GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

target, model, *paths = sys.argv[1:]
client = grpcclient.InferenceServerClient(target)
answer = {"live": client.is_server_live(), "ready": client.is_model_ready(model)}
answer["inputs"] = [t.name for t in client.get_model_metadata(model).inputs]

def infer(images, name=model):
    tensor = grpcclient.InferInput("image_bytes", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    try:
        result = client.infer(name, [tensor])
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return {
        "label": [label.decode() for label in result.as_numpy("label")],
        "probabilities": result.as_numpy("probabilities").tolist(),
        "version": result.get_response().model_version,
    }

images = [open(path, "rb").read() for path in paths]
answer["good"] = infer(images)
answer["bad"] = infer([b"not an image"])
answer["other_model"] = infer(images, "no-such-model")
tensor = grpcclient.InferInput("image_bytes", [1], "BYTES")
tensor.set_data_from_numpy(np.array(images[:1], dtype=np.object_))
result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("label")])
answer["label_only"] = [output.name for output in result.get_response().outputs]
try:
    client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("logits")])
except InferenceServerException as e:
    answer["unknown_output"] = {"status": e.status(), "message": e.message()}
print(json.dumps(answer))
"""


def test_tritonclient_grpc_v2(grpc_target, rest_answer, tmp_path):
    paths = []
    for i, image in enumerate(_CLIENT_IMAGES):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(image)
    run = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_CLIENT, grpc_target, MODEL_NAME, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert (answer["live"], answer["ready"], answer["inputs"]) == (True, True, ["image_bytes"])
    good = answer["good"]
    _same_predictions(_rows_of(good["label"], good["probabilities"]), rest_answer)
    assert good["version"] == "1"
    assert answer["bad"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "instance 0: not an image" in answer["bad"]["message"]
    assert answer["other_model"]["status"] == "StatusCode.NOT_FOUND"
    assert answer["label_only"] == ["label"]  # only the outputs asked for
    assert answer["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown outputs ['logits']" in answer["unknown_output"]["message"]


def _tf_serving_request(images: list[bytes], name: str = MODEL_NAME, **spec):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_tensorflow_serving_api_predict_and_metadata(grpc_target, rest_answer):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        prediction_service_pb2_grpc,
    )

    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(
            _tf_serving_request(_CLIENT_IMAGES, signature_name="serving_default"), timeout=WAIT_S
        )
        assert response.model_spec.name == MODEL_NAME
        assert response.model_spec.version.value == 1
        got = _rows_of(
            tf.make_ndarray(response.outputs["label"]),
            tf.make_ndarray(response.outputs["probabilities"]),
        )
        _same_predictions(got, rest_answer)

        request = _tf_serving_request(_CLIENT_IMAGES[:1])
        request.output_filter.append("label")
        assert list(stub.Predict(request, timeout=WAIT_S).outputs) == ["label"]

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = MODEL_NAME
        metadata_request.metadata_field.append("signature_def")
        metadata = stub.GetModelMetadata(metadata_request, timeout=WAIT_S)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert list(signature.inputs) == ["image_bytes"]
        assert {"label", "probabilities"} <= set(signature.outputs)

        errors = {
            "INVALID_ARGUMENT": [
                _tf_serving_request([b"plain text"]),
                _tf_serving_request(_CLIENT_IMAGES[:1], signature_name="predict_uris"),
                _tf_serving_request([_CLIENT_IMAGES[0]] * 65),
            ],
            "NOT_FOUND": [_tf_serving_request(_CLIENT_IMAGES[:1], name="other")],
            # Past the 200 kB body bound: gRPC's own message size check.
            "RESOURCE_EXHAUSTED": [_tf_serving_request([_NOISE + b"\0" * MAX_BODY_BYTES])],
        }
        for code, requests in errors.items():
            for request in requests:
                with pytest.raises(grpc.RpcError) as error:
                    stub.Predict(request, timeout=WAIT_S)
                assert error.value.code().name == code, error.value.details()
        with pytest.raises(grpc.RpcError) as error:  # the export has no classify signature
            stub.Classify(classification_pb2.ClassificationRequest(), timeout=WAIT_S)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sagemaker_and_vertex_routes(server_url, rest_answer):
    body = {"instances": [{"b64": _b64(image)} for image in _CLIENT_IMAGES]}
    for route in ("/invocations", VERTEX_PREDICT_ROUTE):
        status, response = _http(server_url + route, body)
        assert status == 200, response
        _same_predictions(response["predictions"], rest_answer)
    # Vertex AI sends its request's parameters along: none are needed.
    status, response = _http(server_url + VERTEX_PREDICT_ROUTE, {**body, "parameters": {}})
    assert status == 200, response
    for route in ("/ping", VERTEX_HEALTH_ROUTE):
        assert _http(server_url + route) == (200, {"status": "healthy"})


def _open_for_writing(fifo) -> bool:
    """Whether a reader has the FIFO open (a non-blocking writer can open it then)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def test_filenames_are_read_only_under_the_allowed_prefix(server_url, files):
    allowed = files / "allowed"
    image = (allowed / "a.jpg").read_bytes()
    _, inline = _http(_predict_url(server_url), {"instances": [{"b64": _b64(image)}] * 2})
    for body in (
        {"instances": [{"filenames": str(allowed / "a.jpg")}, {"b64": _b64(image)}]},
        {"instances": [{"image_uri": str(allowed / "a.jpg")}] * 2},
        {"inputs": {"filenames": [str(allowed / "a.jpg"), "file://" + str(allowed / "a.jpg")]}},
        {"instances": [{"filenames": str(allowed / "sub" / ".." / "a.jpg")}] * 2},
    ):
        status, response = _http(_predict_url(server_url), body)
        assert status == 200, (body, response)
        if "outputs" in response:  # columnar
            got = _rows_of(response["outputs"]["label"], response["outputs"]["probabilities"])
        else:
            got = response["predictions"]
        _same_predictions(got, inline["predictions"])

    refused = [
        files / "outside" / "a.jpg",
        allowed / ".." / "outside" / "a.jpg",
        files / "allowed-not" / "a.jpg",
        allowed / "link.jpg",  # a symbolic link out of the prefix
        allowed / "pipe.jpg",  # one to a FIFO: opening it would hang
        files / "outside" / "pipe.jpg",
    ]
    for path in refused:
        status, response = _http(
            _predict_url(server_url), {"instances": [{"filenames": str(path)}]}
        )
        _check_error(status, response, 403, "not under a prefix this server allows")
    assert not _open_for_writing(files / "outside" / "pipe.jpg"), "the server opened the FIFO"

    for name, message in {"missing.jpg": "no such file", "text.jpg": "not an image"}.items():
        status, response = _http(
            _predict_url(server_url), {"instances": [{"filenames": str(allowed / name)}]}
        )
        _check_error(status, response, 400, message)


def test_a_server_without_allowed_prefixes_reads_no_files(tmp_path):
    from components.deploy.server.protocol import InvalidInput
    from components.deploy.server.uris import ForbiddenUri, UriReader

    image = tmp_path / "a.jpg"
    image.write_bytes(_jpeg())
    with pytest.raises(ForbiddenUri, match="--allow-uri-prefix PREFIX"):
        UriReader().read(str(image), 0, 1000)
    reader = UriReader([str(tmp_path), "gs://bucket/images/"])
    assert reader.read(str(image), 0, 10_000) == image.read_bytes()
    with pytest.raises(InvalidInput, match="more than the limit of 100 bytes"):
        reader.read(str(image), 0, 100)
    assert reader.resolve("gs://bucket/images/a.jpg", 0) == "gs://bucket/images/a.jpg"
    for uri in ("gs://bucket/images/../secret/a.jpg", "gs://bucket/images2/a.jpg", "gs://other/a"):
        with pytest.raises(ForbiddenUri):
            reader.resolve(uri, 0)
    for prefix in ("relative/dir", "gs://", "s3://bucket/x"):
        with pytest.raises(ValueError):
            UriReader([prefix])


def test_the_vertex_custom_container_contract_from_its_variables(exported_model, tmp_path):
    """Started as Vertex AI starts the deploy image: the model, port and routes come from
    the AIP_* variables alone."""
    port = local.free_port()
    env = {
        **os.environ,
        "AIP_STORAGE_URI": exported_model,
        "AIP_HTTP_PORT": str(port),
        "AIP_PREDICT_ROUTE": VERTEX_PREDICT_ROUTE,
        "AIP_HEALTH_ROUTE": VERTEX_HEALTH_ROUTE,
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
        _poll(lambda: _status(url + VERTEX_HEALTH_ROUTE) == 200, "the health route")
        body = {"instances": [{"b64": _b64(_jpeg(seed=5))}], "parameters": {}}
        status, response = _http(url + VERTEX_PREDICT_ROUTE, body)
        assert status == 200, response
        _check_predictions(response["predictions"], 1)
    finally:
        code = local.stop_server(process, timeout_s=WAIT_S)
    assert code == 0, log_path.read_text()


def test_a_grpc_burst_past_the_shared_inflight_bound_gets_unavailable(server, grpc_target):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server_url, _, hold_dir, _ = server
    entered = _entered(hold_dir)
    hold = hold_dir / "predict.hold"
    hold.touch()
    try:
        with grpc.insecure_channel(grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            calls = [
                stub.Predict.future(_tf_serving_request([_jpeg(seed=40 + i)]), timeout=WAIT_S)
                for i in range(10)
            ]
            rejected = len(calls) - MAX_INFLIGHT
            _poll(lambda: sum(c.done() for c in calls) >= rejected, "the refusals")
            _poll(lambda: _entered(hold_dir) > entered, "a call to reach the model")
            done = [c for c in calls if c.done()]
            assert len(done) == rejected
            for call in done:
                assert call.code() == grpc.StatusCode.UNAVAILABLE
                assert "busy" in call.details()
            # REST and gRPC share the bound: a REST predict is refused now too.
            status, response = _http(_predict_url(server_url), {"instances": [_IMAGE]})
            _check_error(status, response, 503, "busy")
            hold.unlink()
            for call in calls:
                if call not in done:
                    assert call.result(timeout=WAIT_S).outputs["label"].string_val
    finally:
        hold.unlink(missing_ok=True)


# --- health, load, overload ---------------------------------------------------------------


def test_liveness_and_readiness_routes(server_url):
    assert _http(f"{server_url}/") == (200, {"status": "alive"})
    assert _http(f"{server_url}/v2/health/live") == (200, {"live": True})
    assert _http(f"{server_url}/v2/health/ready") == (200, {"ready": True})
    # KServe v1's readiness, with TF Serving's model status beside it.
    assert _http(f"{server_url}/v1/models/{MODEL_NAME}") == (
        200,
        {
            "name": MODEL_NAME,
            "ready": True,
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ],
        },
    )
    assert _http(f"{server_url}/v2/models/{MODEL_NAME}/ready") == (
        200,
        {"name": MODEL_NAME, "ready": True},
    )


def test_listens_on_loopback_only(server):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp")
    assert _listen_addresses(server[1]) == {"127.0.0.1"}
    assert _listen_addresses(server[3]) == {"127.0.0.1"}  # gRPC too


def test_a_burst_past_the_inflight_bound_gets_503_then_the_server_serves(server):
    server_url, _, hold_dir, _ = server
    # Distinct requests (1 to 10 images each), so that each admitted one must get its rows.
    bodies = [
        {"instances": [{"b64": _b64(_jpeg(seed=10 * n + i, noise=True))} for i in range(n)]}
        for n in range(1, 11)
    ]
    hold = hold_dir / "predict.hold"
    hold.touch()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            futures = [pool.submit(_http_full, _predict_url(server_url), b) for b in bodies]
            # The admitted requests wait in the model while it is held; all others are
            # refused at once, so exactly len - MAX_INFLIGHT answers come back.
            rejected = len(bodies) - MAX_INFLIGHT
            _poll(lambda: sum(f.done() for f in futures) >= rejected, "the refusals")
            _poll(lambda: _entered(hold_dir) >= 1, "a request to reach the model")
            done = [f for f in futures if f.done()]
            assert len(done) == rejected
            for future in done:
                status, headers, response = future.result()
                _check_error(status, response, 503, "busy")
                assert headers["Retry-After"] == "1"
            # Busy is not dead, nor unready: probes do not count against the bound.
            assert _http(f"{server_url}/v2/health/live") == (200, {"live": True})
            assert _http(f"{server_url}/v2/health/ready") == (200, {"ready": True})
            hold.unlink()
            answers = {i: f.result(timeout=WAIT_S) for i, f in enumerate(futures) if f not in done}
    finally:
        hold.unlink(missing_ok=True)
    assert len(answers) == MAX_INFLIGHT
    for i, (status, _, response) in answers.items():
        assert status == 200, response
        # Each caller gets its own rows, as if it had been alone.
        _, alone = _http(_predict_url(server_url), bodies[i])
        _same_predictions(response["predictions"], alone["predictions"])
    status, response = _http(_predict_url(server_url), bodies[0])
    assert status == 200, response
    metrics = urllib.request.urlopen(f"{server_url}/metrics", timeout=WAIT_S).read().decode()
    assert 'image_classifier_rejected_requests_total{reason="overloaded"}' in metrics


def test_the_server_reports_a_model_that_fails_to_load(tmp_path):
    repo = tmp_path / "repo"
    (repo / MODEL_NAME / "1").mkdir(parents=True)
    (repo / MODEL_NAME / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    log_path = tmp_path / "server.log"
    port = local.free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            local.server_command(str(repo), MODEL_NAME, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        with pytest.raises(local.DeployError, match="(?s)exited with code 1.*failed to load"):
            local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, str(log_path))
    finally:
        local.stop_server(process, timeout_s=30)


def test_loading_draining_and_graceful_sigterm(served_repo, tmp_path):
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    (hold_dir / "load.hold").touch()
    port = local.free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start_held_server(
        served_repo,
        port,
        hold_dir,
        tmp_path / "server.log",
        ServerLimits(batch_max_size=0, shutdown_delay_s=300, grace_period_s=300),
    )
    request = {"instances": [{"b64": _b64(_jpeg(seed=5, noise=True))}]}
    results: dict[str, tuple] = {}

    def predict(key: str) -> None:
        results[key] = _http_full(_predict_url(base), request)

    threads = []
    try:
        # While the model loads: alive, not ready, predictions refused with 503.
        _poll(lambda: _status(f"{base}/v2/health/live") == 200, "liveness")
        assert process.poll() is None
        _check_error(*_http(f"{base}/v2/health/ready"), 503, "not ready")
        _check_error(*_http(f"{base}/v1/models/{MODEL_NAME}"), 503, "not ready")
        _check_error(*_http(_predict_url(base), request), 503, "not ready")
        (hold_dir / "load.hold").unlink()
        local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, str(tmp_path / "server.log"))

        # A request in flight (held in the model) when SIGTERM comes.
        (hold_dir / "predict.hold").touch()
        threads.append(threading.Thread(target=predict, args=("first",)))
        threads[-1].start()
        _poll(lambda: _entered(hold_dir) == 1, "the first request to reach the model")
        assert _http(f"{base}/v2/health/live") == (200, {"live": True})  # busy, alive

        # Draining: not ready, alive, and still serving (a request that comes now too).
        process.send_signal(signal.SIGTERM)
        _poll(lambda: _status(f"{base}/v2/health/ready") == 503, "readiness to turn off")
        _check_error(*_http(f"{base}/v1/models/{MODEL_NAME}"), 503, "not ready")
        assert _http(f"{base}/v2/health/live") == (200, {"live": True})
        threads.append(threading.Thread(target=predict, args=("while draining",)))
        threads[-1].start()
        _poll(lambda: _entered(hold_dir) == 2, "the second request to reach the model")

        # A second signal ends the delay: no new connections, the two in flight finish.
        process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False

        _poll(refused, "the server to stop accepting connections")
        assert process.poll() is None, "the server exited with requests in flight"
        (hold_dir / "predict.hold").unlink()
        for thread in threads:
            thread.join(WAIT_S)
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        (hold_dir / "predict.hold").unlink(missing_ok=True)
        local.stop_server(process, timeout_s=30)
    for key in ("first", "while draining"):
        status, _, response = results[key]
        assert status == 200, (key, response)
        _check_predictions(response["predictions"], 1)


# --- the batcher and the CLI, in process -----------------------------------------------


def _echo_model(calls: list, gate: threading.Event | None = None):
    """A model call that records its batches and answers each image with its own bytes."""

    def run(images: list[bytes]) -> dict[str, np.ndarray]:
        calls.append(list(images))
        if gate is not None:
            assert gate.wait(WAIT_S)
        if any(image.startswith(b"bad") for image in images):
            from kserve.errors import InvalidInput

            raise InvalidInput("an image does not decode")
        return {"echo": np.array(images, dtype=object), "size": np.array([len(i) for i in images])}

    return run


def test_batcher_runs_concurrent_requests_together_and_hands_each_its_rows():
    from components.deploy.server.batching import Batcher

    calls: list = []
    gate = threading.Event()

    async def scenario():
        batcher = Batcher(_echo_model(calls, gate), max_size=5)
        first = asyncio.create_task(batcher.predict([b"a0"]))
        await asyncio.to_thread(_poll, lambda: len(calls) == 1, "the first call")
        # While the first call runs, three requests queue: 2 + 2 images fit in one call
        # of 5, the third (3 images) would not, so it makes the call after.
        others = [
            asyncio.create_task(batcher.predict(images))
            for images in ([b"b0", b"b1"], [b"c0", b"c1"], [b"d0", b"d1", b"d2"])
        ]
        while batcher.queued < 3:
            await asyncio.sleep(0.01)
        gate.set()
        return await first, await asyncio.gather(*others)

    first, others = asyncio.run(scenario())
    assert calls == [[b"a0"], [b"b0", b"b1", b"c0", b"c1"], [b"d0", b"d1", b"d2"]]
    assert first["echo"].tolist() == [b"a0"]
    assert [o["echo"].tolist() for o in others] == [
        [b"b0", b"b1"],
        [b"c0", b"c1"],
        [b"d0", b"d1", b"d2"],
    ]
    assert others[2]["size"].tolist() == [2, 2, 2]


def test_batcher_never_splits_a_request_and_waits_up_to_its_timeout_for_more():
    from components.deploy.server.batching import Batcher

    calls: list = []

    async def scenario():
        # A long timeout: the first request waits for company, and the batch closes as
        # soon as it is full (it never waits out the timeout here).
        batcher = Batcher(_echo_model(calls), max_size=3, timeout_s=WAIT_S)
        a = asyncio.create_task(batcher.predict([b"a0"]))
        await asyncio.sleep(0.05)
        b = asyncio.create_task(batcher.predict([b"b0", b"b1"]))
        results = await asyncio.gather(a, b)
        big = await Batcher(_echo_model(calls), max_size=2).predict([b"x0", b"x1", b"x2"])
        return results, big

    (a, b), big = asyncio.run(scenario())
    assert calls == [[b"a0", b"b0", b"b1"], [b"x0", b"x1", b"x2"]]
    assert a["echo"].tolist() == [b"a0"] and b["echo"].tolist() == [b"b0", b"b1"]
    assert big["echo"].tolist() == [b"x0", b"x1", b"x2"]


def test_batcher_fails_only_the_request_with_a_bad_image():
    from kserve.errors import InvalidInput

    from components.deploy.server.batching import Batcher

    calls: list = []
    gate = threading.Event()

    async def scenario():
        batcher = Batcher(_echo_model(calls, gate), max_size=8)
        first = asyncio.create_task(batcher.predict([b"a0"]))
        await asyncio.to_thread(_poll, lambda: len(calls) == 1, "the first call")
        good = asyncio.create_task(batcher.predict([b"g0"]))
        bad = asyncio.create_task(batcher.predict([b"bad0"]))
        while batcher.queued < 2:
            await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(first, good, bad, return_exceptions=True)

    first, good, bad = asyncio.run(scenario())
    assert first["echo"].tolist() == [b"a0"]
    assert good["echo"].tolist() == [b"g0"]
    assert isinstance(bad, InvalidInput) and "does not decode" in str(bad)


def test_a_closed_batcher_answers_what_was_queued_then_ends():
    from components.deploy.server.batching import Batcher

    calls: list = []
    gate = threading.Event()

    async def scenario():
        batcher = Batcher(_echo_model(calls, gate), max_size=1)
        first = asyncio.create_task(batcher.predict([b"a0"]))
        await asyncio.to_thread(_poll, lambda: len(calls) == 1, "the first call")
        queued = asyncio.create_task(batcher.predict([b"b0"]))
        while batcher.queued < 1:
            await asyncio.sleep(0.01)
        batcher.close()  # a version no longer served: what was queued is still answered
        worker = batcher._worker
        gate.set()
        answers = await asyncio.gather(first, queued)
        await asyncio.wait_for(worker, WAIT_S)  # then its worker ends
        return answers, await batcher.predict([b"c0"])  # and a later request starts one

    (first, queued), later = asyncio.run(scenario())
    assert calls == [[b"a0"], [b"b0"], [b"c0"]]
    assert [first["echo"].tolist(), queued["echo"].tolist()] == [[b"a0"], [b"b0"]]
    assert later["echo"].tolist() == [b"c0"]


def test_cli_defaults_and_options():
    from components.deploy.server.__main__ import parse_args

    args = parse_args(["--model-repository", "r", "--model-name", "m"], environ={})
    assert (args.host, args.http_port, args.model_version) == ("127.0.0.1", 8080, None)
    assert (args.grpc_port, args.allow_uri_prefix, args.model_dir) == (8081, [], None)
    assert (args.predict_routes, args.health_routes) == (("/invocations",), ("/ping",))
    vertex = {
        "AIP_STORAGE_URI": "gs://b/model",
        "AIP_HTTP_PORT": "7080",
        "AIP_PREDICT_ROUTE": "/p",
        "AIP_HEALTH_ROUTE": "/h",
    }
    args = parse_args(["--grpc-port", "0"], environ=vertex)
    assert (args.model_dir, args.model_name, args.http_port) == (
        "gs://b/model",
        "image-classifier",
        7080,
    )
    assert (args.predict_routes, args.health_routes) == (("/invocations", "/p"), ("/ping", "/h"))
    with pytest.raises(SystemExit):  # a repository needs the model's name
        parse_args(["--model-repository", "r"], environ={})
    with pytest.raises(SystemExit):  # and nothing to serve is an error
        parse_args([], environ={})
    assert (args.max_instances, args.max_body_bytes, args.max_inflight) == (64, 16 << 20, 32)
    assert (args.batch_max_size, args.batch_timeout_ms) == (32, 0.0)
    assert (args.shutdown_delay_s, args.grace_period_s) == (0.0, 10)
    assert args.file_system_poll_wait_seconds == 30.0
    assert ServerLimits.from_args(args) == ServerLimits()
    # The per-request limit has one name: --max-batch-size, its old alias, sat beside
    # --batch-max-size (the server-side batching size) and is gone.
    with pytest.raises(SystemExit):
        parse_args(["--model-repository", "r", "--model-name", "m", "--max-batch-size", "8"])
    with pytest.raises(SystemExit):
        parse_args(["--model-repository", "r", "--model-name", "m", "--max-inflight", "-1"])

    limits = ServerLimits(
        max_instances=8, max_inflight=3, batch_max_size=0, file_system_poll_wait_seconds=0.5
    )
    command = local.server_command("r", "m", 9000, limits=limits)
    options = parse_args(command[3:])
    assert (options.max_inflight, options.batch_max_size, options.http_port) == (3, 0, 9000)
    assert options.file_system_poll_wait_seconds == 0.5
    assert ServerLimits.from_args(options) == limits
    assert "--shutdown-delay-s" not in command  # default limits keep the server's defaults
