"""The export_edge stage on a detector: TFLite (float32, float16, int8) and TF.js models
of a small trained detector's export, run with the TFLite interpreter and TensorFlow.js,
their outputs the SavedModel's, and the agreement metric (class and IoU) on hand-made
detections."""

from __future__ import annotations

import io as stdio
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.common import labels as label_io
from components.detection import create_tfrecords, export, portable_suppression, suppression
from components.export_edge import detection_agreement as metric, edge, tfjs, tflite
from components.export_edge.component import export_edge as export_edge_component
from components.export_edge.edge_detector import EdgeDetector

MAX_DETECTIONS = 20
# Checked on the train split (about 50 images; the test split has about 5): what is
# measured is the conversion, which held-out images do not make fairer.
SPLIT = "train"
# The floats agree on every detection. int8 moves the few-epoch model's close calls (its
# scores bunch at 0.1 to 0.3): 0.75 to 0.95 from run to run; a broken quantization is far
# below (the stage's 0.9 holds on the demo's model: docs/benchmarks.md).
INT8_AGREEMENT = 0.6


def _outputs(boxes, classes, scores):
    """One image's Object Detection API outputs (no batch dimension), padded to 5."""
    count = len(scores)
    padded = np.zeros([5, 4])
    padded[:count] = np.reshape(boxes, (-1, 4))
    return {
        "detection_boxes": padded,
        "detection_classes": np.pad(np.array(classes, float), (0, 5 - count)),
        "detection_scores": np.pad(np.array(scores, float), (0, 5 - count)),
        "num_detections": np.array(float(count)),
    }


def test_iou_by_hand():
    a = [[0.0, 0.0, 0.5, 0.5]]
    b = [[0.0, 0.25, 0.5, 0.75], [0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.2, 0.2, 0.2, 0.2]]
    np.testing.assert_allclose(metric.iou(a, b), [[1 / 3, 1.0, 0.0, 0.0]])


def test_detections_agree_by_class_and_iou_one_to_one():
    box = [0.1, 0.1, 0.5, 0.5]
    shifted = [0.1, 0.15, 0.5, 0.55]  # IoU 0.78 with box
    far = [0.1, 0.4, 0.5, 0.8]  # IoU 0.14 with box
    reference = _outputs([box, box, [0.6, 0.6, 0.9, 0.9], far], [1, 1, 2, 3], [0.9, 0.8, 0.7, 0.1])
    edge_model = _outputs(
        [shifted, [0.6, 0.6, 0.9, 0.9], [0.1, 0.42, 0.5, 0.82], [0.0, 0.0, 1.0, 1.0]],
        [1, 3, 3, 2],
        [0.88, 0.71, 0.25, 0.5],
    )
    one = metric.image_agreement(
        metric.real_detections(reference), metric.real_detections(edge_model), 0.3
    )
    # Reference: the first box finds the shifted one; its duplicate finds nothing left
    # (one-to-one); the class-2 box finds only a class-3 box. Edge: the shifted box is
    # confirmed; the class-3 box over the reference's class-2 box is not; the whole-image
    # box is not; the 0.25 box is not counted.
    assert one["reference_detections"] == 3 and one["found"] == 1
    assert one["detections"] == 3 and one["confirmed"] == 1
    assert one["max_score_difference"] == pytest.approx(0.02)
    assert one["max_box_difference"] == pytest.approx(0.05)
    # A partner may score below min_score: at min_score 0.2 the edge's 0.25 box counts, and
    # the reference's far box (0.1, not counted itself) confirms it.
    low = metric.image_agreement(
        metric.real_detections(reference), metric.real_detections(edge_model), 0.2
    )
    assert (low["found"], low["confirmed"], low["detections"]) == (1, 2, 4)
    total = metric.detection_agreement(
        [(reference, edge_model), (reference, reference), (_outputs([], [], []),) * 2], 0.3
    )
    assert total["reference_detections"] == 6 and total["detections"] == 6
    assert total["found"] == 1 + 3 and total["confirmed"] == 1 + 3
    assert total["agreement"] == pytest.approx(8 / 12)
    assert total["images_agreeing"] == pytest.approx(2 / 3)
    assert metric.detection_agreement([(_outputs([], [], []),) * 2], 0.3)["agreement"] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_portable_suppression_keeps_what_the_padded_op_keeps(seed):
    """NonMaxSuppressionV4 per image, class-aware by shifted boxes, as the export's batched
    padded op; boxes clipped to all zeros (outside the image) dropped as it drops them."""
    rng = np.random.default_rng(seed)
    k = 80
    corner = rng.uniform(-0.2, 0.9, (1, k, 2))
    boxes = tf.constant(np.concatenate([corner, corner + rng.uniform(0, 0.4, (1, k, 2))], -1))
    scores = rng.uniform(0, 1, (1, k))
    scores[0, rng.random(k) < 0.3] = 0.0
    args = (
        boxes,
        tf.constant(rng.integers(0, 3, (1, k)), tf.int32),
        tf.constant(-np.sort(-scores), tf.float32),
        tf.constant(rng.uniform(0, 1, (1, k, 3)), tf.float32),
    )
    for threshold in (0.0, 0.4):
        expected = suppression.suppress(*args, 30, threshold, 0.5)
        got = portable_suppression.suppress_one(*args, 30, threshold, 0.5)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key].numpy(), value.numpy(), err_msg=key)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A detector trained a few epochs at 64 px and its export: (dataset, export)."""
    from components.detection import training
    from pipelines import sample_detection_data

    root = tmp_path_factory.mktemp("edge_detector")
    sample = sample_detection_data.generate(str(root / "sample"), images=64)
    dataset = str(root / "dataset")
    create_tfrecords.run(dataset, voc_dir=sample.voc_dir)
    training.train(
        dataset, str(root / "model"), image_size=64, batch_size=8, epochs=8,
        early_stopping_patience=0,
    )  # fmt: skip
    export_dir = str(root / "export")
    export.export_detector(
        str(root / "model"), export_dir, max_detections=MAX_DETECTIONS, score_threshold=0.0
    )
    return dataset, export_dir


@pytest.fixture(scope="module")
def edge_run(detector, tmp_path_factory):
    """export_edge of the detector: (result, TFLite folder, TF.js folder). The few-epoch
    detector's best scores vary from run to run (0.15 to 0.4), so the detections compared
    are those scoring at least the best detection of the SavedModel on a quarter of the
    images: on the other three quarters at least one an image."""
    dataset, export_dir = detector
    reference = tf.saved_model.load(export_dir).signatures["serving_default"]
    best = [
        float(reference(inputs=tf.constant([encoded]))["detection_scores"][0, 0])
        for encoded, _ in edge.decoded_images(dataset, SPLIT)
    ]
    # Above the weak model's plateau of near-equal low scores, whose order (and which of
    # them top-k keeps) is a tie that TFLite and TensorFlow may break differently.
    min_score = float(np.quantile(best, 0.75))
    out = tmp_path_factory.mktemp("edge_detection")
    tflite_dir, tfjs_dir = str(out / "tflite"), str(out / "tfjs")
    result = edge.export_edge(
        export_dir,
        dataset,
        tflite_dir,
        tfjs_dir,
        representative_images=16,
        # The tests below assert the figures (the stage's own bars would only raise).
        float_min_agreement=0.0,
        int8_min_agreement=0.0,
        split=SPLIT,
        min_score=min_score,
    )
    return result, tflite_dir, tfjs_dir


def _png(pixels: np.ndarray) -> bytes:
    buffer = stdio.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_detector_is_picked_from_the_export_and_every_format_written(edge_run, detector):
    result, tflite_dir, tfjs_dir = edge_run
    labels = label_io.read_labels(os.path.join(detector[0], "labels.txt"))
    assert result["task"] == "detection" and result["labels"] == labels
    assert result["image_size"] == 64 and 0 < result["min_score"] < 1
    assert sorted(os.listdir(tflite_dir)) == sorted([*edge.TFLITE_FILES.values(), "labels.txt"])
    for folder in (tflite_dir, tfjs_dir):
        assert label_io.read_labels(os.path.join(folder, "labels.txt")) == labels
    with open(os.path.join(tfjs_dir, "model.json")) as f:
        model = json.load(f)
    assert model["userDefinedMetadata"]["labels"] == labels
    assert model["userDefinedMetadata"]["task"] == "detection"
    # Every output under its own name (the converter alone would leave two as Identity_n).
    assert set(model["signature"]["outputs"]) == set(result["outputs"]["tfjs"])
    assert set(result["outputs"]["tflite"]) == {*export.OUTPUT_NAMES}
    ops = {node["op"] for node in model["modelTopology"]["node"]}
    assert "NonMaxSuppressionV4" in ops and tfjs.unsupported(tfjs_dir) == []


def test_every_format_agrees_with_the_saved_model(edge_run):
    result, _, _ = edge_run
    figures = result["agreement"]
    assert result["examples"] > 40 and result["split"] == SPLIT
    for kind in ("float32", "float16", "int8", "tfjs"):
        # Not vacuous: the SavedModel has detections to find on most images.
        assert figures[kind]["reference_detections"] >= 0.25 * result["examples"], figures
    for kind in edge.FLOAT_FORMATS:
        assert figures[kind]["agreement"] >= 0.95, (kind, figures)
    for kind in ("float32", "tfjs"):
        assert figures[kind]["max_box_difference"] < 1e-3, (kind, figures)
        assert figures[kind]["max_score_difference"] < 1e-3, (kind, figures)
    assert figures["int8"]["agreement"] >= INT8_AGREEMENT
    if shutil.which("node"):  # a machine with Node.js runs TensorFlow.js itself
        assert result["tfjs_check"] == "node", result["tfjs_check"]
        assert "@tensorflow/tfjs-core 4.22.0" in result["tfjs_runtime"]


def _ranked_apart(scores: np.ndarray, gap: float = 1e-3) -> int:
    """How many leading detections score apart from the next one: past two scores within
    float noise of each other (the few-epoch model's tail of near-equal scores), either
    order is right, and so is either candidate at the cut of max_detections."""
    close = np.nonzero(-np.diff(scores) < gap)[0]
    return int(close[0]) if close.size else len(scores)


def test_tflite_outputs_are_the_saved_models_on_pixels_of_any_size(edge_run, detector):
    """The Object Detection API's outputs, names, shapes and dtypes, on the PNG of the same
    pixels; the SavedModel's detections at any score, in its order, up to its first tie."""
    _, tflite_dir, _ = edge_run
    reference = tf.saved_model.load(detector[1]).signatures["serving_default"]
    with open(os.path.join(tflite_dir, "model_float32.tflite"), "rb") as f:
        run = tflite.Runner(f.read())
    images = [pixels for _, pixels in edge.decoded_images(detector[0], "test", 2)]
    rng = np.random.default_rng(0)
    images += [rng.integers(0, 256, (1, h, w, 3), np.uint8) for h, w in ((50, 90), (130, 70))]
    for pixels in images:
        expected = reference(inputs=tf.constant([_png(pixels[0])]))
        got = run(pixels)
        shapes = {name: (value.shape, value.dtype) for name, value in got.items()}
        assert shapes == {
            "detection_boxes": ((1, MAX_DETECTIONS, 4), np.float32),
            "detection_classes": ((1, MAX_DETECTIONS), np.float32),
            "detection_scores": ((1, MAX_DETECTIONS), np.float32),
            "num_detections": ((1,), np.float32),
            "detection_multiclass_scores": ((1, MAX_DETECTIONS, 3), np.float32),
            "detection_labels": ((1, MAX_DETECTIONS), np.object_),
        }
        # The few-epoch model's scores are mostly near-equal: which of the tied candidates
        # top-k and the suppression keep is a tie TFLite may break otherwise, so values are
        # compared up to the first tie (test_every_format_agrees measures the rest).
        n = _ranked_apart(expected["detection_scores"].numpy()[0])
        for name in ("detection_boxes", "detection_scores", "detection_multiclass_scores"):
            np.testing.assert_allclose(got[name][0, :n], expected[name].numpy()[0, :n], atol=1e-3)
        np.testing.assert_array_equal(
            got["detection_classes"][0, :n], expected["detection_classes"].numpy()[0, :n]
        )
        labels = expected["detection_labels"].numpy()[0, :n].tolist()
        assert got["detection_labels"][0, :n].tolist() == labels


def test_int8_quantizes_the_network_and_keeps_resize_and_decoding_float(edge_run):
    _, tflite_dir, _ = edge_run
    with open(os.path.join(tflite_dir, "model_int8.tflite"), "rb") as f:
        details = tflite.interpreter(f.read()).get_tensor_details()
    decoding = [t for t in details if "edge_postprocess" in t["name"]]
    # The network's int8 outputs are moved as they are (reshape, top-k, gather, slice: no
    # precision lost); the arithmetic on them and the suppression are float.
    moved = ("Reshape", "TopKV2", "GatherNd", "strided_slice")
    int8 = [t["name"] for t in decoding if t["dtype"] == np.int8]
    assert decoding and all(any(op in name for op in moved) for name in int8), int8
    assert any("NonMaxSuppressionV4" in t["name"] for t in decoding)
    assert sum(t["dtype"] == np.int8 for t in details) > 50  # weights and activations


def test_python_check_of_the_tfjs_files_finds_the_saved_models_detections(edge_run, detector):
    """Where Node.js is absent (the stage images): model.json's graph in TensorFlow."""
    _, _, tfjs_dir = edge_run
    check = tfjs.PythonCheck(tfjs_dir, EdgeDetector.numeric_outputs)
    reference = tf.saved_model.load(detector[1]).signatures["serving_default"]
    pairs = []
    for encoded, pixels in edge.decoded_images(detector[0], SPLIT, 8):
        check.add(pixels)
        expected = reference(inputs=tf.constant([encoded]))
        pairs.append({k: v[0].numpy() for k, v in expected.items()})
    # The weak model's most decisive detections: those within 1% of its best one here.
    min_score = 0.99 * max(float(p["detection_scores"][0]) for p in pairs)
    values, runtime = check.results()
    images = [{k: v[i] for k, v in values.items()} for i in range(len(pairs))]
    for image, expected in zip(images, pairs, strict=True):
        np.testing.assert_allclose(image["detection_boxes"], expected["detection_boxes"], atol=1e-4)
    agreement = metric.detection_agreement(zip(pairs, images, strict=True), min_score)
    assert agreement["agreement"] >= 0.95 and agreement["reference_detections"] > 0
    assert "TensorFlow" in runtime


def test_an_old_detector_export_without_the_edge_signature_is_a_clear_error(tmp_path):
    class Old(tf.Module):
        signatures = {"serving_default": None}

    with pytest.raises(ValueError, match="no 'edge_detect' signature.*export it again"):
        EdgeDetector(str(tmp_path), Old())


def test_the_component_records_the_detection_figures(monkeypatch, tmp_path):
    """The component's body: every figure of the stage in the agreement's metadata."""
    from kfp import dsl

    figures = {"agreement": 1.0, "found": 9, "confirmed": 9, "max_box_difference": 1e-6}
    result = {
        "task": "detection",
        "agreement": {kind: dict(figures) for kind in edge.FORMATS},
        "examples": 4,
        "labels": ["a"],
        "image_size": 64,
        "input": "pixels",
        "outputs": {"tflite": ["detection_boxes"], "tfjs": ["detection_boxes"]},
        "tflite_files": dict(edge.TFLITE_FILES),
        "min_score": 0.3,
    }
    calls = []
    monkeypatch.setattr(edge, "export_edge", lambda *a, **k: calls.append(k) or result)

    def artifact(cls, name):
        return cls(name=name, uri=str(tmp_path / name))

    metrics = artifact(dsl.Metrics, "agreement")
    tflite_model, tfjs_model = artifact(dsl.Model, "tflite"), artifact(dsl.Model, "tfjs")
    export_edge_component.python_func(
        exported_model=artifact(dsl.Model, "export"),
        dataset=artifact(dsl.Dataset, "dataset"),
        tflite_model=tflite_model,
        tfjs_model=tfjs_model,
        agreement=metrics,
        min_score=0.25,
    )
    assert calls[0]["min_score"] == 0.25
    assert metrics.metadata["float32"] == 1.0 and metrics.metadata["examples"] == 4
    assert metrics.metadata["found"] == dict.fromkeys(edge.FORMATS, 9)
    assert metrics.metadata["max_box_difference"]["int8"] == 1e-6
    assert tflite_model.metadata["task"] == "detection" and tfjs_model.metadata["labels"] == ["a"]
