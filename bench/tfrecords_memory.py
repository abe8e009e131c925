"""Benchmark: create_tfrecords' peak memory and time at two input sizes, in one run.

Writes two trees of photo-sized JPEGs (``bench/photos.py``: about 170 KB each, distinct
bytes; default 300 MB and 1.5 GB), then for each runs the stage as a user does, in a
process of its own (``components.create_tfrecords.beam_pipeline.run`` on the folder
tree with its defaults: DirectRunner, one process), and reports:

* the process's peak resident memory (``ru_maxrss`` of that child alone, ``os.wait4``:
  imports, Beam and everything the run held at its worst moment);
* the run's seconds (``run`` alone, measured in the child) and the whole process's;
* the ratios between the two sizes: memory (flat is 1.0) and time against data.

Next to them, measured in the same run: the book's converter
(``bench/tfrecords.py``'s baseline, float32 pixels, gzip) on the first
``--baseline-images`` of the small tree, its images per second, and ours' rate against it.

Usage::

    .venv/bin/python bench/tfrecords_memory.py                     # 300 MB and 1.5 GB
    .venv/bin/python bench/tfrecords_memory.py --sizes-mb 100,500 --baseline-images 40
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)


def child(image_dir: str, output_dir: str) -> int:
    """In the measured process: run the stage and print its seconds and counts as JSON."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from components.create_tfrecords import beam_pipeline

    start = time.perf_counter()
    stats = beam_pipeline.run(output_dir, image_dir=image_dir)
    seconds = time.perf_counter() - start
    shards = {split: s["files"] for split, s in stats["shards"].items()}
    print(json.dumps({"seconds": seconds, "kept": stats["kept"], "shards": shards}))
    return 0


def measure(image_dir: str, output_dir: str) -> dict:
    """Runs ``child`` in a new process; its JSON plus ``peak_rss_mib`` and ``wall``."""
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", image_dir, output_dir],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"create_tfrecords failed on {image_dir} (exit status {status})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result.update(peak_rss_mib=usage.ru_maxrss / 1024, wall=wall)  # ru_maxrss is in KiB.
    return result


def shuffled_bytes_per_image(image_dir: str, count: int = 50) -> dict[str, float]:
    """Bytes per image of the elements each grouping of the stage shuffles on Dataflow,
    encoded with the coder Beam gives them (``FastPrimitivesCoder``), over the first
    ``count`` images of the tree. The combines of counts (bytes per split, stats) are
    left out: Dataflow lifts them before the shuffle, a few values per worker."""
    import glob

    from apache_beam.coders import typecoders

    from components.common import schema
    from components.create_tfrecords.records import ReadAndCheckImage, manifest_line

    coder = typecoders.registry.get_coder(object)
    paths = sorted(glob.glob(os.path.join(image_dir, "*", "*.jpg")))[:count]
    labels = sorted({path.split(os.sep)[-2] for path in paths})
    check = ReadAndCheckImage(labels, 0.8, 0.1, 1024)
    check.setup()
    totals: dict[str, float] = {}
    for path in paths:
        label = path.split(os.sep)[-2]
        (record,) = check.process((path, label))
        shard = schema.shard_path(image_dir, record.split, 0, 10)
        manifest = schema.manifest_path(image_dir, record.split)
        sizes = {
            "GroupByUri: (uri, label)": (path, label),
            "KeepOnePerImage: (digest, (record, [(uri, label)]))": (
                record.sha256,
                (record, [(path, label)]),
            ),
            "GroupByShard: (shard path, record)": (shard, record),
            "side files: (path, manifest line)": (manifest, manifest_line(record)),
        }
        for name, element in sizes.items():
            totals[name] = totals.get(name, 0) + len(coder.encode(element)) / len(paths)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="300,1500", help="two input sizes, in MB")
    parser.add_argument("--baseline-images", type=int, default=60)
    parser.add_argument("--work-dir", help="where the trees go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the trees and outputs")
    parser.add_argument(
        "--child", nargs=2, metavar=("IMAGE_DIR", "OUTPUT_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    sizes = [int(v) for v in args.sizes_mb.split(",")]
    if len(sizes) != 2 or min(sizes) <= 0:
        parser.error("--sizes-mb takes two positive sizes, e.g. 300,1500")

    import photos
    from machine import cpu_model, load_average, usable_cpus
    from tfrecords import list_images, run_baseline

    load = load_average()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-tfrecords-memory-")
    results = []
    try:
        for size in sizes:
            tree = os.path.join(work, f"photos-{size}mb")
            if not os.path.isdir(tree):
                photos.write_tree(tree, size * 10**6)
            files = sum(len(names) for _, _, names in os.walk(tree))
            data = sum(
                os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(tree) for n in ns
            )
            result = measure(tree, os.path.join(work, f"out-{size}mb"))
            result.update(size_mb=size, files=files, data_bytes=data)
            results.append(result)
        shuffled = shuffled_bytes_per_image(os.path.join(work, f"photos-{sizes[0]}mb"))
        jpeg_bytes = results[0]["data_bytes"] / results[0]["files"]
        labels, rows, _ = list_images(os.path.join(work, f"photos-{sizes[0]}mb"))
        baseline = run_baseline(
            rows[: args.baseline_images], labels, os.path.join(work, "baseline")
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\ncommand: {' '.join(shlex.quote(a) for a in ['python', *sys.argv])}")
    print(f"CPU: {cpu_model()}, {usable_cpus()} usable CPUs, load average before: {load}")
    print(
        f"\n{'input':<22} {'images':>7} {'peak RSS':>10} {'run s':>7} {'process s':>10} "
        f"{'images/s':>9} {'shards':>14}"
    )
    for r in results:
        shards = "/".join(str(n) for n in r["shards"].values())
        print(
            f"{r['data_bytes'] / 1e6:>8,.0f} MB photo JPEGs {r['kept']:>7} "
            f"{r['peak_rss_mib']:>7,.0f} MiB {r['seconds']:>7.1f} {r['wall']:>10.1f} "
            f"{r['kept'] / r['seconds']:>9.1f} {shards:>14}"
        )
    small, large = results
    data_ratio = large["data_bytes"] / small["data_bytes"]
    print(
        f"\n{data_ratio:.2f}x the data: peak RSS {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x, "
        f"run time {large['seconds'] / small['seconds']:.2f}x "
        f"(whole process {large['wall'] / small['wall']:.2f}x)"
    )
    print(
        f"book's converter (float32 pixels, gzip) on {baseline.images} of these JPEGs: "
        f"{baseline.images_per_second:.1f} images/s; ours "
        + ", ".join(
            f"{r['kept'] / r['seconds'] / baseline.images_per_second:.1f}x at {r['size_mb']} MB"
            for r in results
        )
    )
    print(
        f"\nshuffled on Dataflow per image (a JPEG of {jpeg_bytes:,.0f} bytes), "
        f"by Beam's coder: {sum(shuffled.values()):,.0f} bytes"
    )
    for name, nbytes in shuffled.items():
        print(f"  {name:<55} {nbytes:>7,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
