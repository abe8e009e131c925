"""A deterministic, labelled sample image set the demo and the tests use.

Public datasets cannot be downloaded everywhere this suite runs, so it draws its own:
one class per shape (circle, square, triangle, cross), each drawn in a class-typical hue
with jitter, at a random position, size and rotation, over a noisy gradient background,
saved as JPEGs of varied sizes and qualities. A small CNN tells them apart in a few epochs.

The set is written in both input formats the suite reads::

    <out>/images/<label>/<label>_0000.jpg   the folder tree
    <out>/images.csv                        the book's format: uri,label (no header)
    <out>/labels.txt                        one label per line

Usage::

    python -m pipelines.sample_data --out /tmp/sample --per-class 100
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import dataclasses
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
_HUES = {"circle": 0.0, "square": 0.33, "triangle": 0.62, "cross": 0.14}


@dataclasses.dataclass(frozen=True)
class SampleData:
    """Where a generated sample set lies."""

    image_dir: str
    csv_path: str
    labels_path: str
    labels: tuple[str, ...]
    count: int


def _colour(rng: np.random.Generator, hue: float) -> tuple[int, int, int]:
    h = (hue + rng.uniform(-0.05, 0.05)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(cx: float, cy: float, radius: float, angle: float, corners: int) -> list:
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * i / corners),
            cy + radius * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def shape_mask(
    label: str, size: tuple[int, int], cx: float, cy: float, radius: float, angle: float
) -> Image.Image:
    """A mask (mode ``L``, 255 inside) of one shape of ``label``'s class on an image of
    ``size``; its ``getbbox()`` is the shape's exact box."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if label == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    elif label == "square":
        draw.polygon(_polygon(cx, cy, radius, angle, 4), fill=255)
    elif label == "triangle":
        draw.polygon(_polygon(cx, cy, radius, angle, 3), fill=255)
    elif label == "cross":
        bar = max(2, int(radius * 0.45))
        for a in (angle, angle + math.pi / 2):
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=bar)
    else:
        raise ValueError(f"unknown sample class {label!r}; expected one of {CLASSES}")
    return mask


def background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A soft grey gradient with Gaussian noise."""
    base = rng.uniform(30, 200)
    gradient = np.linspace(0, rng.uniform(-40, 40), width)[None, :, None]
    pixels = base + gradient + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def colour(label: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A fill colour typical of ``label``'s class, with jitter."""
    return _colour(rng, _HUES[label])


def add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pixel noise over the whole picture."""
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(
        0, 8, size=(image.height, image.width, 3)
    )
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def draw_image(label: str, rng: np.random.Generator) -> Image.Image:
    """Draws one image of ``label``'s class (any of ``CLASSES``)."""
    width, height = (int(v) for v in rng.integers(72, 257, size=2))
    image = background(width, height, rng)
    side = min(width, height)
    radius = side * rng.uniform(0.22, 0.38)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = rng.uniform(0, 2 * math.pi)
    fill = colour(label, rng)
    image.paste(fill, mask=shape_mask(label, image.size, cx, cy, radius, angle))
    return add_noise(image, rng)  # Over the whole picture, shape included.


def generate(
    out_dir: str,
    per_class: int = 100,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
) -> SampleData:
    """Writes ``per_class`` JPEGs per class in both input formats; same seed, same bytes.

    Args:
        out_dir: Local directory to write into (created if missing).
        per_class: Images per class.
        seed: Seed of the random generator.
        classes: Which of ``CLASSES`` to draw.

    Returns:
        Where the folder tree, the CSV and the label file were written.
    """
    out_dir = os.path.abspath(out_dir)
    image_dir = os.path.join(out_dir, "images")
    rows = []
    for class_index, label in enumerate(classes):
        # One generator per class: adding a class never changes another's images.
        rng = np.random.default_rng([seed, class_index])
        os.makedirs(os.path.join(image_dir, label), exist_ok=True)
        for i in range(per_class):
            path = os.path.join(image_dir, label, f"{label}_{i:04d}.jpg")
            draw_image(label, rng).save(path, "JPEG", quality=int(rng.integers(70, 96)))
            rows.append((path, label))
    csv_path = os.path.join(out_dir, "images.csv")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    labels_path = os.path.join(out_dir, "labels.txt")
    with open(labels_path, "w") as f:
        f.writelines(f"{label}\n" for label in classes)
    return SampleData(image_dir, csv_path, labels_path, tuple(classes), len(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the sample set into")
    parser.add_argument("--per-class", type=int, default=100, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = generate(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {data.count} images of {len(data.labels)} classes to {data.image_dir}")
    print(f"  csv: {data.csv_path}\n  labels: {data.labels_path}")


if __name__ == "__main__":
    main()
