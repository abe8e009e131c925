"""Photo-sized JPEGs for the benchmarks, made quickly: a ``<label>/<image>.jpg`` tree of
any total size.

A few base pictures (1024 x 768, smooth shading, discs of flat colour and Gaussian noise,
quality 90: about 170 KB each, the size of a phone photo scaled for the web) are encoded
once; every file is one of them with its own JPEG comment segment (``COM``, ``FF FE``)
after the start-of-image marker. So every file is a valid JPEG with distinct bytes (no
two are duplicates to create_tfrecords), decodes to its base picture's pixels, and
gigabytes are written at disk speed instead of being encoded one by one.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 1024, 768
BASE_PICTURES = 24
LABELS = ("bicycle", "bus", "car", "person")


def base_pictures(count: int = BASE_PICTURES, seed: int = 0) -> list[bytes]:
    """``count`` distinct photo-sized JPEGs (about 170 KB each)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pictures = []
    for _ in range(count):
        shade = rng.uniform(0.3, 1.0, 3)
        base = np.stack(
            [x * 255 / WIDTH * shade[0], y * 255 / HEIGHT * shade[1], (x + y) * shade[2] / 7],
            axis=-1,
        )
        for _ in range(12):
            cx, cy, r = rng.integers(0, WIDTH), rng.integers(0, HEIGHT), rng.integers(30, 200)
            base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90)
        pictures.append(out.getvalue())
    return pictures


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a ``COM`` segment holding ``text`` right after its SOI marker."""
    payload = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def write_tree(root: str, total_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Writes photo-sized JPEGs under ``root/<label>/`` until ``total_bytes`` are on disk.

    Returns:
        ``(files, bytes)`` written.
    """
    pictures = base_pictures(seed=seed)
    for label in LABELS:
        os.makedirs(os.path.join(root, label), exist_ok=True)
    files = written = 0
    while written < total_bytes:
        label = LABELS[files % len(LABELS)]
        data = with_comment(pictures[files % len(pictures)], f"bench photo {seed}-{files}")
        with open(os.path.join(root, label, f"photo_{files:06d}.jpg"), "wb") as f:
            f.write(data)
        files += 1
        written += len(data)
    return files, written
