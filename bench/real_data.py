"""The pipeline on real images it has never seen, to choose and check training defaults.

Builds check sets from real images that packages ship (no download), as folder trees of
JPEGs, then runs the whole pipeline on each (``pipelines.run_local``, demo-sized
training) with the given settings, several times, and prints the test accuracy of each
run and their mean:

- ``digits``: scikit-learn's handwritten digits (UCI, 8x8 grey levels), 10 classes,
  drawn at 48 to 96 px with a random margin.
- ``photos``: patches of six real photographs (scikit-image's astronaut, cat, coffee,
  rocket; scikit-learn's China and flower), one class per photograph, 56 to 160 px.
- ``textures``: patches of three real textures (scikit-image's brick, grass, gravel),
  48 to 128 px: no "up", so right-angle rotations keep their class.

Run: ``.venv/bin/python bench/real_data.py`` (``--sets digits photos``, ``--runs 2``,
``--config "flip=none crop_area_min=0.8"`` repeatable, ``--out DIR`` to keep the sets).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import cpu_model, load_average, usable_cpus  # noqa: E402
from pipelines.run_local import DEMO_SETTINGS, run_local  # noqa: E402


def _save(image: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image.astype(np.uint8)).convert("RGB").save(path, quality=90)


def digits(out: str, per_class: int = 60, seed: int = 0) -> str:
    """scikit-learn's digits as JPEGs of 48-96 px, dark ink on a light ground."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    data = load_digits()
    for label in range(10):
        picks = rng.permutation(np.flatnonzero(data.target == label))[:per_class]
        for i, index in enumerate(picks):
            ink = data.images[index] / 16.0
            side = int(rng.integers(48, 97))
            margin = int(rng.integers(0, side // 6 + 1))
            glyph = Image.fromarray((255 * (1 - ink)).astype(np.uint8)).resize(
                (side - 2 * margin, side - 2 * margin), Image.BILINEAR
            )
            canvas = Image.new("L", (side, side), 255)
            canvas.paste(glyph, (margin, margin))
            _save(np.asarray(canvas), os.path.join(out, str(label), f"{i:03d}.jpg"))
    return out


def _patches(photos: dict, out: str, per_class: int, sides: tuple[int, int], seed: int) -> str:
    rng = np.random.default_rng(seed)
    for label, photo in photos.items():
        photo = np.asarray(photo)
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        height, width = photo.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(sides[0], min(sides[1], height, width) + 1))
            y = int(rng.integers(0, height - side + 1))
            x = int(rng.integers(0, width - side + 1))
            _save(photo[y : y + side, x : x + side, :3], os.path.join(out, label, f"{i:03d}.jpg"))
    return out


def photos(out: str, per_class: int = 80, seed: int = 0) -> str:
    """Patches of six photographs, one class per photograph."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    sources = {
        "astronaut": data.astronaut(),
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "china": china,
        "flower": flower,
    }
    return _patches(sources, out, per_class, (56, 160), seed)


def textures(out: str, per_class: int = 80, seed: int = 0) -> str:
    """Patches of three textures, one class per texture."""
    from skimage import data

    sources = {"brick": data.brick(), "grass": data.grass(), "gravel": data.gravel()}
    return _patches(sources, out, per_class, (48, 128), seed)


SETS = {"digits": digits, "photos": photos, "textures": textures}


def parse_config(text: str) -> dict:
    """``"flip=none crop_area_min=0.8"`` to pipeline parameters (numbers as numbers)."""
    config = {}
    for item in text.split():
        name, _, value = item.partition("=")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        if value in ("true", "false"):
            value = value == "true"
        config[name] = value
    return config


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--config", action="append", help="pipeline parameters, e.g. 'flip=none'")
    p.add_argument("--runs", type=int, default=1, help="pipeline runs per set and config")
    p.add_argument("--out", help="keep the sets and runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    configs = args.config or [""]

    print(f"machine: {cpu_model()}, {usable_cpus()} usable CPUs, load {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        rows = []
        for name in args.sets:
            images = SETS[name](os.path.join(root, "sets", name))
            for config in configs:
                accuracies = []
                for run in range(args.runs):
                    work = os.path.join(
                        root, "runs", name, config.replace(" ", "_") or "defaults", str(run)
                    )
                    start = time.monotonic()
                    summary = run_local(
                        work,
                        image_dir=images,
                        accuracy_threshold=0.0,
                        **{**DEMO_SETTINGS, **parse_config(config)},
                    )
                    accuracy = summary["test_metrics"]["accuracy"]
                    accuracies.append(accuracy)
                    print(
                        f"{name:9} {config or 'defaults':40} run {run}: test accuracy "
                        f"{accuracy:.3f} on {summary['test_metrics']['examples']} images, "
                        f"{summary['training']['epochs_run']:.0f} epochs, "
                        f"{time.monotonic() - start:.0f} s",
                        flush=True,
                    )
                rows.append((name, config or "defaults", accuracies))
    print("\nset       config                                    mean   runs")
    for name, config, accuracies in rows:
        runs = " ".join(f"{a:.3f}" for a in accuracies)
        print(f"{name:9} {config:40} {statistics.mean(accuracies):.3f}  {runs}")


if __name__ == "__main__":
    main()
