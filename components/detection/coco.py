"""A split's ground truth as COCO JSON: what pycocotools' ``COCO`` loads and ``COCOeval``
scores detections against.

Images are numbered from 1 in the order of their URIs (the same ids on every run of the
same split), each with its URI as ``file_name``; boxes are ``[x, y, width, height]`` in
pixels of the stored image (the records' height and width), ``area`` the box's,
``iscrowd`` the record's. Category ids are the label map's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from components.common import io
from components.detection.boxes import Box, area
from components.detection.schema import class_ids

COCO_DIR = "coco"


def coco_path(dataset_dir: str, split: str) -> str:
    """Where create_tfrecords writes a split's ground truth: ``<dataset>/coco/<split>.json``."""
    return io.join(dataset_dir, COCO_DIR, f"{split}.json")


def ground_truth(
    images: Iterable[tuple[str, int, int, Sequence[Box]]], labels: Sequence[str]
) -> dict:
    """The COCO ground-truth document of ``(uri, height, width, boxes)`` images."""
    ids = class_ids(labels)
    coco_images, annotations = [], []
    for image_id, (uri, height, width, boxes) in enumerate(
        sorted(images, key=lambda image: image[0]), start=1
    ):
        coco_images.append({"id": image_id, "file_name": uri, "height": height, "width": width})
        for box in boxes:
            x, y = box.xmin * width, box.ymin * height
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[box.label],
                    "bbox": [x, y, box.xmax * width - x, box.ymax * height - y],
                    "area": area(box, width, height),
                    "iscrowd": box.is_crowd,
                }
            )
    return {
        "info": {"description": "ground truth written by create_tfrecords"},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in ids.items()],
    }
