"""A deterministic sample set for object detection, in the three annotation formats.

Each picture is drawn like the classification samples (``pipelines.sample_data``: a noisy
gradient, shapes in class-typical hues) but holds zero to four shapes of any class at
random places and sizes; about one in ten holds none. Shapes overlap little (at most a
quarter of the smaller box; a shape with no such place after a few tries is left out), so
every shape is mostly visible, and its box is the exact extent of its pixels (the shape's
mask).

The same pictures and boxes are written three ways::

    <out>/voc/JPEGImages/<id>.jpg          Pascal VOC: the images,
    <out>/voc/Annotations/<id>.xml         one XML each (1-based pixel corners, VOC's)
    <out>/coco.json                        COCO JSON over voc/JPEGImages ([x, y, w, h])
    <out>/vertex.jsonl                     Vertex AI JSON Lines (normalized corners)
    <out>/labels.txt                       the classes

Usage::

    python -m pipelines.sample_detection_data --out /tmp/detection --images 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from xml.sax.saxutils import escape

import numpy as np

from pipelines.sample_data import add_noise, background, colour, shape_mask

CLASSES = ("circle", "square", "triangle")
_PLACEMENT_TRIES = 5
_MAX_OVERLAP = 0.25  # of the smaller box


@dataclasses.dataclass(frozen=True)
class DetectionSample:
    """Where a generated detection set lies, and its boxes.

    Attributes:
        voc_dir: The Pascal VOC folder.
        coco_json: The COCO JSON file (its ``file_name`` values relative to ``image_dir``).
        image_dir: The images (``voc_dir/JPEGImages``).
        vertex_jsonl: The Vertex AI JSON Lines file (absolute ``imageGcsUri`` paths).
        labels_path: The class list, one per line.
        labels: The classes.
        boxes: Image path to its ``(class, left, top, right, bottom)`` pixel boxes (right
            and bottom exclusive).
    """

    voc_dir: str
    coco_json: str
    image_dir: str
    vertex_jsonl: str
    labels_path: str
    labels: tuple[str, ...]
    boxes: dict[str, list[tuple[str, int, int, int, int]]]


def draw(rng: np.random.Generator, classes: tuple[str, ...], empty_share: float = 0.1):
    """One picture and its ``(class, left, top, right, bottom)`` boxes."""
    width, height = (int(v) for v in rng.integers(160, 321, size=2))
    image = background(width, height, rng)
    count = 0 if rng.uniform() < empty_share else int(rng.integers(1, 5))
    boxes = []
    for _ in range(count):
        label = classes[int(rng.integers(len(classes)))]
        radius = min(width, height) * rng.uniform(0.08, 0.22)
        # A few tries for a place where the shape hides little of those drawn before
        # (an annotator boxes what is visible; a shape mostly hidden is not boxed).
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            mask = shape_mask(label, image.size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
            box = mask.getbbox()
            if box and all(_overlap(box, other[1:]) <= _MAX_OVERLAP for other in boxes):
                image.paste(colour(label, rng), mask=mask)
                boxes.append((label, *box))
                break
    return add_noise(image, rng), boxes


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """The share of the smaller of two ``(left, top, right, bottom)`` boxes the other
    covers."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def _voc_xml(filename: str, width: int, height: int, boxes) -> str:
    objects = "".join(
        f"  <object>\n    <name>{escape(label)}</name>\n    <pose>Unspecified</pose>\n"
        "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
        f"    <bndbox><xmin>{left + 1}</xmin><ymin>{top + 1}</ymin>"
        f"<xmax>{right}</xmax><ymax>{bottom}</ymax></bndbox>\n  </object>\n"
        for label, left, top, right, bottom in boxes
    )
    return (
        f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(filename)}</filename>\n"
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        f"{objects}</annotation>\n"
    )


def generate(
    out_dir: str, images: int = 200, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> DetectionSample:
    """Writes ``images`` annotated pictures in the three formats; same seed, same bytes."""
    out_dir = os.path.abspath(out_dir)
    voc_dir = os.path.join(out_dir, "voc")
    image_dir = os.path.join(voc_dir, "JPEGImages")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(voc_dir, "Annotations"), exist_ok=True)
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    vertex_lines, all_boxes = [], {}
    for n in range(images):
        picture, boxes = draw(rng, classes)
        name = f"sample_{n:05d}"
        path = os.path.join(image_dir, f"{name}.jpg")
        picture.save(path, "JPEG", quality=int(rng.integers(80, 96)))
        all_boxes[path] = boxes
        width, height = picture.size
        with open(os.path.join(voc_dir, "Annotations", f"{name}.xml"), "w") as f:
            f.write(_voc_xml(f"{name}.jpg", width, height, boxes))
        coco["images"].append(
            {"id": n + 1, "file_name": f"{name}.jpg", "width": width, "height": height}
        )
        for label, left, top, right, bottom in boxes:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": n + 1,
                    "category_id": classes.index(label) + 1,
                    "bbox": [left, top, right - left, bottom - top],
                    "area": (right - left) * (bottom - top),
                    "iscrowd": 0,
                }
            )
        annotations = [
            {
                "displayName": label,
                "xMin": left / width,
                "xMax": right / width,
                "yMin": top / height,
                "yMax": bottom / height,
            }
            for label, left, top, right, bottom in boxes
        ]
        vertex_lines.append(
            json.dumps({"imageGcsUri": path, "boundingBoxAnnotations": annotations})
        )
    coco_json = os.path.join(out_dir, "coco.json")
    with open(coco_json, "w") as f:
        json.dump(coco, f)
    vertex_jsonl = os.path.join(out_dir, "vertex.jsonl")
    with open(vertex_jsonl, "w") as f:
        f.writelines(line + "\n" for line in vertex_lines)
    labels_path = os.path.join(out_dir, "labels.txt")
    with open(labels_path, "w") as f:
        f.writelines(f"{c}\n" for c in classes)
    return DetectionSample(
        voc_dir, coco_json, image_dir, vertex_jsonl, labels_path, tuple(classes), all_boxes
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the sample set into")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sample = generate(args.out, images=args.images, seed=args.seed)
    objects = sum(len(b) for b in sample.boxes.values())
    print(
        f"wrote {len(sample.boxes)} images with {objects} objects of {len(sample.labels)} classes to {args.out}"
    )


if __name__ == "__main__":
    main()
