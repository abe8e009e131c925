"""COCO metrics of an exported detector on a split: pycocotools' own ``COCOeval``.

The exported SavedModel (``export``) runs on the split's records (their ``image/encoded``
through ``serving_default``, the path a client takes), and its detections are scored
against the split's ground truth that create_tfrecords wrote (``coco/<split>.json``), on
the stored images' pixels. The metrics are COCO's, under the names the pipeline reports:

    map        AP at IoU 0.50:0.95 (COCO's primary metric)
    map_50     AP at IoU 0.50 (PASCAL VOC's)
    map_75     AP at IoU 0.75
    map_small, map_medium, map_large    AP by object area (under 32², to 96², above)
    mar_1, mar_10, mar_100              AR with at most 1, 10, 100 detections per image
    per_class_map                       AP at 0.50:0.95 of each class

pycocotools marks a metric with no object to measure (no small object, say) as -1;
so do these.
"""

from __future__ import annotations

import contextlib
import io as _pyio
from collections.abc import Sequence

import numpy as np

from components.common import io, schema as common_schema
from components.detection import schema

METRIC_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
)


def coco_metrics(ground_truth: dict, detections: Sequence[dict]) -> dict:
    """COCO's bbox metrics of ``detections`` (COCO result dicts: ``image_id``,
    ``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels, ``score``) against a COCO
    ground-truth document."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = [c["name"] for c in sorted(ground_truth["categories"], key=lambda c: c["id"])]
    if not ground_truth["annotations"] or not detections:
        # Nothing found, or nothing to find: every AP is 0 (-1 when nothing to find).
        value = -1.0 if not ground_truth["annotations"] else 0.0
        return {**dict.fromkeys(METRIC_NAMES, value), "per_class_map": dict.fromkeys(labels, value)}
    with contextlib.redirect_stdout(_pyio.StringIO()):  # pycocotools prints as it goes
        truth = COCO()
        truth.dataset = ground_truth
        truth.createIndex()
        found = truth.loadRes(list(detections))
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float(v) for v in evaluation.stats[:9]]
    # precision: [IoU thresholds, recall points, classes, areas, max detections]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        name = labels[[c["id"] for c in ground_truth["categories"]].index(category)]
        per_class[name] = float(np.mean(values)) if values.size else -1.0
    return {**dict(zip(METRIC_NAMES, stats, strict=True)), "per_class_map": per_class}


def detections_of(
    outputs: dict, image_ids: Sequence[int], sizes: Sequence[tuple[int, int]]
) -> list[dict]:
    """COCO result dicts of a batch of the export's outputs (as NumPy arrays), for images
    ``image_ids`` of ``(height, width)`` pixels."""
    results = []
    for i, (image_id, (height, width)) in enumerate(zip(image_ids, sizes, strict=True)):
        for j in range(int(outputs["num_detections"][i])):
            ymin, xmin, ymax, xmax = (float(v) for v in outputs["detection_boxes"][i, j])
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(outputs["detection_classes"][i, j]),
                    "bbox": [
                        xmin * width,
                        ymin * height,
                        (xmax - xmin) * width,
                        (ymax - ymin) * height,
                    ],
                    "score": float(outputs["detection_scores"][i, j]),
                }
            )
    return results


def evaluate_detector(
    export_dir: str, dataset_dir: str, split: str = "test", batch_size: int = 16
) -> dict:
    """COCO metrics of the export in ``export_dir`` on a split of ``dataset_dir``.

    Returns:
        The metrics of the module doc, with ``images`` and ``objects`` counted.
    """
    import tensorflow as tf

    from components.detection import create_tfrecords

    truth = io.read_json(create_tfrecords.coco_path(dataset_dir, split))
    ids = {image["file_name"]: image["id"] for image in truth["images"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in truth["images"]}
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    records = common_schema.read_records(common_schema.shard_files(dataset_dir, split))
    features = {
        schema.ENCODED: tf.io.FixedLenFeature([], tf.string),
        schema.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
    }
    detections: list[dict] = []
    for batch in records.batch(batch_size):
        parsed = tf.io.parse_example(batch, features)
        outputs = {k: v.numpy() for k, v in serve(inputs=parsed[schema.ENCODED]).items()}
        image_ids = [ids[uri.decode()] for uri in parsed[schema.SOURCE_ID].numpy()]
        detections += detections_of(outputs, image_ids, [sizes[i] for i in image_ids])
    metrics = coco_metrics(truth, detections)
    return {**metrics, "images": len(truth["images"]), "objects": len(truth["annotations"])}
