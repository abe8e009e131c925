"""Edge exports of the serving SavedModel: TFLite (float32, float16, int8) and a
TensorFlow.js graph model, each checked against the SavedModel on the test split. One
stage for both tasks: the export's serving outputs say which (a detector answers
``detection_boxes``: ``components.detection.predictions.is_detection_export``).

Every edge model takes decoded RGB pixels (uint8 ``[batch, height, width, 3]``, any
size: a camera frame, a decoded file, a canvas; a detector's one image at a time) and
resizes them inside, as the SavedModel does after decoding
(:mod:`components.export_edge.resize`); the outputs are the SavedModel's (a classifier's
``probabilities``, ``class_index``, ``label``, ``score``: ``edge_model``; a detector's
Object Detection API outputs: ``edge_detector``), TF.js' without the string output,
whose labels are in model.json's metadata. Each artifact folder holds ``labels.txt``.

The check decodes each test image exactly as the SavedModel does (``tf.io.decode_image``,
RGB), runs the SavedModel's ``serving_default`` on its encoded bytes and every edge
model on the decoded pixels, and compares: a classifier's top-1 classes
(``top1_agreement``), a detector's detections by class and IoU
(``detection_agreement``). The step fails when a float model (float32, float16, TF.js)
agrees on less than ``float_min_agreement``, or int8 on less than
``int8_min_agreement``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from components.classification import signature
from components.common import io, labels as label_io, schema as common_schema, serving
from components.detection import export as detection_export
from components.detection.predictions import is_detection_export
from components.export_edge import (
    detection_agreement,
    edge_detector,
    edge_model,
    tfjs,
    tflite,
)
from components.export_edge.images import decoded_images

log = logging.getLogger(__name__)

TFLITE_FILES = {kind: f"model_{kind}.tflite" for kind in tflite.FORMATS}
FLOAT_FORMATS = ("float32", "float16", "tfjs")
FORMATS = (*tflite.FORMATS, "tfjs")
# The probability step of each format's output: int8's softmax output is quantized with
# TFLite's fixed scale of 1/256; the float formats have none worth counting.
RESOLUTION = {"int8": 1 / 256}


def load_edge_model(export_dir: str) -> edge_model.EdgeModel | edge_detector.EdgeDetector:
    """The edge model of an export: a detector's (``edge_detector``) when its serving
    signature answers ``detection_boxes``, else a classifier's (``edge_model``). The
    outputs are read from the loaded export, which the edge model keeps: the other reader
    of them, ``model_handler.signature_outputs``, imports Beam, which the export image
    does not hold."""
    export = tf.saved_model.load(export_dir)
    if serving.SIGNATURE not in export.signatures:
        raise ValueError(f"the SavedModel {export_dir} has no {serving.SIGNATURE} signature")
    outputs = list(export.signatures[serving.SIGNATURE].structured_outputs)
    if is_detection_export(outputs):
        return edge_detector.EdgeDetector(export_dir, export)
    return edge_model.EdgeModel(export_dir, export)


def _check_inputs(export_dir: str, dataset_dir: str, split: str) -> None:
    """Clear errors before any conversion: a missing export or split."""
    if not io.exists(io.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel at {export_dir} (expected saved_model.pb)")
    common_schema.shard_files(dataset_dir, split)  # raises, naming the folder, when absent
    common_schema.shard_files(dataset_dir, "train")


def _classifier_agreement(
    reference, dataset_dir, split, max_examples, models: dict[str, bytes], tfjs_check
) -> dict:
    """Runs the SavedModel and every edge model of a classifier on the split: per format,
    the share of images whose top-1 class agrees with the SavedModel's and the largest
    probability difference."""
    runners = {kind: tflite.Runner(model) for kind, model in models.items()}
    expected, outputs = [], {kind: ([], []) for kind in runners}
    probabilities = []
    for encoded, pixels in decoded_images(dataset_dir, split, max_examples):
        out = reference(**{signature.INPUT_NAME: tf.constant([encoded])})
        expected.append(int(out["class_index"][0]))
        probabilities.append(out["probabilities"][0].numpy())
        for kind, run in runners.items():
            result = run(pixels)
            outputs[kind][0].append(int(result["class_index"][0]))
            outputs[kind][1].append(result["probabilities"][0])
        tfjs_check.add(pixels)
    _some_images(expected, dataset_dir, split)
    values, runtime = tfjs_check.results()
    outputs["tfjs"] = ([int(c) for c in values["class_index"]], values["probabilities"])
    expected, probabilities = np.array(expected), np.array(probabilities)
    report = {"examples": len(expected), "tfjs_runtime": runtime}
    for kind, (classes, probs) in outputs.items():
        agree, ties = top1_agreement(
            expected, probabilities, np.array(classes), np.array(probs), RESOLUTION.get(kind, 0.0)
        )
        report[kind] = {
            "agreement": agree,
            "unresolved_ties": ties,
            "max_probability_difference": float(np.abs(np.array(probs) - probabilities).max()),
        }
    return report


def _some_images(images: list, dataset_dir: str, split: str) -> None:
    if not images:
        raise ValueError(f"the {split} split of {dataset_dir} holds no images to compare on")


def _detector_agreement(
    reference, dataset_dir, split, max_examples, models: dict[str, bytes], tfjs_check, min_score
) -> dict:
    """Runs the SavedModel and every edge model of a detector on the split: per format,
    ``detection_agreement`` of its detections with the SavedModel's."""
    runners = {kind: tflite.Runner(model) for kind, model in models.items()}
    expected, outputs = [], {kind: [] for kind in runners}
    for encoded, pixels in decoded_images(dataset_dir, split, max_examples):
        out = reference(**{detection_export.INPUT_NAME: tf.constant([encoded])})
        expected.append({name: value[0].numpy() for name, value in out.items()})
        for kind, run in runners.items():
            outputs[kind].append({name: value[0] for name, value in run(pixels).items()})
        tfjs_check.add(pixels)
    _some_images(expected, dataset_dir, split)
    values, runtime = tfjs_check.results()
    outputs["tfjs"] = [{name: v[i] for name, v in values.items()} for i in range(len(expected))]
    report = {"examples": len(expected), "tfjs_runtime": runtime}
    for kind, images in outputs.items():
        report[kind] = detection_agreement.detection_agreement(
            zip(expected, images, strict=True), min_score
        )
    return report


def top1_agreement(
    expected: np.ndarray,
    reference: np.ndarray,
    classes: np.ndarray,
    probabilities: np.ndarray,
    resolution: float = 0.0,
) -> tuple[float, int]:
    """The share of images whose top-1 class agrees with the SavedModel's, and how many of
    them agree only as a tie the format cannot resolve.

    A format whose probabilities move in steps of ``resolution`` (int8: 1/256) cannot tell
    classes apart that the SavedModel scores less than a step apart; its output then ties
    them and its class_index takes the first. Such an image counts as agreeing when the
    SavedModel's class is among the tied ones and the SavedModel's own probabilities of
    the two classes differ by less than a step. A quantization that broke the model still
    disagrees: it does not tie what the SavedModel tells apart.

    Args:
        expected: The SavedModel's class per image, ``[n]``.
        reference: The SavedModel's probabilities, ``[n, classes]``.
        classes: The format's class per image, ``[n]``.
        probabilities: The format's probabilities, ``[n, classes]``.
        resolution: The format's probability step; 0 for float formats (ties never count).

    Returns:
        (agreement, unresolved_ties).
    """
    rows = np.arange(len(expected))
    exact = classes == expected
    tied = probabilities[rows, expected] >= probabilities.max(axis=1)
    close = reference[rows, expected] - reference[rows, classes] < resolution
    ties = ~exact & tied & close
    return float(np.mean(exact | ties)), int(ties.sum())


def export_edge(
    export_dir: str,
    dataset_dir: str,
    tflite_dir: str,
    tfjs_dir: str,
    representative_images: int = 100,
    float_min_agreement: float = 0.99,
    int8_min_agreement: float = 0.9,
    split: str = "test",
    max_examples: int = 0,
    tfjs_check: str = "auto",
    min_score: float = 0.3,
) -> dict:
    """Writes the TFLite and TensorFlow.js models of an export (a classifier's or a
    detector's) and checks them.

    Args:
        export_dir: SavedModel written by the export stage (classification) or
            export_detector (detection).
        dataset_dir: Dataset written by create_tfrecords: its train split calibrates
            int8, the ``split`` split checks every model.
        tflite_dir: Where to write ``model_float32.tflite``, ``model_float16.tflite``,
            ``model_int8.tflite`` and ``labels.txt`` (local path or ``gs://``).
        tfjs_dir: Where to write the TF.js graph model (``model.json``, weight shards)
            and ``labels.txt``.
        representative_images: Train images that calibrate int8 (the first ones in
            shard order, which the split's URI hash already shuffles).
        float_min_agreement: Share on which each float model (float32, float16, TF.js)
            must agree with the SavedModel: of the checked images, the same top-1 class
            (classification); of the detections, the same class and a box of IoU >= 0.5
            (detection).
        int8_min_agreement: The same for int8 (quantization moves close calls).
        split: The split the models are checked on.
        max_examples: Check on at most this many of its images; 0: all of them.
        tfjs_check: How the TF.js model runs in the check: ``node`` (the TensorFlow.js
            runtime in Node.js), ``python`` (its graph and weights in TensorFlow), or
            ``auto`` (node when Node.js is there).
        min_score: Detection only: the detections (of either model) scoring at least
            this are the ones compared.

    Returns:
        ``task`` (classification or detection), ``agreement`` (per format:
        ``agreement`` and the task's figures: a classifier's
        ``max_probability_difference`` and ``unresolved_ties``, a detector's counts and
        largest differences, ``detection_agreement``), ``examples``, ``tfjs_check``
        (which check ran, and why when auto fell back), ``tfjs_runtime``, file ``sizes``
        (bytes), ``seconds`` per conversion, the ``labels``, ``image_size``, the models'
        ``input`` and ``outputs``.

    Raises:
        ValueError: a model below its minimum agreement (the message has every figure);
            a bad argument.
        FileNotFoundError: no SavedModel, or a split missing from the dataset.
    """
    for name, value in (
        ("float_min_agreement", float_min_agreement),
        ("int8_min_agreement", int8_min_agreement),
        ("min_score", min_score),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if representative_images < 1:
        raise ValueError(f"representative_images must be at least 1, got {representative_images}")
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 (0: all), got {max_examples}")
    if tfjs_check not in tfjs.CHECKS:  # before any conversion, not after them
        raise ValueError(f"unknown tfjs_check {tfjs_check!r}; expected one of {tfjs.CHECKS}")
    _check_inputs(export_dir, dataset_dir, split)
    seconds, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="export-edge-") as work:
        start = time.monotonic()
        model = load_edge_model(export_dir)
        edge_model.write_edge_saved_model(model, os.path.join(work, "edge"))
        seconds["edge_saved_model"] = time.monotonic() - start
        models = _convert_tflite(
            os.path.join(work, "edge"), model, dataset_dir, representative_images, seconds
        )
        start = time.monotonic()
        local_tfjs = os.path.join(work, "tfjs")
        metadata = {
            "labels": model.labels,
            "image_size": model.size,
            "input": model.input_description,
            "task": model.task,
        }
        tfjs.convert(os.path.join(work, "edge"), local_tfjs, metadata)
        seconds["tfjs"] = time.monotonic() - start
        label_io.write_labels(os.path.join(local_tfjs, label_io.LABELS_FILE), model.labels)
        check, fallback = tfjs.make_check(tfjs_check, local_tfjs, work, model.numeric_outputs)
        start = time.monotonic()
        reference = model.export.signatures[serving.SIGNATURE]  # the export, loaded once
        checked = (reference, dataset_dir, split, max_examples, models, check)
        if model.task == "detection":
            report = _detector_agreement(*checked, min_score)
        else:
            report = _classifier_agreement(*checked)
        seconds["check"] = time.monotonic() - start
        for kind, blob in models.items():
            io.write_bytes(io.join(tflite_dir, TFLITE_FILES[kind]), blob)
            sizes[kind] = len(blob)
        label_io.write_labels(io.join(tflite_dir, label_io.LABELS_FILE), model.labels)
        io.copy_tree(local_tfjs, tfjs_dir, overwrite=True)
        sizes["tfjs"] = sum(
            os.path.getsize(os.path.join(local_tfjs, f))
            for f in os.listdir(local_tfjs)
            if f != label_io.LABELS_FILE
        )
    result = {
        "task": model.task,
        "agreement": {kind: report[kind] for kind in FORMATS},
        "examples": report["examples"],
        "split": split,
        "tfjs_check": check.name + (f" (auto fell back: {fallback})" if fallback else ""),
        "tfjs_runtime": report["tfjs_runtime"],
        "sizes": sizes,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "labels": model.labels,
        "image_size": model.size,
        "input": model.input_description,
        "outputs": {"tflite": list(model.outputs), "tfjs": list(model.numeric_outputs)},
        "tflite_files": dict(TFLITE_FILES),
        "representative_images": representative_images,
    }
    if model.task == "detection":
        result["min_score"] = min_score
    _enforce(result, float_min_agreement, int8_min_agreement)
    return result


def _convert_tflite(
    edge_dir: str, model, dataset_dir: str, representative_images: int, seconds: dict
) -> dict[str, bytes]:
    """Every TFLite format of the edge SavedModel, int8 calibrated on the first
    ``representative_images`` train images; the seconds each took go in ``seconds``."""
    models = {}
    for kind in tflite.FORMATS:
        start = time.monotonic()
        models[kind] = tflite.convert(
            edge_dir,
            kind,
            representative=lambda: (
                p for _, p in decoded_images(dataset_dir, "train", representative_images)
            ),
            float_model=models.get("float32"),
            float_scopes=model.float_scopes,
        )
        seconds[kind] = time.monotonic() - start
        log.info("TFLite %s: %d bytes in %.1f s", kind, len(models[kind]), seconds[kind])
    return models


def _enforce(result: dict, float_min: float, int8_min: float) -> None:
    figures = ", ".join(f"{k} {v['agreement']:.4f}" for k, v in result["agreement"].items())
    low = [
        f"{kind} agrees on {result['agreement'][kind]['agreement']:.4f} < {minimum}"
        for kind, minimum in [(k, float_min) for k in FLOAT_FORMATS] + [("int8", int8_min)]
        if result["agreement"][kind]["agreement"] < minimum
    ]
    if low:
        raise ValueError(
            f"edge models disagree with the SavedModel on the {result['split']} split "
            f"({result['examples']} images): {'; '.join(low)} (all: {figures}; TF.js "
            f"check: {result['tfjs_check']})"
        )
