"""Detection training: COCO AP against minutes on this machine, for a few configurations.

Generates the sample detection set (``pipelines.sample_detection_data``), writes its
records once (``components.detection.create_tfrecords``), then for each configuration
trains the detector (``components.detection.training.train``), exports it and scores the
export on the valid and test splits with pycocotools (``evaluation.evaluate_detector``).
The first configuration is the baseline: each other prints its time and AP50 as ratios
of it, all measured in the same run on the same records.

A configuration is ``name:key=value,key=value`` over ``train``'s parameters, e.g.::

    .venv/bin/python bench/detection_training.py --images 600 --epochs 30 \\
        --config "transposed:upsampling=transposed,scale_min=1" \\
        --config "bilinear:upsampling=bilinear,scale_min=1" \\
        --config "bilinear+crop:upsampling=bilinear,scale_min=0.6"

``--voc-dir`` measures on a Pascal VOC folder of your own instead of the generated set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.detection import create_tfrecords, evaluation, export, training  # noqa: E402
from pipelines import sample_detection_data  # noqa: E402


def parse_config(text: str) -> tuple[str, dict]:
    """``name:key=value,...`` to a name and train keyword arguments (numbers parsed)."""
    name, _, pairs = text.partition(":")
    kwargs = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="generated images")
    parser.add_argument("--voc-dir", default="", help="a VOC folder instead of generated data")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--config", action="append", default=[], help="name:key=value,...")
    parser.add_argument("--work-dir", default="")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config] or [("defaults", {})]
    work = args.work_dir or tempfile.mkdtemp(prefix="detection_bench_")
    dataset = os.path.join(work, "dataset")
    if not os.path.exists(os.path.join(dataset, "stats.json")):
        voc_dir = args.voc_dir
        if not voc_dir:
            voc_dir = sample_detection_data.generate(
                os.path.join(work, "data"), images=args.images
            ).voc_dir
        create_tfrecords.run(dataset, voc_dir=voc_dir)
    with open(os.path.join(dataset, "stats.json")) as f:
        stats = json.load(f)
    print(f"records: {stats['splits']} in {dataset}", flush=True)
    rows = []
    for name, kwargs in configs:
        model_dir, export_dir = (os.path.join(work, name, d) for d in ("model", "export"))
        start = time.perf_counter()
        config = training.train(
            dataset,
            model_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        export.export_detector(model_dir, export_dir)
        valid = evaluation.evaluate_detector(export_dir, dataset, "valid")
        test = evaluation.evaluate_detector(export_dir, dataset, "test")
        images = config["epochs_run"] * int(stats["splits"]["train"])
        rows.append((name, config["epochs_run"], seconds, images / seconds, valid, test))
        print(
            f"{name}: {config['epochs_run']} epochs, {seconds:.0f} s, "
            f"{images / seconds:.1f} images/s, valid AP50 {valid['map_50']:.3f}, "
            f"test AP50 {test['map_50']:.3f}, test mAP {test['map']:.3f}",
            flush=True,
        )
    base = rows[0]
    print(f"\nbaseline: {base[0]}; {args.image_size} px, batch {args.batch_size}")
    print(
        "| config | epochs | train s | images/s | valid AP50 | test AP50 | test mAP | speed x | AP50 x |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, epochs, seconds, rate, valid, test in rows:
        print(
            f"| {name} | {epochs} | {seconds:.0f} | {rate:.1f} | {valid['map_50']:.3f} | "
            f"{test['map_50']:.3f} | {test['map']:.3f} | {rate / base[3]:.2f} | "
            f"{test['map_50'] / max(base[5]['map_50'], 1e-9):.2f} |"
        )


if __name__ == "__main__":
    main()
