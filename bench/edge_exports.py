"""Benchmark: the export_edge stage on an export (a classifier's or a detector's): each
format's agreement with the SavedModel, file size, conversion seconds, and latency per
image against the SavedModel's.

Runs ``components.export_edge.edge.export_edge`` on ``--export-dir`` and
``--dataset-dir`` (its figures as the stage reports them), then times one image at a
time on the ``--split`` split's images, ``--repeat`` passes after one warm-up image:
the SavedModel's ``serving_default`` on the encoded bytes (decoding included, as served),
each TFLite model with ``tf.lite.Interpreter`` (default threads, XNNPACK) on the decoded
pixels, and the TF.js model in Node.js (``check.cjs``: pure-JS CPU backend), when Node.js
is there. Prints a JSON object and a Markdown table.

    .venv/bin/python bench/edge_exports.py --export-dir RUN/export-detector/exported_model \\
        --dataset-dir RUN/create-detection-tfrecords/dataset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.common import serving  # noqa: E402
from components.export_edge import edge, tfjs, tflite  # noqa: E402


def _median_ms(run, images, repeat: int) -> float:
    run(images[0])  # warm-up
    times = []
    for _ in range(repeat):
        for image in images:
            start = time.perf_counter()
            run(image)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def latencies(result: dict, export_dir: str, images, tflite_dir: str, tfjs_dir: str, repeat):
    """Median milliseconds per image of the SavedModel and of every format."""
    import tensorflow as tf

    reference = serving.load_signature(export_dir)
    (name,) = reference.structured_input_signature[1]
    out = {
        "saved_model": _median_ms(
            lambda e: reference(**{name: tf.constant([e[0]])}), images, repeat
        )
    }
    for kind, file in edge.TFLITE_FILES.items():
        with open(os.path.join(tflite_dir, file), "rb") as f:
            run = tflite.Runner(f.read())
        out[kind] = _median_ms(lambda e, run=run: run(e[1]), images, repeat)
    runtime, why_not = tfjs.node_runtime()
    if runtime:
        with tempfile.TemporaryDirectory() as work:
            check = tfjs.NodeCheck(tfjs_dir, runtime, work, result["outputs"]["tfjs"])
            for _ in range(repeat):
                for _, pixels in [images[0], *images]:
                    check.add(pixels)
            check.results()
        # Each pass repeats the warm-up image first: drop it.
        times = [ms for i, ms in enumerate(check.milliseconds) if i % (len(images) + 1)]
        out["tfjs"] = float(np.median(times))
    else:
        out["tfjs"] = f"not measured: {why_not}"
    return out


def main(argv: list[str] | None = None) -> None:
    """Measures and prints the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-dir", required=True)
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--min-score", type=float, default=0.3)
    p.add_argument("--representative-images", type=int, default=100)
    p.add_argument("--tfjs-check", default="auto", choices=tfjs.CHECKS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out-dir", default="", help="keep the models here (default: temporary)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as scratch:
        out = args.out_dir or scratch
        tflite_dir, tfjs_dir = os.path.join(out, "tflite"), os.path.join(out, "tfjs")
        start = time.monotonic()
        result = edge.export_edge(
            args.export_dir,
            args.dataset_dir,
            tflite_dir,
            tfjs_dir,
            representative_images=args.representative_images,
            split=args.split,
            tfjs_check=args.tfjs_check,
            min_score=args.min_score,
            float_min_agreement=0.0,  # measured, not enforced
            int8_min_agreement=0.0,
        )
        result["stage_seconds"] = round(time.monotonic() - start, 1)
        images = list(edge.decoded_images(args.dataset_dir, args.split))
        result["milliseconds"] = latencies(
            result, args.export_dir, images, tflite_dir, tfjs_dir, args.repeat
        )
    print(json.dumps(result, indent=1, default=str))
    ms = result["milliseconds"]
    print(f"\nSavedModel (encoded bytes, decoding included): {ms['saved_model']:.1f} ms/image")
    print("| format | agreement | size | conversion s | ms / image |\n|---|---:|---:|---:|---:|")
    for kind in edge.FORMATS:
        figures = result["agreement"][kind]
        latency = ms[kind] if isinstance(ms[kind], str) else f"{ms[kind]:.1f}"
        print(
            f"| {kind} | {figures['agreement']:.3f} | {result['sizes'][kind] / 1e6:.2f} MB "
            f"| {result['seconds'][kind]} | {latency} |"
        )


if __name__ == "__main__":
    main()
