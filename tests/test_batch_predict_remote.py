"""Tests of remote batch prediction: batch_predict calling a deployed model
(``components.common.remote_handler``) instead of loading it in the Beam workers.

The module starts the local model server once (``python -m components.deploy.server``, as
deploy does) on a small colour-probe model, and a fault-injecting HTTP proxy in front of it
when a test needs the server to be unavailable for a while. Retries use Beam's backoff (the
first wait is 2.5-5 s, not configurable in Beam 2.77), so the fault tests keep the number
of failed requests small. The Vertex AI handler is tested against a fake endpoint: there
is no cloud here.
"""

from __future__ import annotations

import base64
import csv
import glob
import http.server
import io as bytes_io
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from components.batch_predict import beam_pipeline
from components.batch_predict.__main__ import parse_args
from components.common import io, labels as labels_lib, remote_handler
from components.common.model_handler import InferenceFailure
from components.deploy import local
from components.deploy.model_repository import publish
from pipelines.sample_data import CLASSES

LABELS = list(CLASSES)
MODEL_NAME = "shapes"
WAIT_S = 120.0
RUNNER = "FnApiRunner"  # in this process, no Prism download


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> str:
    """An exported SavedModel whose probabilities depend on each image's mean colour (the
    untrained ``exported_model`` gives every image about the same answer, so equal labels
    would prove little). Built by the export code (``build_archive``)."""
    import keras

    from components.export.saved_model import build_archive

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    dense = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")
    model = keras.Model(inputs, dense(x))
    kernel = np.random.default_rng(2).normal(0, 8, (3, len(LABELS)))
    dense.set_weights([kernel, -0.5 * kernel.sum(axis=0)])
    export_dir = str(tmp_path_factory.mktemp("probe") / "export")
    build_archive(model, LABELS, 32).write_out(export_dir, verbose=False)
    labels_lib.write_labels(os.path.join(export_dir, "assets.extra", "labels.txt"), LABELS)
    return export_dir


@pytest.fixture(scope="module")
def model_url(probe_model, tmp_path_factory):
    """The local model server on the probe model: yields its model URL
    (``http://127.0.0.1:<port>/v1/models/shapes``)."""
    repo = str(tmp_path_factory.mktemp("served") / "repo")
    publish(probe_model, repo, MODEL_NAME)
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
        local.wait_until_ready(process, MODEL_NAME, port, WAIT_S, log_path)
        yield f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}"
    finally:
        local.stop_server(process)


class FaultProxy:
    """An HTTP proxy in a thread: answers 503 (with ``Retry-After: 1``, as the server does
    when overloaded) to the first ``fail_first`` predict requests, or to all of them
    with ``fail_first=-1``, and forwards the others to the server of ``model_url``.

    With ``max_body_bytes``, it answers a body over it 413, with the server's message for
    its ``--max-body-bytes``. With ``garble``, the first ``garble_first`` 200 answers are
    ``garble(answer)`` instead, and ``garbled`` lists the images of their requests.
    """

    def __init__(
        self,
        model_url: str,
        fail_first: int = 0,
        max_body_bytes: int = 0,
        garble: Callable[[bytes], bytes] | None = None,
        garble_first: int = 1,
    ):
        self.upstream = model_url.split("/v1/", 1)[0]
        self.fail_first = fail_first
        self.answered = {"503": 0, "forwarded": 0}  # and "413" when one is
        self.garbled: list[list[bytes]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    fail = proxy.fail_first < 0 or proxy.answered["503"] < proxy.fail_first
                    too_large = not fail and 0 < max_body_bytes < len(body)
                    outcome = "503" if fail else "413" if too_large else "forwarded"
                    proxy.answered[outcome] = proxy.answered.get(outcome, 0) + 1
                if fail:
                    error = json.dumps({"error": "injected: the server is overloaded"})
                    headers = {"Content-Type": "application/json", "Retry-After": "1"}
                    self._answer(503, error.encode(), headers)
                    return
                if too_large:
                    error = json.dumps({"error": too_large_message(len(body), max_body_bytes)})
                    self._answer(413, error.encode(), {"Content-Type": "application/json"})
                    return
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as e:
                    status, answer = e.code, e.read()
                if status == 200 and garble is not None:
                    with proxy._lock:
                        garbling = len(proxy.garbled) < garble_first
                        if garbling:
                            sent = json.loads(body)["instances"]
                            proxy.garbled.append([base64.b64decode(i["b64"]) for i in sent])
                    if garbling:
                        answer = garble(answer)
                self._answer(status, answer, {"Content-Type": "application/json"})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def model_url(self, model_url: str) -> str:
        """``model_url`` with this proxy's host and port."""
        path = model_url.split("/", 3)[3]
        return f"http://127.0.0.1:{self.port}/{path}"


def too_large_message(length: int, limit: int) -> str:
    """The model server's message in its 413 for a body over ``--max-body-bytes``."""
    return f"the request body is {length} bytes, more than the limit of {limit} bytes"


def _read_output(output_dir: str) -> tuple[list[dict], list[dict], dict]:
    shards = sorted(glob.glob(os.path.join(output_dir, "predictions-*-of-*.jsonl")))
    rows = list(io.read_jsonl(shards))
    errors = list(io.read_jsonl(os.path.join(output_dir, "errors.jsonl")))
    return rows, errors, io.read_json(os.path.join(output_dir, "stats.json"))


def _good_rows(sample_data) -> list[tuple[str, str]]:
    with open(sample_data.csv_path, newline="") as f:
        return [(row[0], row[1]) for row in csv.reader(f) if row]


@pytest.fixture(scope="module")
def corrupt_image(tmp_path_factory) -> str:
    """A JPEG header over garbage: the server answers 400 for any batch holding it."""
    buffer = bytes_io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buffer, format="JPEG"
    )
    path = tmp_path_factory.mktemp("bad") / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return str(path)


@pytest.fixture(scope="module")
def listing(sample_data, corrupt_image, tmp_path_factory) -> str:
    """Every sample image (``uri,label``) and the corrupt one in the middle."""
    rows = _good_rows(sample_data)
    lines = [f"{uri},{label}" for uri, label in rows]
    lines.insert(len(lines) // 2, corrupt_image)
    path = tmp_path_factory.mktemp("listing") / "listing.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("labels") / "labels.txt")
    labels_lib.write_labels(path, LABELS)
    return path


@pytest.fixture(scope="module")
def in_worker_run(probe_model, listing, tmp_path_factory) -> dict:
    """The existing path: the SavedModel loaded in the Beam workers."""
    out = str(tmp_path_factory.mktemp("in_worker") / "out")
    summary = beam_pipeline.run(
        probe_model, out, input_uris=listing, batch_size=64, runner=RUNNER, max_error_fraction=0.5
    )
    rows, errors, stats = _read_output(out)
    return {"summary": summary, "rows": rows, "errors": errors, "stats": stats}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _by_uri(rows: list[dict]) -> dict[str, dict]:
    return {row["uri"]: row for row in rows}


def _same_predictions(rows: list[dict], expected: list[dict]) -> None:
    got, want = _by_uri(rows), _by_uri(expected)
    assert len(got) == len(rows) and set(got) == set(want)
    for uri, row in got.items():
        assert row["label"] == want[uri]["label"], uri
        assert row.get("true_label") == want[uri].get("true_label")
        np.testing.assert_allclose(row["probability"], want[uri]["probability"], atol=1e-5)
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in want[uri]["top_k"]]


# --------------------------------------------------------------------------- against a server


def test_remote_predictions_are_the_in_worker_ones_and_a_bad_image_loses_no_good_one(
    model_url, probe_model, listing, in_worker_run, corrupt_image, sample_data, tmp_path
):
    out = str(tmp_path / "out")
    # One batch holds every image: the server answers the batch 400 for the corrupt one,
    # and the images go again one by one.
    summary = beam_pipeline.run(
        probe_model,  # only its labels are read
        out,
        input_uris=listing,
        batch_size=64,
        runner=RUNNER,
        max_error_fraction=0.5,
        endpoint=model_url,
    )
    rows, errors, stats = _read_output(out)
    assert len(rows) == sample_data.count == len(in_worker_run["rows"])
    _same_predictions(rows, in_worker_run["rows"])
    assert len({row["label"] for row in rows}) > 1, "the probe model should vary its answers"

    assert [(e["uri"], e["reason"]) for e in errors] == [(corrupt_image, "undecodable_image")]
    assert [e["reason"] for e in in_worker_run["errors"]] == ["undecodable_image"]
    assert "does not decode" in errors[0]["detail"]  # the server's own message
    assert stats == in_worker_run["stats"]

    assert summary["endpoint"] == model_url
    assert summary["labels"] == LABELS
    assert summary["labels_source"].endswith(os.path.join("assets.extra", "labels.txt"))
    counters = summary["counters"]
    assert counters["fallback_images"] > 1, "the corrupt image should share a batch"
    assert counters["fallback_batches"] == 1  # only the batch with the corrupt image
    # One request per batch, and one per image of the rejected batch.
    assert counters["remote_requests"] > counters["fallback_images"]
    assert counters.get("remote_retries", 0) == 0 and counters.get("remote_failures", 0) == 0


def test_remote_prediction_survives_a_server_answering_503_for_a_while(
    model_url, labels_file, in_worker_run, sample_data, tmp_path
):
    listing = tmp_path / "good.csv"
    listing.write_text("".join(f"{uri},{label}\n" for uri, label in _good_rows(sample_data)))
    out = str(tmp_path / "out")
    with FaultProxy(model_url, fail_first=2) as proxy:
        summary = beam_pipeline.run(
            "",
            out,
            input_uris=str(listing),
            batch_size=16,
            runner=RUNNER,
            endpoint=proxy.model_url(model_url),
            labels_uri=labels_file,
            max_retries=3,
        )
    rows, errors, stats = _read_output(out)
    assert errors == [] and stats["rows"] == sample_data.count
    _same_predictions(rows, in_worker_run["rows"])
    assert proxy.answered["503"] == 2
    counters = summary["counters"]
    assert counters["remote_retries"] == 2
    assert counters["remote_requests"] == proxy.answered["503"] + proxy.answered["forwarded"]
    assert counters.get("remote_failures", 0) == 0
    assert summary["labels_source"] == labels_file


def test_a_server_that_never_comes_back_puts_every_input_in_errors(
    model_url, labels_file, sample_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(beam_pipeline, "THROTTLE_DELAY_S", 0.1)
    chosen = _good_rows(sample_data)[:6]
    listing = tmp_path / "six.csv"
    listing.write_text("".join(f"{uri},{label}\n" for uri, label in chosen))
    out = str(tmp_path / "out")
    with FaultProxy(model_url, fail_first=-1) as proxy:
        summary = beam_pipeline.run(
            "",
            out,
            input_uris=str(listing),
            batch_size=3,
            runner=RUNNER,
            endpoint=proxy.model_url(model_url),
            labels_uri=labels_file,
            max_retries=1,
            max_error_fraction=1.0,  # passes with its errors counted
        )
    rows, errors, stats = _read_output(out)
    assert rows == []
    assert sorted(e["uri"] for e in errors) == sorted(uri for uri, _ in chosen)
    assert {e["reason"] for e in errors} == {"remote_unavailable"}
    assert all("HTTP 503" in e["detail"] and "1 retries" in e["detail"] for e in errors)
    assert stats == {"rows": 0, "errors": 6, "errors_by_reason": {"remote_unavailable": 6}}
    counters = summary["counters"]
    batches = counters["remote_failures"]
    assert counters["remote_failed_images"] == 6 and batches >= 2
    assert counters["remote_retries"] == batches  # one retry per batch
    assert proxy.answered == {"503": 2 * batches, "forwarded": 0}


def test_a_refused_connection_fails_the_run_per_max_error_fraction(
    labels_file, sample_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(beam_pipeline, "THROTTLE_DELAY_S", 0.1)
    chosen = _good_rows(sample_data)[:4]
    listing = tmp_path / "four.csv"
    listing.write_text("".join(f"{uri},{label}\n" for uri, label in chosen))
    out = tmp_path / "out"
    nobody = f"http://127.0.0.1:{local.free_port()}/v1/models/{MODEL_NAME}"
    with pytest.raises(ValueError, match="remote_unavailable"):
        beam_pipeline.run(
            "",
            str(out),
            input_uris=str(listing),
            runner=RUNNER,
            endpoint=nobody,
            labels_uri=labels_file,
            max_retries=0,
        )
    rows, errors, _ = _read_output(str(out))  # written before the run failed
    assert rows == []
    assert sorted(e["uri"] for e in errors) == sorted(uri for uri, _ in chosen)
    assert all(e["reason"] == "remote_unavailable" and "no connection" in e["detail"]
               for e in errors)  # fmt: skip


@pytest.fixture(scope="module")
def large_image(tmp_path_factory) -> str:
    """A PNG of noise, larger than six sample images together."""
    pixels = np.random.default_rng(1).integers(0, 256, (400, 400, 3), np.uint8)
    path = tmp_path_factory.mktemp("large") / "large.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def _body_bytes(paths: list[str]) -> int:
    """The length of the ``:predict`` body of these images."""
    return len(json.dumps({"instances": remote_handler.instances([_read(p) for p in paths])}))


def test_a_batch_answered_413_goes_image_by_image_and_only_the_large_image_fails(
    model_url, labels_file, in_worker_run, sample_data, large_image, tmp_path
):
    chosen = _good_rows(sample_data)[:6]
    lines = [f"{uri},{label}" for uri, label in chosen]
    lines.insert(3, large_image)
    listing = tmp_path / "with_large.csv"
    listing.write_text("\n".join(lines) + "\n")
    # The proxy takes a request of the good images (all of them, or fewer), and answers
    # 413 to one holding the large image, as the server does over --max-body-bytes.
    limit = _body_bytes([uri for uri, _ in chosen])
    large_body = _body_bytes([large_image])
    assert large_body > limit
    out = str(tmp_path / "out")
    with FaultProxy(model_url, max_body_bytes=limit) as proxy:
        summary = beam_pipeline.run(
            "",
            out,
            input_uris=str(listing),
            batch_size=64,
            runner=RUNNER,
            endpoint=proxy.model_url(model_url),
            labels_uri=labels_file,
            max_error_fraction=0.5,
        )
    rows, errors, stats = _read_output(out)
    good = {uri for uri, _ in chosen}
    _same_predictions(rows, [row for row in in_worker_run["rows"] if row["uri"] in good])
    assert [(e["uri"], e["reason"]) for e in errors] == [(large_image, "image_too_large")]
    assert errors[0]["detail"] == too_large_message(large_body, limit)  # the server's message
    assert stats == {"rows": 6, "errors": 1, "errors_by_reason": {"image_too_large": 1}}
    counters = summary["counters"]
    assert counters["fallback_images"] > 1, "the large image should share a batch"
    assert counters["fallback_batches"] == 1
    assert proxy.answered["413"] == 2  # its batch, then the large image on its own
    assert counters["remote_requests"] == proxy.answered["413"] + proxy.answered["forwarded"]
    assert counters.get("remote_retries", 0) == 0 and counters.get("remote_failures", 0) == 0


def _not_json(answer: bytes) -> bytes:
    return b"<html>502 from somewhere else</html>"


def _without_predictions(answer: bytes) -> bytes:
    return json.dumps({"outputs": json.loads(answer)["predictions"]}).encode()


def _one_prediction_short(answer: bytes) -> bytes:
    return json.dumps({"predictions": json.loads(answer)["predictions"][:-1]}).encode()


def _predictions_not_a_list(answer: bytes) -> bytes:
    return json.dumps({"predictions": {"probabilities": [0.25] * len(LABELS)}}).encode()


@pytest.mark.parametrize(
    "garble, detail",
    [
        (_not_json, "is not {'predictions': [...]}: '<html>502 from somewhere else</html>'"),
        (_without_predictions, "is not {'predictions': [...]}: '{\"outputs\": [{"),
        (_one_prediction_short, "answered {short} predictions for {images} images"),
        (_predictions_not_a_list, "answered no list of predictions for {images} images"),
    ],
    ids=["not_json", "no_predictions", "one_short", "not_a_list"],
)
def test_a_malformed_answer_fails_its_batch_as_a_remote_error(
    garble, detail, model_url, labels_file, in_worker_run, sample_data, tmp_path
):
    chosen = _good_rows(sample_data)[:6]
    listing = tmp_path / "six.csv"
    listing.write_text("".join(f"{uri},{label}\n" for uri, label in chosen))
    out = str(tmp_path / "out")
    with FaultProxy(model_url, garble=garble, garble_first=1) as proxy:
        summary = beam_pipeline.run(
            "",
            out,
            input_uris=str(listing),
            batch_size=3,
            runner=RUNNER,
            endpoint=proxy.model_url(model_url),
            labels_uri=labels_file,
            max_error_fraction=1.0,  # passes with its errors counted
        )
    rows, errors, stats = _read_output(out)
    uri_of = {_read(uri): uri for uri, _ in chosen}
    [sent] = proxy.garbled  # the one batch answered wrong
    failed = {uri_of[image] for image in sent}
    assert sorted(e["uri"] for e in errors) == sorted(failed)
    assert {e["reason"] for e in errors} == {"remote_error"}
    n = len(sent)
    expected = detail.replace("{short}", str(n - 1)).replace("{images}", str(n))
    assert all(expected in e["detail"] for e in errors), (expected, errors[0]["detail"])
    others = [row for row in in_worker_run["rows"] if row["uri"] in set(uri_of.values()) - failed]
    _same_predictions(rows, others)
    assert stats == {"rows": 6 - n, "errors": n, "errors_by_reason": {"remote_error": n}}
    counters = summary["counters"]
    assert counters["remote_failures"] == 1 and counters["remote_failed_images"] == n
    assert counters["remote_requests"] == proxy.answered["forwarded"]  # none retried
    assert counters.get("remote_retries", 0) == 0 and counters.get("fallback_batches", 0) == 0


def test_handler_on_its_own_sends_a_rejected_batch_again_image_by_image(
    model_url, sample_data, corrupt_image
):
    uris = [uri for uri, _ in _good_rows(sample_data)[:3]]
    images = [_read(uri) for uri in uris]
    batch = [images[0], _read(corrupt_image), images[1], images[2]]
    handler = remote_handler.RemoteImageHandler(
        remote_handler.TFServingRESTHandler(model_url + ":predict", LABELS, num_retries=0),
        batch_size=4,
        metrics_namespace="test",
    )
    client = handler.load_model()
    results = list(handler.run_inference(batch, client))
    assert [r.example for r in results] == batch
    failure = results[1].inference
    assert isinstance(failure, InferenceFailure) and failure.reason == "undecodable_image"
    for result in (results[0], results[2], results[3]):
        assert result.inference.dtype == np.float32 and result.inference.shape == (4,)
        np.testing.assert_allclose(result.inference.sum(), 1.0, atol=1e-4)
    # The batch without the bad image: the same probabilities in one request.
    together = list(handler.run_inference(images, client))
    for a, b in zip(together, (results[0], results[2], results[3]), strict=True):
        np.testing.assert_allclose(a.inference, b.inference, atol=1e-6)


def test_an_endpoint_serving_other_labels_stops_the_handler(model_url, sample_data):
    uri = _good_rows(sample_data)[0][0]
    other = ["cat", "dog", "bird", "fish"]
    handler = remote_handler.TFServingRESTHandler(model_url, other, num_retries=0)
    with pytest.raises(remote_handler.LabelMismatch, match="other labels"):
        handler.run_inference([_read(uri)], handler.load_model())
    handler = remote_handler.TFServingRESTHandler(model_url, LABELS[:3], num_retries=0)
    with pytest.raises(remote_handler.LabelMismatch, match="4 class probabilities"):
        handler.run_inference([_read(uri)], handler.load_model())


# --------------------------------------------------------------------------- no server


@pytest.mark.parametrize(
    "endpoint, url",
    [
        ("http://h:8080/v1/models/m", "http://h:8080/v1/models/m:predict"),
        ("http://h:8080/v1/models/m/", "http://h:8080/v1/models/m:predict"),
        ("https://h/v1/models/m/versions/3", "https://h/v1/models/m/versions/3:predict"),
        ("http://h/v1/models/m:predict", "http://h/v1/models/m:predict"),
    ],
)
def test_predict_url(endpoint, url):
    assert remote_handler.endpoint_kind(endpoint) == remote_handler.REST
    assert remote_handler.predict_url(endpoint) == url


@pytest.mark.parametrize("endpoint", ["http://h:8080", "http://h/v2/models/m/infer", "h:8080"])
def test_bad_rest_endpoints(endpoint):
    with pytest.raises(ValueError):
        remote_handler.predict_url(endpoint)
    with pytest.raises(ValueError):
        remote_handler.endpoint_kind(endpoint)


def test_a_bad_endpoint_fails_before_the_last_predictions_are_removed(labels_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    last = out / "predictions-00000-of-00001.jsonl"
    last.write_text('{"uri": "a.jpg"}\n')
    listing = tmp_path / "listing.csv"
    listing.write_text("a.jpg,circle\n")
    with pytest.raises(ValueError, match="model's URL"):
        beam_pipeline.run(
            "",
            str(out),
            input_uris=str(listing),
            endpoint="http://127.0.0.1:8080",  # the server, not its model
            labels_uri=labels_file,
        )
    assert last.read_text() == '{"uri": "a.jpg"}\n'


def test_endpoint_kinds():
    assert remote_handler.endpoint_kind("projects/p/locations/l/endpoints/1") == "vertex"
    for bad in ("projects/p/endpoints/1", "gs://b/model", "image-classifier"):
        with pytest.raises(ValueError, match="endpoint must be"):
            remote_handler.endpoint_kind(bad)


def test_labels_rules(probe_model, labels_file):
    resolve = beam_pipeline.resolve_labels
    assert resolve(probe_model, "", "")[0] == LABELS
    assert resolve("", labels_file, "http://h/v1/models/m") == (LABELS, labels_file)
    assert resolve(probe_model, "", "http://h/v1/models/m")[0] == LABELS
    with pytest.raises(ValueError, match="does not say its labels"):
        resolve("", "", "http://h/v1/models/m")
    with pytest.raises(ValueError, match="labels_uri is for an endpoint"):
        resolve(probe_model, labels_file, "")
    with pytest.raises(ValueError, match="model_dir is required"):
        resolve("", "", "")


def test_cli_endpoint_args():
    args, beam_args = parse_args(
        ["--endpoint", "http://h/v1/models/m", "--labels-uri", "l.txt", "--output-dir", "o",
         "--input-uris", "i", "--max-retries", "2", "--request-timeout-s", "5"]
    )  # fmt: skip
    assert (args.endpoint, args.labels_uri, args.model_dir) == ("http://h/v1/models/m", "l.txt", "")
    assert (args.max_retries, args.request_timeout_s, beam_args) == (2, 5.0, [])
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "o", "--input-uris", "i"])  # neither model nor endpoint


class FakePrediction:
    def __init__(self, predictions):
        self.predictions = predictions
        self.deployed_model_id = "777"


class FakeEndpoint:
    """Stands in for ``aiplatform.Endpoint``: answers from ``script``, one item per
    ``predict`` call (an exception to raise, or a function of the instances)."""

    script: list = []
    calls: list = []

    def __init__(self, endpoint_name, project=None, location=None, credentials=None):
        self.endpoint_name = endpoint_name

    def list_models(self):
        return ["a deployed model"]

    def predict(self, instances, parameters=None, timeout=None):
        FakeEndpoint.calls.append({"instances": instances, "timeout": timeout})
        answer = FakeEndpoint.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return FakePrediction(answer(instances))


def _answers(instances):
    """A prediction per instance, as the export's signature answers: class = length % 4."""
    predictions = []
    for instance in instances:
        index = len(base64.b64decode(instance["b64"])) % len(LABELS)
        probabilities = [0.1] * len(LABELS)
        probabilities[index] = 0.7
        predictions.append(
            {"probabilities": probabilities, "class_index": index, "label": LABELS[index],
             "score": 0.7}
        )  # fmt: skip
    return predictions


def test_vertex_endpoint_handler_with_a_fake_endpoint(monkeypatch):
    from apache_beam.internal import pickler
    from google.api_core import exceptions as api
    from google.cloud import aiplatform

    from components.common.vertex_handler import VertexEndpointHandler

    monkeypatch.setattr(aiplatform, "Endpoint", FakeEndpoint)
    monkeypatch.setattr(FakeEndpoint, "calls", [])
    endpoint = "projects/p/locations/us-central1/endpoints/123"
    handler = remote_handler.remote_handler(endpoint, LABELS, timeout_s=7, num_retries=0)
    assert isinstance(handler, VertexEndpointHandler)
    wrapped = remote_handler.RemoteImageHandler(handler, 4, "test")
    wrapped = pickler.loads(pickler.dumps(wrapped))  # Beam ships it to the workers
    client = wrapped.load_model()
    images = [b"\xff\xd8one", b"\xff\xd8second", b"\xff\xd8bad", b"\xff\xd8fourth!"]

    # A batch answered: {"b64": ...} instances, probabilities in label order.
    monkeypatch.setattr(FakeEndpoint, "script", [_answers])
    results = list(wrapped.run_inference(images, client))
    sent = FakeEndpoint.calls[-1]
    assert sent["instances"] == [{"b64": base64.b64encode(i).decode()} for i in images]
    assert sent["timeout"] == 7
    for image, result in zip(images, results, strict=True):
        assert result.example == image and result.inference.dtype == np.float32
        assert int(np.argmax(result.inference)) == len(image) % 4

    # 400 for the batch: one by one, only the bad image fails.
    script = [api.InvalidArgument("instance 2: the image does not decode")]
    script += [lambda i: _answers(i)] * 2
    script += [api.InvalidArgument("instance 0: the image does not decode"), _answers]
    monkeypatch.setattr(FakeEndpoint, "script", script)
    results = list(wrapped.run_inference(images, client))
    assert [r.example for r in results] == images
    assert results[2].inference == InferenceFailure(
        "undecodable_image", "instance 0: the image does not decode"
    )
    assert all(isinstance(r.inference, np.ndarray) for i, r in enumerate(results) if i != 2)

    # 503 past the retries (none here), 403 and a short answer: errors for every image.
    for error, reason in [
        (api.ServiceUnavailable("overloaded"), "remote_unavailable"),
        (api.PermissionDenied("no access"), "remote_error"),
        (lambda i: _answers(i)[:-1], "remote_error"),
    ]:
        monkeypatch.setattr(FakeEndpoint, "script", [error])
        results = list(wrapped.run_inference(images, client))
        assert [r.inference.reason for r in results] == [reason] * 4
    assert "answered 3 predictions for 4 images" in results[0].inference.detail
