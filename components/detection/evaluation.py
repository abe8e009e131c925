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
import logging
from collections.abc import Sequence

import numpy as np

from components.common import (
    io,
    labels as labels_lib,
    quality_gate,
    schema as common_schema,
    serving,
)
from components.detection import boxes_page, schema

log = logging.getLogger(__name__)

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
    export_dir: str,
    dataset_dir: str,
    split: str = "test",
    batch_size: int = 16,
    examples: int = 0,
) -> dict:
    """COCO metrics of the export in ``export_dir`` on a split of ``dataset_dir``.

    Args:
        export_dir: A detection export (``export.export_detector``).
        dataset_dir: The dataset of ``create_tfrecords`` for detection.
        split: Which split.
        batch_size: Images per signature call.
        examples: How many of the split's first images to return with their true and
            found boxes (for ``boxes_page``).

    Returns:
        The metrics of the module doc, with ``images`` and ``objects`` counted, and
        ``examples``: ``(encoded image, true objects, detections)`` triples, objects and
        detections as ``(label, score, [ymin, xmin, ymax, xmax])`` normalized.

    Raises:
        ValueError: when the export is not a detector, or its labels are not the
            dataset's (a champion of another task or labels cannot be scored here).
    """
    import tensorflow as tf

    from components.detection import coco

    model_labels = serving.read_export_labels(export_dir)
    data_labels = labels_lib.read_labels(io.join(dataset_dir, labels_lib.LABELS_FILE))
    if model_labels != data_labels:
        raise ValueError(
            f"the model's labels {model_labels} differ from the dataset's {data_labels}"
        )
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    if "detection_boxes" not in serve.structured_outputs:
        raise ValueError(f"{export_dir} is not a detector's export (no detection_boxes)")
    truth = io.read_json(coco.coco_path(dataset_dir, split))
    if not truth["images"]:
        raise ValueError(
            f"the {split} split of {dataset_dir} holds no image: nothing to evaluate "
            "(add images or raise the split's fraction)"
        )
    ids = {image["file_name"]: image["id"] for image in truth["images"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in truth["images"]}
    records = common_schema.read_records(common_schema.shard_files(dataset_dir, split))
    features = {
        schema.ENCODED: tf.io.FixedLenFeature([], tf.string),
        schema.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
    }
    detections: list[dict] = []
    shown: list[tuple] = []
    for batch in records.batch(batch_size):
        parsed = tf.io.parse_example(batch, features)
        outputs = {k: v.numpy() for k, v in serve(inputs=parsed[schema.ENCODED]).items()}
        image_ids = [ids[uri.decode()] for uri in parsed[schema.SOURCE_ID].numpy()]
        detections += detections_of(outputs, image_ids, [sizes[i] for i in image_ids])
        for i in range(min(len(image_ids), examples - len(shown))):
            shown.append(
                (
                    parsed[schema.ENCODED][i].numpy(),
                    _true_objects(truth, image_ids[i], model_labels),
                    [
                        (
                            model_labels[int(outputs["detection_classes"][i, j]) - 1],
                            float(outputs["detection_scores"][i, j]),
                            [float(v) for v in outputs["detection_boxes"][i, j]],
                        )
                        for j in range(int(outputs["num_detections"][i]))
                    ],
                )
            )
    metrics = coco_metrics(truth, detections)
    return {
        **metrics,
        "images": len(truth["images"]),
        "objects": len(truth["annotations"]),
        "examples": shown,
    }


def _true_objects(truth: dict, image_id: int, labels: Sequence[str]) -> list[tuple]:
    """An image's ground-truth objects as ``(label, 1.0, normalized box)``."""
    image = next(i for i in truth["images"] if i["id"] == image_id)
    height, width = image["height"], image["width"]
    objects = []
    for a in truth["annotations"]:
        if a["image_id"] == image_id:
            x, y, w, h = a["bbox"]
            box = [y / height, x / width, (y + h) / height, (x + w) / width]
            objects.append((labels[a["category_id"] - 1], 1.0, box))
    return objects


# The figures of a champion the report keeps.
CHAMPION_FIGURES = ("map", "map_50", "map_75", "images")


def evaluate_export(
    export_dir: str,
    dataset_dir: str,
    split: str = "test",
    map50_threshold: float = 0.5,
    champion_dir: str = "",
    champion_margin: float = 0.0,
    boxes_page_path: str = "",
    page_examples: int = 12,
    page_min_score: float = 0.3,
) -> dict:
    """The detection evaluate stage: COCO metrics of the export on ``split``, the deploy
    gate on AP50 (``quality_gate``: threshold and champion), and a page of the split's
    images with their true and found boxes.

    Args:
        export_dir: The challenger: a detection export.
        dataset_dir: The dataset of ``create_tfrecords`` for detection.
        split: Which split to evaluate.
        map50_threshold: The gate: ``passed`` only when AP50 (``map_50``) reaches it.
        champion_dir: The export serving now; empty: none, the threshold alone decides.
        champion_margin: How much lower than the champion's AP50 the challenger's may
            be and still pass.
        boxes_page_path: Where to write the HTML page; empty: none.
        page_examples: Images on the page.
        page_min_score: Found boxes scoring less are not drawn (they still count in AP).

    Returns:
        The metrics (``evaluate_detector``, without the images), ``split``, the gate's
        ``gate_metric``, ``threshold``, ``passed``, and ``champion`` when there is one.
    """
    report = evaluate_detector(
        export_dir, dataset_dir, split, examples=page_examples if boxes_page_path else 0
    )
    examples = report.pop("examples")
    report["split"] = split
    quality_gate.apply_threshold(report, "map_50", map50_threshold)
    log.info(
        "%s AP50 %.4f (AP %.4f) on %d images (gate %.2f: %s)",
        split,
        report["map_50"],
        report["map"],
        report["images"],
        map50_threshold,
        "passed" if report["passed"] else "failed",
    )
    if champion_dir:
        report = quality_gate.compare_with_champion(
            report,
            champion_dir,
            lambda champion: evaluate_detector(champion, dataset_dir, split),
            champion_margin,
            kept=CHAMPION_FIGURES,
        )
    if boxes_page_path:
        io.write_text(
            boxes_page_path,
            boxes_page.render_page(
                examples, f"{split} split: true boxes and detections", page_min_score
            ),
        )
    return report
