"""Tests of batch_predict with a detection export: the shared RunInference handler on the
detector's signature, the detection records (``components/detection/predictions.py``), the
Beam pipeline over a generated detection dataset's test manifest, in the workers or
through an endpoint serving the export (the local model server; a fake Vertex AI endpoint
running the export: no cloud here), and its component under kfp local.

One tiny detector is trained and exported for the module (64 px, one epoch: its boxes are
arbitrary but well-formed, which is what these tests need), and one pipeline run is
shared by the assertions about it.
"""

import csv
import glob
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from components.batch_predict import beam_pipeline, records
from components.common import io, model_handler
from components.detection import create_tfrecords, export, training
from components.detection.predictions import detection_record, image_size, is_detection_export
from pipelines import sample_detection_data

RUNNER = "FnApiRunner"  # in this process, no Prism download
MAX_DETECTIONS = 5


def _read_output(output_dir: str) -> tuple[list[dict], list[dict], dict]:
    shards = sorted(glob.glob(os.path.join(output_dir, "predictions-*-of-*.jsonl")))
    rows = list(io.read_jsonl(shards))
    errors = list(io.read_jsonl(os.path.join(output_dir, "errors.jsonl")))
    stats = io.read_json(os.path.join(output_dir, "stats.json"))
    return rows, errors, stats


def _manifest(dataset: str) -> dict[str, str]:
    """The test manifest's ``uri -> classes`` (space-separated; empty: no object)."""
    with open(os.path.join(dataset, "manifests", "test.csv"), newline="") as f:
        return {row[0]: (row[1] if len(row) > 1 else "") for row in csv.reader(f) if row}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> dict:
    """A generated detection set (half of it the test split), and a tiny detector's export.

    Exported with no score threshold, so every image has ``MAX_DETECTIONS`` real
    detections to compare.
    """
    root = tmp_path_factory.mktemp("det_batch")
    sample = sample_detection_data.generate(str(root / "sample"), images=32)
    dataset = str(root / "dataset")
    create_tfrecords.run(
        dataset, voc_dir=sample.voc_dir, train_fraction=0.5, valid_fraction=0.1, runner=RUNNER
    )
    model_dir = str(root / "model")
    training.train(
        dataset, model_dir, image_size=64, batch_size=4, epochs=1, early_stopping_patience=0
    )
    export_dir = str(root / "export")
    export.export_detector(
        model_dir, export_dir, max_detections=MAX_DETECTIONS, score_threshold=0.0
    )
    manifest = _manifest(dataset)
    assert len(manifest) >= 2, "the test split is too small to test"
    assert any(not classes for classes in manifest.values()), "no test image without objects"
    return {"sample": sample, "dataset": dataset, "export": export_dir, "manifest": manifest}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("det_bad")
    corrupt = base / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all\n" * 20)
    return {"missing_file": str(base / "missing.jpg"), "undecodable_image": str(corrupt)}


@pytest.fixture(scope="module")
def dataset_run(detector, tmp_path_factory) -> dict:
    """The export over the dataset's test manifest, in batches of 3."""
    out = str(tmp_path_factory.mktemp("det_run") / "out")
    summary = beam_pipeline.run(
        detector["export"], out, dataset_dir=detector["dataset"], batch_size=3, runner=RUNNER
    )
    rows, errors, stats = _read_output(out)
    return {"summary": summary, "rows": rows, "errors": errors, "stats": stats}


def _direct(export_dir: str, uris: list[str]) -> dict[str, np.ndarray]:
    """The export's serving signature called directly on the images' bytes."""
    import tensorflow as tf

    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = signature(inputs=tf.constant([io.read_bytes(uri) for uri in uris]))
    return {name: value.numpy() for name, value in outputs.items()}


# --------------------------------------------------------------------------- the records


def test_detection_record_keeps_the_real_detections_in_pixels_and_normalized():
    outputs = {
        "detection_boxes": np.array(
            [[0.1, 0.2, 0.5, 0.6], [0.0, 0.5, 1.0, 1.0], [0, 0, 0, 0]], np.float32
        ),
        "detection_classes": np.array([2.0, 1.0, 0.0], np.float32),
        "detection_scores": np.array([0.9, 0.4, 0.0], np.float32),
        "num_detections": np.float32(2.0),
        "detection_labels": np.array([b"dog", b"cat", b""]),
    }
    record = detection_record("a.jpg", outputs, width=200, height=100, true_classes=["cat"])
    assert record["uri"] == "a.jpg" and record["true_classes"] == ["cat"]
    first, second = record["detections"]
    assert (first["label"], first["class"], second["label"], second["class"]) == (
        "dog",
        2,
        "cat",
        1,
    )
    assert first["score"] == pytest.approx(0.9) and second["score"] == pytest.approx(0.4)
    np.testing.assert_allclose(first["box"], [0.1, 0.2, 0.5, 0.6], atol=1e-6)
    np.testing.assert_allclose(first["bbox"], [40.0, 10.0, 80.0, 40.0], atol=1e-4)
    np.testing.assert_allclose(second["bbox"], [100.0, 0.0, 100.0, 100.0], atol=1e-4)
    json.dumps(record)  # plain Python values only

    # Without detection_labels the labels name the classes; no listed classes, no key.
    del outputs["detection_labels"]
    unlabelled = detection_record("a.jpg", outputs, 200, 100, labels=["cat", "dog"])
    assert [d["label"] for d in unlabelled["detections"]] == ["dog", "cat"]
    assert "true_classes" not in unlabelled
    # An image the listing says holds no object, and one where nothing was found.
    outputs["num_detections"] = np.float32(0.0)
    assert detection_record("b.jpg", outputs, 10, 10, true_classes=[]) == {
        "uri": "b.jpg",
        "detections": [],
        "true_classes": [],
    }


def test_image_size_reads_the_header(detector):
    path = sorted(detector["sample"].boxes)[0]
    with Image.open(path) as image:
        expected = image.size
    assert image_size(io.read_bytes(path)) == expected
    with pytest.raises(ValueError, match="cannot read the image's size"):
        image_size(b"not an image")


# --------------------------------------------------------------------------- the handler


def test_the_shared_handler_runs_the_detector_image_by_image_when_one_is_bad(detector, bad_files):
    export_dir = detector["export"]
    assert is_detection_export(model_handler.signature_outputs(export_dir))
    assert records.export_task(export_dir) == records.DETECTION
    model = model_handler.load_saved_model(export_dir, num_classes=3)
    assert model.input_name == "inputs"  # read from the signature, not a constant
    assert model.num_classes == 3 and set(model.output_names) == set(export.OUTPUT_NAMES)
    with pytest.raises(ValueError, match="3 classes but its label file lists 4"):
        model_handler.load_saved_model(export_dir, num_classes=4)

    uris = sorted(detector["manifest"])[:2]
    good = [io.read_bytes(uri) for uri in uris]
    corrupt = io.read_bytes(bad_files["undecodable_image"])
    handler = model_handler.SavedModelHandler(export_dir, batch_size=3, num_classes=3)
    results = list(handler.run_inference([good[0], corrupt, good[1]], handler.load_model()))
    assert [r.example for r in results] == [good[0], corrupt, good[1]]
    failure = results[1].inference
    assert isinstance(failure, model_handler.InferenceFailure)
    assert failure.reason == "undecodable_image" and failure.detail
    direct = _direct(export_dir, uris)
    for i, result in enumerate([results[0], results[2]]):
        assert set(result.inference) == set(export.OUTPUT_NAMES)
        assert result.inference["detection_boxes"].shape == (MAX_DETECTIONS, 4)
        for name, value in result.inference.items():
            if value.dtype.kind in "SO":
                assert list(value) == list(direct[name][i]), name
            else:
                np.testing.assert_allclose(value, direct[name][i], atol=1e-5, err_msg=name)
        assert result.model_id == export_dir


# --------------------------------------------------------------------------- the pipeline


def test_one_line_per_test_image_with_the_saved_models_detections(detector, dataset_run):
    rows, manifest = dataset_run["rows"], detector["manifest"]
    assert sorted(row["uri"] for row in rows) == sorted(manifest)
    assert dataset_run["errors"] == []
    summary = dataset_run["summary"]
    assert (summary["rows"], summary["errors"], summary["task"]) == (len(manifest), 0, "detection")
    assert "top_k" not in summary  # a classifier's setting
    assert summary["labels"] == list(detector["sample"].labels)
    assert dataset_run["stats"]["rows"] == len(manifest)

    uris = sorted(manifest)
    direct = _direct(detector["export"], uris)
    by_uri = {row["uri"]: row for row in rows}
    for i, uri in enumerate(uris):
        row = by_uri[uri]
        # The test manifest lists every image's classes: an image without objects has
        # none, rather than no listing.
        assert set(row) == {"uri", "detections", "true_classes"}
        assert row["true_classes"] == manifest[uri].split()
        with Image.open(uri) as image:
            width, height = image.size
        count = int(direct["num_detections"][i])
        assert len(row["detections"]) == count == MAX_DETECTIONS
        for j, detection in enumerate(row["detections"]):
            assert set(detection) == {"label", "class", "score", "box", "bbox"}
            assert detection["label"] == direct["detection_labels"][i][j].decode()
            assert detection["class"] == int(direct["detection_classes"][i][j])
            assert detection["label"] == summary["labels"][detection["class"] - 1]
            assert detection["score"] == pytest.approx(
                float(direct["detection_scores"][i][j]), abs=1e-5
            )
            box = np.array(detection["box"])
            np.testing.assert_allclose(box, direct["detection_boxes"][i][j], atol=1e-5)
            assert box.min() >= 0.0 and box.max() <= 1.0
            ymin, xmin, ymax, xmax = box
            np.testing.assert_allclose(
                detection["bbox"],
                [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height],
                atol=1e-3,
            )
        scores = [d["score"] for d in row["detections"]]
        assert scores == sorted(scores, reverse=True)


def test_bad_images_go_to_errors_and_the_others_are_predicted(detector, bad_files, tmp_path):
    uris = sorted(detector["manifest"])
    listing = tmp_path / "listing.csv"
    # A bare URI (no classes listed), a labelled one, and the bad files, in one batch.
    listing.write_text(
        f"{uris[0]}\n{uris[1]},circle square\n"
        f"{bad_files['undecodable_image']}\n{bad_files['missing_file']},circle\n"
    )
    out = str(tmp_path / "out")
    summary = beam_pipeline.run(
        detector["export"],
        out,
        input_uris=str(listing),
        batch_size=8,
        runner=RUNNER,
        max_error_fraction=0.5,
    )
    rows, errors, stats = _read_output(out)
    by_uri = {row["uri"]: row for row in rows}
    assert set(by_uri) == {uris[0], uris[1]}
    assert "true_classes" not in by_uri[uris[0]]
    assert by_uri[uris[1]]["true_classes"] == ["circle", "square"]
    assert all(len(row["detections"]) == MAX_DETECTIONS for row in rows)
    assert {e["uri"]: e["reason"] for e in errors} == {
        uri: reason for reason, uri in bad_files.items()
    }
    assert all(e["detail"] and e["stage"] == "batch_predict" for e in errors)
    assert stats == {
        "rows": 2,
        "errors": 2,
        "errors_by_reason": {"missing_file": 1, "undecodable_image": 1},
    }
    # The corrupt image shared a batch with good ones, which went on one by one.
    counters = summary["counters"]
    assert counters["fallback_batches"] >= 1
    assert counters["fallback_images"] > counters["fallback_batches"]


# --------------------------------------------------------------------------- an endpoint


@pytest.fixture(scope="module")
def served_detector(detector, tmp_path_factory):
    """The local model server on the detector's export: yields its model URL."""
    from components.deploy import local
    from components.deploy.model_repository import publish

    repo = str(tmp_path_factory.mktemp("det_served") / "repo")
    publish(detector["export"], repo, "detector")
    port = local.free_port()
    log_path = str(tmp_path_factory.mktemp("det_server_log") / "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            local.server_command(repo, "detector", port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        local.wait_until_ready(process, "detector", port, 120.0, log_path)
        yield f"http://127.0.0.1:{port}/v1/models/detector"
    finally:
        local.stop_server(process)


def _same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same lines but for float noise: an endpoint's answers against the in-worker ones."""
    got, want = {r["uri"]: r for r in rows}, {r["uri"]: r for r in expected}
    assert len(got) == len(rows) and set(got) == set(want)
    for uri, row in got.items():
        assert set(row) == set(want[uri]) and row.get("true_classes") == want[uri].get(
            "true_classes"
        )
        assert len(row["detections"]) == len(want[uri]["detections"]), uri
        for a, b in zip(row["detections"], want[uri]["detections"], strict=True):
            assert (a["label"], a["class"]) == (b["label"], b["class"]), uri
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            np.testing.assert_allclose(a["box"], b["box"], atol=1e-4)
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-2)


def test_an_endpoint_serving_the_detector_writes_the_in_worker_rows(
    detector, served_detector, dataset_run, tmp_path
):
    out = str(tmp_path / "out")
    summary = beam_pipeline.run(
        detector["export"],  # its labels, and what it predicts
        out,
        dataset_dir=detector["dataset"],
        batch_size=3,
        runner=RUNNER,
        endpoint=served_detector,
    )
    rows, errors, stats = _read_output(out)
    assert errors == [] and stats == dataset_run["stats"]
    _same_rows(rows, dataset_run["rows"])
    assert (summary["task"], summary["endpoint"]) == ("detection", served_detector)
    assert summary["detection_format"] == "object_detection_api"
    assert summary["counters"]["remote_requests"] >= len(rows) / 3


def test_vertex_lines_through_the_endpoint_named_with_its_labels_and_bad_images_recorded(
    detector, served_detector, dataset_run, bad_files, tmp_path
):
    uris = sorted(detector["manifest"])[:3]
    listing = tmp_path / "listing.csv"
    # The bad files share a batch with the good images: the server answers it 400.
    listing.write_text(
        f"{uris[0]}\n{bad_files['undecodable_image']}\n{uris[1]},circle square\n"
        f"{bad_files['missing_file']}\n{uris[2]}\n"
    )
    labels_uri = os.path.join(detector["export"], "assets.extra", "labels.txt")
    out = str(tmp_path / "out")
    summary = beam_pipeline.run(
        "",
        out,
        input_uris=str(listing),
        batch_size=8,
        runner=RUNNER,
        endpoint=served_detector,
        labels_uri=labels_uri,
        task="detection",
        detection_format="vertex",
        max_error_fraction=0.5,
    )
    rows, errors, stats = _read_output(out)
    assert (summary["task"], summary["detection_format"]) == ("detection", "vertex")
    assert {e["uri"]: e["reason"] for e in errors} == {
        uri: reason for reason, uri in bad_files.items()
    }
    assert stats["rows"] == 3 and stats["errors"] == 2
    assert summary["counters"]["fallback_batches"] == 1
    # Vertex AI's AutoML object detection line: the in-worker detections, reshaped.
    in_worker = {row["uri"]: row for row in dataset_run["rows"]}
    by_uri = {row["instance"]["content"]: row for row in rows}
    assert set(by_uri) == set(uris)
    for uri, row in by_uri.items():
        assert row["instance"] == {"content": uri, "mimeType": "image/jpeg"}
        prediction, want = row["prediction"], in_worker[uri]["detections"]
        assert set(prediction) == {"ids", "displayNames", "confidences", "bboxes"}
        assert prediction["ids"] == [d["class"] for d in want]
        assert prediction["displayNames"] == [d["label"] for d in want]
        np.testing.assert_allclose(prediction["confidences"], [d["score"] for d in want], atol=1e-4)
        np.testing.assert_allclose(
            prediction["bboxes"],
            [[d["box"][1], d["box"][3], d["box"][0], d["box"][2]] for d in want],
            atol=1e-4,
        )
    assert by_uri[uris[1]]["true_classes"] == ["circle", "square"]
    assert "true_classes" not in by_uri[uris[0]]


def test_an_endpoint_answering_another_task_stops_the_run(detector, served_detector, tmp_path):
    listing = tmp_path / "listing.csv"
    listing.write_text(f"{sorted(detector['manifest'])[0]}\n")
    labels_uri = os.path.join(detector["export"], "assets.extra", "labels.txt")
    # Named with its labels alone, an endpoint is taken for a classifier unless told.
    with pytest.raises(Exception, match="detection model's outputs.*give task='detection'"):
        beam_pipeline.run(
            "",
            str(tmp_path / "out"),
            input_uris=str(listing),
            runner=RUNNER,
            endpoint=served_detector,
            labels_uri=labels_uri,
        )


def test_a_task_or_format_that_does_not_fit_fails_before_anything_is_written(detector, tmp_path):
    listing = tmp_path / "listing.csv"
    listing.write_text(f"{sorted(detector['manifest'])[0]}\n")
    out = tmp_path / "out"
    endpoint = "http://127.0.0.1:8080/v1/models/detector"
    labels_uri = os.path.join(detector["export"], "assets.extra", "labels.txt")
    cases = [
        ({"model_dir": detector["export"], "task": "classification"}, "is a detection model"),
        ({"model_dir": detector["export"], "task": "segmentation"}, "task must be one of"),
        ({"model_dir": "", "labels_uri": labels_uri, "detection_format": "vertex"}, "classifier"),
        ({"model_dir": detector["export"], "detection_format": "coco"}, "detection_format must"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            beam_pipeline.run(
                output_dir=str(out), input_uris=str(listing), endpoint=endpoint, **arguments
            )
    assert not out.exists()


def test_a_served_detection_is_checked_against_the_labels():
    from components.common import remote_handler

    answer = {
        "detection_boxes": [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]],
        "detection_classes": [2.0, 0.0],
        "detection_scores": [0.9, 0.0],
        "num_detections": 1.0,
        "detection_labels": ["dog", ""],
    }
    outputs = remote_handler.inference_of(answer, ["cat", "dog"])
    assert set(outputs) == set(answer)
    record = detection_record("a.jpg", outputs, 200, 100)
    assert [(d["label"], d["class"]) for d in record["detections"]] == [("dog", 2)]
    np.testing.assert_allclose(record["detections"][0]["bbox"], [40.0, 10.0, 80.0, 40.0])
    with pytest.raises(remote_handler.LabelMismatch, match="other labels"):
        remote_handler.inference_of(answer, ["cat"])  # class 2 of one label
    with pytest.raises(remote_handler.LabelMismatch, match="do not name the classes"):
        remote_handler.inference_of({**answer, "detection_labels": ["cat", ""]}, ["cat", "dog"])
    with pytest.raises(remote_handler.RemoteError, match="not a well-formed detection"):
        remote_handler.inference_of({**answer, "detection_scores": [1.5, 0.0]}, ["cat", "dog"])
    with pytest.raises(remote_handler.RemoteError, match="has no"):
        remote_handler.inference_of({"detection_boxes": []}, ["cat", "dog"])


class _FakePrediction:
    def __init__(self, predictions):
        self.predictions = predictions
        self.deployed_model_id = "777"


class FakeVertexEndpoint:
    """Stands in for ``aiplatform.Endpoint`` serving the detector: each ``predict`` runs
    the export's signature on the instances and answers its rows, as Vertex AI's TensorFlow
    container does (no cloud here)."""

    export_dir = ""
    calls: list = []

    def __init__(self, endpoint_name, project=None, location=None, credentials=None):
        self.endpoint_name = endpoint_name

    def list_models(self):
        return ["a deployed model"]

    def predict(self, instances, parameters=None, timeout=None):
        import base64

        images = [base64.b64decode(instance["b64"]) for instance in instances]
        FakeVertexEndpoint.calls.append(len(images))
        try:
            outputs = _direct_images(FakeVertexEndpoint.export_dir, images)
        except Exception as e:  # the container's answer to an image it cannot decode
            from google.api_core import exceptions as api

            raise api.InvalidArgument(f"the image does not decode: {type(e).__name__}") from None
        rows = []
        for i in range(len(images)):
            row = {}
            for name, value in outputs.items():
                value = value[i]
                row[name] = (
                    [v.decode() for v in value] if value.dtype.kind in "SO" else value.tolist()
                )
            rows.append(row)
        return _FakePrediction(rows)


def _direct_images(export_dir: str, images: list[bytes]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = signature(inputs=tf.constant(images))
    return {name: value.numpy() for name, value in outputs.items()}


def test_a_vertex_ai_endpoint_serving_the_detector_writes_the_in_worker_rows(
    detector, dataset_run, tmp_path, monkeypatch
):
    from google.cloud import aiplatform

    monkeypatch.setattr(aiplatform, "Endpoint", FakeVertexEndpoint)
    monkeypatch.setattr(FakeVertexEndpoint, "export_dir", detector["export"])
    monkeypatch.setattr(FakeVertexEndpoint, "calls", [])
    out = str(tmp_path / "out")
    summary = beam_pipeline.run(
        detector["export"],
        out,
        dataset_dir=detector["dataset"],
        batch_size=4,
        runner=RUNNER,
        endpoint="projects/p/locations/us-central1/endpoints/123",
    )
    rows, errors, stats = _read_output(out)
    assert errors == [] and stats == dataset_run["stats"]
    _same_rows(rows, dataset_run["rows"])
    assert summary["task"] == "detection"
    assert sum(FakeVertexEndpoint.calls) == len(rows)


# --------------------------------------------------------------------------- the component


def test_component_in_kfp_local_on_the_detection_dataset(kfp_local, detector):
    from kfp import dsl

    from components.batch_predict.component import batch_predict

    @dsl.pipeline
    def predict_pipeline() -> dsl.Dataset:
        model = dsl.importer(
            artifact_uri=detector["export"], artifact_class=dsl.Model, reimport=False
        )
        dataset = dsl.importer(
            artifact_uri=detector["dataset"], artifact_class=dsl.Dataset, reimport=False
        )
        task = batch_predict(
            model=model.output, dataset=dataset.output, batch_size=4, runner=RUNNER
        )
        return task.outputs["predictions"]

    artifact = predict_pipeline().output
    manifest = detector["manifest"]
    assert artifact.metadata["rows"] == len(manifest) and artifact.metadata["errors"] == 0

    # What kfp local wrote: <pipeline_root>/<run>/<task>/{executor_output.json,predictions/}.
    (run_dir,) = glob.glob(str(kfp_local / "*"))
    with open(os.path.join(run_dir, "batch-predict", "executor_output.json")) as f:
        (written,) = json.load(f)["artifacts"]["predictions"]["artifacts"]
    assert written["uri"] == artifact.uri
    metadata = written["metadata"]
    assert (metadata["rows"], metadata["errors"], metadata["task"]) == (
        len(manifest),
        0,
        "detection",
    )
    assert metadata["input"] == os.path.join(detector["dataset"], "manifests", "test.csv")
    rows, errors, _ = _read_output(written["uri"])
    assert sorted(row["uri"] for row in rows) == sorted(manifest)
    assert errors == []
    assert all(len(row["detections"]) == MAX_DETECTIONS for row in rows)
    assert metadata["prediction_files"] == sorted(
        glob.glob(os.path.join(written["uri"], "predictions-*-of-*.jsonl"))
    )
