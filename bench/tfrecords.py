"""Benchmark: create_tfrecords against the book's float-pixel TFRecords.

Converts the same labelled JPEGs two ways in one process and prints, for both, images per
second and bytes per image, and their ratios:

* ours: ``components.create_tfrecords.beam_pipeline.run`` with its default settings
  (DirectRunner, uncompressed shards holding the encoded JPEG bytes), from the folder
  tree (default) or the CSV. The time is the whole call, Beam's pipeline start-up
  included: the honest end-to-end cost. Bytes are the shard files of all splits.
* baseline: what "Practical Machine Learning for Computer Vision" (``jpeg_to_tfrecord.py``)
  stores: each JPEG decoded with ``tf.image.decode_jpeg``, converted with
  ``tf.image.convert_image_dtype`` to float32 in [0, 1], flattened into a ``float_list``
  feature ``image`` with ``shape``, ``label`` and ``label_int``; gzip-compressed like the
  book's (its ``WriteToTFRecord(..., file_name_suffix=".gz")`` infers gzip from the
  suffix). Written efficiently: sequentially in this process, one ``tf.io.TFRecordWriter``
  per split, each image's ``FloatList`` built from the whole NumPy array at once
  (``array.ravel().tolist()``), with the same train/valid/test split of the same images.

With ``--steady-state`` (default) each way also converts one image per class: that run
costs about the fixed cost (for ours, Beam's start-up), and the difference to the full run
gives the marginal cost per image, the steady-state rate.
``--breakdown`` (default) times the per-image steps of both ways outside any pipeline.

Usage::

    .venv/bin/python bench/tfrecords.py                      # 400 sample JPEGs
    .venv/bin/python bench/tfrecords.py --per-class 250 --repeat 3
    .venv/bin/python bench/tfrecords.py --image-dir /data/flowers --input csv
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import cpu_model, usable_cpus  # noqa: E402  (bench/machine.py)

from components.classification import schema  # noqa: E402
from components.common import schema as common_schema  # noqa: E402
from components.create_tfrecords import beam_pipeline, image_checks  # noqa: E402
from pipelines import sample_data  # noqa: E402

try:  # The stage's split function, wherever the stage keeps it.
    from components.create_tfrecords.splits import assign_split  # noqa: E402
except ImportError:
    from components.create_tfrecords.beam_pipeline import assign_split  # noqa: E402

JPEG_EXTENSIONS = (".jpg", ".jpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TRAIN_FRACTION, VALID_FRACTION = 0.8, 0.1  # run()'s defaults.


@dataclasses.dataclass
class Result:
    """One conversion of ``images`` images."""

    seconds: float
    images: int
    bytes: int  # Size of the written TFRecord files, all splits.
    splits: dict[str, int]
    serialized_bytes: int = 0  # Baseline only: the records before gzip.

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def bytes_per_image(self) -> float:
        return self.bytes / self.images


# --------------------------------------------------------------------------- inputs


def list_images(image_dir: str) -> tuple[list[str], list[tuple[str, str]], int]:
    """The labels (sorted folder names), the ``(path, label)`` JPEGs and how many other
    image files (which the baseline's ``decode_jpeg`` cannot read) the tree holds."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"not a directory: {image_dir}")
    labels = sorted(
        name
        for name in os.listdir(image_dir)
        if not name.startswith(".") and os.path.isdir(os.path.join(image_dir, name))
    )
    rows, others = [], 0
    for label in labels:
        for path in sorted(glob.glob(os.path.join(image_dir, label, "*"))):
            lower = path.lower()
            if lower.endswith(JPEG_EXTENSIONS):
                rows.append((os.path.abspath(path), label))
            elif lower.endswith(IMAGE_EXTENSIONS):
                others += 1
    return labels, rows, others


def first_of_each_class(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One image per class: a run this small costs about the fixed cost alone."""
    seen: dict[str, tuple[str, str]] = {}
    for row in rows:
        seen.setdefault(row[1], row)
    return list(seen.values())


def write_csv(rows: list[tuple[str, str]], labels: list[str], folder: str) -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    csv_path, labels_path = os.path.join(folder, "images.csv"), os.path.join(folder, "labels.txt")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(labels_path, "w") as f:
        f.writelines(f"{label}\n" for label in labels)
    return csv_path, labels_path


def copy_tree(rows: list[tuple[str, str]], folder: str) -> str:
    """A ``<label>/<image>`` tree holding copies of ``rows`` (for the small run)."""
    for path, label in rows:
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, label, os.path.basename(path)))
    return folder


# --------------------------------------------------------------------------- ours


def run_ours(
    out_dir: str, *, image_dir: str = "", csv_uri: str = "", labels_uri: str = ""
) -> Result:
    """The suite's stage with its default settings; the whole call is timed."""
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    stats = beam_pipeline.run(out_dir, csv_uri=csv_uri, labels_uri=labels_uri, image_dir=image_dir)
    seconds = time.perf_counter() - start
    shards = [
        f
        for split in common_schema.SPLITS
        for f in glob.glob(common_schema.shard_pattern(out_dir, split))
    ]
    return Result(seconds, stats["kept"], sum(map(os.path.getsize, shards)), dict(stats["splits"]))


# --------------------------------------------------------------------------- baseline


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def decode_float(path: str) -> np.ndarray:
    """The book's ``read_and_decode``: float32 pixels in [0, 1], at the image's own size."""
    return decode_float_bytes(tf.io.read_file(path))


def decode_float_bytes(data: bytes | tf.Tensor) -> np.ndarray:
    """``decode_float`` of JPEG bytes already in memory."""
    image = tf.image.decode_jpeg(data, channels=3)
    return tf.image.convert_image_dtype(image, tf.float32).numpy()


def float_example(pixels: np.ndarray, label: str, label_int: int) -> bytes:
    """The book's ``create_tfrecord`` record, its FloatList built from the whole array."""
    feature = {
        "image": tf.train.Feature(float_list=tf.train.FloatList(value=pixels.ravel().tolist())),
        "shape": _int64_feature(list(pixels.shape)),
        "label": _bytes_feature(label.encode("utf-8")),
        "label_int": _int64_feature([label_int]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def run_baseline(
    rows: list[tuple[str, str]], labels: list[str], out_dir: str, compression: str = "gzip"
) -> Result:
    """Decoded float pixels, sequentially, one TFRecord file per split (gzip like the
    book's, or ``compression="none"``)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    suffix, options = (".tfrecord.gz", "GZIP") if compression == "gzip" else (".tfrecord", "")
    paths = {split: os.path.join(out_dir, f"{split}{suffix}") for split in common_schema.SPLITS}
    label_index = {label: i for i, label in enumerate(labels)}
    splits: Counter = Counter()
    serialized = 0
    start = time.perf_counter()
    writers = {split: tf.io.TFRecordWriter(p, options=options) for split, p in paths.items()}
    try:
        for path, label in rows:
            record = float_example(decode_float(path), label, label_index[label])
            split = assign_split(path, TRAIN_FRACTION, VALID_FRACTION)
            writers[split].write(record)
            splits[split] += 1
            serialized += len(record)
    finally:
        for writer in writers.values():
            writer.close()
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(p) for p in paths.values())
    return Result(
        seconds, len(rows), size, {s: splits[s] for s in common_schema.SPLITS}, serialized
    )


# --------------------------------------------------------------------------- breakdown


def breakdown(
    rows: list[tuple[str, str]], labels: list[str], folder: str, compression: str = "gzip"
) -> tuple[dict[str, float], int, int]:
    """Seconds each per-image step takes over all images, sequentially, outside Beam (both
    ways write with TF's writer here), ours' bytes per image, and the bytes gzip would
    leave of them (what earlier versions wrote, for reference: not timed)."""
    label_index = {label: i for i, label in enumerate(labels)}
    t: Counter = Counter()
    clock = time.perf_counter
    os.makedirs(folder, exist_ok=True)
    ours_path = os.path.join(folder, "ours.tfrecord")
    ours_writer = tf.io.TFRecordWriter(ours_path)
    base_options = "GZIP" if compression == "gzip" else ""
    base_writer = tf.io.TFRecordWriter(os.path.join(folder, "base.tfrecord"), options=base_options)
    ours_raw = 0
    base_write = "baseline: gzip write" if compression == "gzip" else "baseline: write"
    for path, label in rows:
        t0 = clock()
        with open(path, "rb") as f:
            data = f.read()
        t1 = clock()
        checked = image_checks.check_image(data)
        t2 = clock()
        record = schema.make_example(
            checked.encoded, label_index[label], label, path, checked.height, checked.width
        )
        t3 = clock()
        ours_writer.write(record)
        t4 = clock()
        ours_raw += len(record)
        pixels = decode_float(path)
        t5 = clock()
        record = float_example(pixels, label, label_index[label])
        t6 = clock()
        base_writer.write(record)
        t7 = clock()
        t["ours: read file"] += t1 - t0
        t["ours: PIL check"] += t2 - t1
        t["ours: make Example"] += t3 - t2
        t["ours: write"] += t4 - t3
        t["baseline: read + decode_jpeg + float32"] += t5 - t4
        t["baseline: FloatList + Example"] += t6 - t5
        t[base_write] += t7 - t6
    t0 = clock()
    ours_writer.close()
    t["ours: write"] += clock() - t0
    t0 = clock()
    base_writer.close()
    t[base_write] += clock() - t0
    with open(ours_path, "rb") as f:
        ours_gz = len(gzip.compress(f.read(), compresslevel=6))
    return dict(t), ours_raw, ours_gz


# --------------------------------------------------------------------------- report


def machine(load: tuple[float, ...]) -> list[str]:
    load_text = ", ".join(f"{v:.2f}" for v in load) or "?"
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs ({usable_cpus()} usable), "
        f"load average before the run {load_text}",
        f"platform: {platform.platform()}",
        f"python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"apache-beam {beam.__version__}, numpy {np.__version__}, pillow {PIL.__version__}",
    ]


def best(results: list[Result]) -> Result:
    return min(results, key=lambda r: r.seconds)


def steady(full: Result, part: Result) -> tuple[float, float] | None:
    """Marginal images per second and fixed seconds, from two sizes (None when the
    difference is lost in noise)."""
    extra_images, extra_seconds = full.images - part.images, full.seconds - part.seconds
    if extra_images <= 0 or extra_seconds <= 0:
        return None
    per_image = extra_seconds / extra_images
    return 1 / per_image, full.seconds - full.images * per_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100, help="sample JPEGs per class")
    parser.add_argument("--image-dir", help="your own <label>/<image> tree instead of samples")
    parser.add_argument(
        "--input",
        choices=("tree", "csv"),
        default="tree",
        help="how ours reads the images: the folder tree (default) or a uri,label CSV",
    )
    parser.add_argument(
        "--baseline-compression",
        choices=("gzip", "none"),
        default="gzip",
        help="the baseline's files: gzip like the book's (default) or uncompressed",
    )
    parser.add_argument("--repeat", type=int, default=1, help="take the best of N runs")
    parser.add_argument(
        "--steady-state",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also convert one image per class, to separate the fixed cost (start-up) "
        "from the per-image rate",
    )
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each per-image step outside Beam",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.per_class < 1:
        parser.error("--repeat and --per-class must be >= 1")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)

    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    work = tempfile.mkdtemp(prefix="bench-tfrecords-")
    try:
        if args.image_dir:
            image_dir = os.path.abspath(args.image_dir)
        else:
            image_dir = sample_data.generate(work, per_class=args.per_class).image_dir
        labels, rows, others = list_images(image_dir)
        if not rows:
            parser.error(f"no JPEG under {image_dir}/<label>/")
        mode = args.input
        if others and mode == "tree":
            print(f"note: {others} non-JPEG image(s) in the tree; ours reads a CSV of the JPEGs")
            mode = "csv"

        def ours(subset: list[tuple[str, str]], tag: str) -> Result:
            if mode == "csv":
                csv_path, labels_path = write_csv(subset, labels, os.path.join(work, f"csv-{tag}"))
                return run_ours(
                    os.path.join(work, f"ours-{tag}"), csv_uri=csv_path, labels_uri=labels_path
                )
            tree = (
                image_dir
                if subset is rows
                else copy_tree(subset, os.path.join(work, f"tree-{tag}"))
            )
            return run_ours(os.path.join(work, f"ours-{tag}"), image_dir=tree)

        small = first_of_each_class(rows)
        runs: dict[str, list[Result]] = {
            "ours": [],
            "baseline": [],
            "ours-small": [],
            "baseline-small": [],
        }
        for _ in range(args.repeat):
            runs["ours"].append(ours(rows, "full"))
            runs["baseline"].append(
                run_baseline(
                    rows, labels, os.path.join(work, "base-full"), args.baseline_compression
                )
            )
            if args.steady_state:
                runs["ours-small"].append(ours(small, "small"))
                runs["baseline-small"].append(
                    run_baseline(
                        small, labels, os.path.join(work, "base-small"), args.baseline_compression
                    )
                )
        o, b = best(runs["ours"]), best(runs["baseline"])

        command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
        print(f"\ncommand: {command}")
        for line in machine(load):
            print(line)
        if load and load[0] > 0.5 * usable_cpus():
            print("note: other processes were using the CPUs; the numbers may be noisy")
        source = "sample JPEGs" if not args.image_dir else "JPEGs"
        sizes = sum(os.path.getsize(p) for p, _ in rows)
        print(
            f"input: {len(rows)} {source} of {len(labels)} classes from {image_dir} "
            f"({sizes / len(rows):,.0f} bytes per JPEG on disk); ours reads the {mode}; "
            f"best of {args.repeat} run(s)"
        )
        print()
        print(
            f"{'':<10} {'seconds':>8} {'images/s':>9} {'bytes/image':>12}  splits (train/valid/test)"
        )
        for name, r in (("ours", o), ("baseline", b)):
            split_text = "/".join(str(r.splits.get(s, 0)) for s in common_schema.SPLITS)
            print(
                f"{name:<10} {r.seconds:>8.2f} {r.images_per_second:>9.1f} "
                f"{r.bytes_per_image:>12,.0f}  {split_text}"
            )
        print(
            f"\nours/baseline speed: {o.images_per_second / b.images_per_second:.2f}x   "
            f"baseline/ours size: {b.bytes_per_image / o.bytes_per_image:.2f}x"
        )
        raw = b.serialized_bytes / b.images
        if args.baseline_compression == "gzip":
            what = f"gzip like the book's ({raw:,.0f} bytes/image before gzip)"
        else:
            what = "uncompressed (the book writes gzip)"
        print(f"(ours includes Beam's pipeline start-up; the baseline's files are {what})")
        same = o.images == b.images and o.splits == b.splits
        print(f"same images and splits in both: {'yes' if same else 'NO'}")

        if args.steady_state:
            print(
                f"\nsteady state: fixed cost = a run on {len(small)} image(s), one per class; "
                "marginal rate = extra images / extra seconds of the full run:"
            )
            rates = {}
            for name in ("ours", "baseline"):
                full, part = best(runs[name]), best(runs[f"{name}-small"])
                fit = steady(full, part)
                rates[name] = fit
                if fit is None:
                    print(
                        f"  {name:<9} too noisy to fit ({part.images} images: {part.seconds:.2f} s)"
                    )
                else:
                    print(
                        f"  {name:<9} fixed cost {part.seconds:5.2f} s, then {fit[0]:>7.1f} images/s"
                    )
            if rates["ours"] and rates["baseline"]:
                print(
                    f"  ours/baseline steady-state speed: {rates['ours'][0] / rates['baseline'][0]:.2f}x"
                )

        if args.breakdown:
            print("\nper-image steps, sequential, outside Beam (ms per image):")
            steps, ours_raw, ours_gz = breakdown(
                rows, labels, os.path.join(work, "breakdown"), args.baseline_compression
            )
            for prefix in ("ours", "baseline"):
                total = 0.0
                for step, seconds in steps.items():
                    if step.startswith(prefix + ":"):
                        total += seconds
                        print(f"  {step:<42} {1000 * seconds / len(rows):7.2f}")
                print(f"  {prefix + ': total':<42} {1000 * total / len(rows):7.2f}")
            work_ours = sum(s for k, s in steps.items() if k.startswith("ours:"))
            print(
                f"  ours end to end: {1000 * o.seconds / o.images:.2f} ms per image, of which "
                f"{1000 * work_ours / o.images:.2f} the steps above"
            )
            print(
                f"  ours' records: {ours_raw / len(rows):,.0f} bytes/image; gzip (as earlier "
                f"versions wrote) would leave {ours_gz / len(rows):,.0f}"
            )
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
