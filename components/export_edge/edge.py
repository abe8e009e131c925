"""Edge exports of the serving SavedModel: TFLite (float32, float16, int8) and a
TensorFlow.js graph model, each checked against the SavedModel on the test split.

Every edge model takes decoded RGB pixels (uint8 ``[batch, height, width, 3]``, any
size: a camera frame, a decoded file, a canvas) and resizes them inside, as the
SavedModel does after decoding (:mod:`components.export_edge.resize`); the outputs are
the SavedModel's (TFLite: ``probabilities``, ``class_index``, ``label``, ``score``;
TF.js the same without ``label``, whose labels are in model.json's metadata). Each
artifact folder holds ``labels.txt``.

The check decodes each test image exactly as the SavedModel does (``tf.io.decode_image``,
RGB), runs the SavedModel's ``serving_default`` on its encoded bytes and every edge
model on the decoded pixels, and counts how often their top-1 classes agree. The step
fails when a float model (float32, float16, TF.js) agrees on less than
``float_min_agreement`` of the images, or int8 on less than ``int8_min_agreement``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from components.classification import schema, signature
from components.common import io, labels as label_io, schema as common_schema, serving
from components.export_edge import edge_model, tfjs, tflite

log = logging.getLogger(__name__)

TFLITE_FILES = {kind: f"model_{kind}.tflite" for kind in tflite.FORMATS}
FLOAT_FORMATS = ("float32", "float16", "tfjs")
FORMATS = (*tflite.FORMATS, "tfjs")
# The probability step of each format's output: int8's softmax output is quantized with
# TFLite's fixed scale of 1/256; the float formats have none worth counting.
RESOLUTION = {"int8": 1 / 256}


def decoded_images(
    dataset_dir: str, split: str, limit: int = 0
) -> Iterator[tuple[bytes, np.ndarray]]:
    """(encoded bytes, uint8 ``[1, height, width, 3]`` pixels) of a split's images, in
    shard order, decoded as the SavedModel decodes them; at most ``limit`` (0: all)."""
    records = common_schema.read_records(common_schema.shard_files(dataset_dir, split))
    if limit:
        records = records.take(limit)
    for record in records:
        encoded = schema.parse_examples(record)[schema.ENCODED]
        pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        yield encoded.numpy(), pixels.numpy()[None]


def _check_inputs(export_dir: str, dataset_dir: str, split: str) -> None:
    """Clear errors before any conversion: a missing export or split."""
    if not io.exists(io.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel at {export_dir} (expected saved_model.pb)")
    common_schema.shard_files(dataset_dir, split)  # raises, naming the folder, when absent
    common_schema.shard_files(dataset_dir, "train")


def _agreement(
    reference, dataset_dir, split, max_examples, models: dict[str, bytes], tfjs_check
) -> dict:
    """Runs the SavedModel and every edge model on the split: per format, the share of
    images whose top-1 class agrees with the SavedModel's and the largest probability
    difference."""
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
    if not expected:
        raise ValueError(f"the {split} split of {dataset_dir} holds no images to compare on")
    classes, tfjs_probabilities, runtime = tfjs_check.results()
    outputs["tfjs"] = (classes, tfjs_probabilities)
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
) -> dict:
    """Writes the TFLite and TensorFlow.js models of an export and checks them.

    Args:
        export_dir: SavedModel written by the export stage.
        dataset_dir: Dataset written by create_tfrecords: its train split calibrates
            int8, the ``split`` split checks every model.
        tflite_dir: Where to write ``model_float32.tflite``, ``model_float16.tflite``,
            ``model_int8.tflite`` and ``labels.txt`` (local path or ``gs://``).
        tfjs_dir: Where to write the TF.js graph model (``model.json``, weight shards)
            and ``labels.txt``.
        representative_images: Train images that calibrate int8 (the first ones in
            shard order, which the split's URI hash already shuffles).
        float_min_agreement: Share of the checked images on which each float model
            (float32, float16, TF.js) must give the SavedModel's top-1 class.
        int8_min_agreement: The same for int8 (quantization moves close calls).
        split: The split the models are checked on.
        max_examples: Check on at most this many of its images; 0: all of them.
        tfjs_check: How the TF.js model runs in the check: ``node`` (the TensorFlow.js
            runtime in Node.js), ``python`` (its graph and weights in TensorFlow), or
            ``auto`` (node when Node.js is there).

    Returns:
        ``agreement`` (per format: ``agreement``, ``max_probability_difference``),
        ``examples``, ``tfjs_check`` (which check ran, and why when auto fell back),
        ``tfjs_runtime``, file ``sizes`` (bytes), ``seconds`` per conversion, the
        ``labels``, ``image_size``, the models' ``input`` and ``outputs``.

    Raises:
        ValueError: a model below its minimum agreement (the message has every figure);
            a bad argument.
        FileNotFoundError: no SavedModel, or a split missing from the dataset.
    """
    for name, value in (("float", float_min_agreement), ("int8", int8_min_agreement)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}_min_agreement must be between 0 and 1, got {value}")
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
        model = edge_model.write_edge_saved_model(export_dir, os.path.join(work, "edge"))
        seconds["edge_saved_model"] = time.monotonic() - start
        models = {}
        for kind in tflite.FORMATS:
            start = time.monotonic()
            models[kind] = tflite.convert(
                os.path.join(work, "edge"),
                kind,
                representative=lambda: (
                    p for _, p in decoded_images(dataset_dir, "train", representative_images)
                ),
                float_model=models.get("float32"),
            )
            seconds[kind] = time.monotonic() - start
            log.info("TFLite %s: %d bytes in %.1f s", kind, len(models[kind]), seconds[kind])
        start = time.monotonic()
        local_tfjs = os.path.join(work, "tfjs")
        metadata = {"labels": model.labels, "image_size": model.size, "input": _INPUT}
        tfjs.convert(os.path.join(work, "edge"), local_tfjs, metadata)
        seconds["tfjs"] = time.monotonic() - start
        label_io.write_labels(os.path.join(local_tfjs, label_io.LABELS_FILE), model.labels)
        check, fallback = tfjs.make_check(tfjs_check, local_tfjs, work)
        start = time.monotonic()
        reference = model.export.signatures[serving.SIGNATURE]  # the export, loaded once
        report = _agreement(reference, dataset_dir, split, max_examples, models, check)
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
        "agreement": {kind: report[kind] for kind in FORMATS},
        "examples": report["examples"],
        "split": split,
        "tfjs_check": check.name + (f" (auto fell back: {fallback})" if fallback else ""),
        "tfjs_runtime": report["tfjs_runtime"],
        "sizes": sizes,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "labels": model.labels,
        "image_size": model.size,
        "input": _INPUT,
        "outputs": {"tflite": [*_NUMERIC_OUTPUTS, "label"], "tfjs": list(_NUMERIC_OUTPUTS)},
        "tflite_files": dict(TFLITE_FILES),
        "representative_images": representative_images,
    }
    _enforce(result, float_min_agreement, int8_min_agreement)
    return result


_INPUT = "pixels: uint8 [batch, height, width, 3], RGB, any size (resized inside)"
_NUMERIC_OUTPUTS = ("probabilities", "class_index", "score")


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
