"""Benchmark: the train stage's input pipeline against the book's float-pixel TFRecords.

Measures, in one process and on the same images (the train split written by
create_tfrecords), how many images per second each input pipeline delivers:

* ours: ``components.train.data.make_dataset(..., training=True)`` on the shards of
  encoded JPEGs: fused random crop (``decode_and_crop_jpeg``), resize, per-image flip and
  brightness/contrast jitter, as the endless stream that training reads. Also with
  ``cache=True`` and the evaluation pipeline (``training=False``, the serving model's
  decoding, one pass at a time), for reference.
* baseline: what "Practical Machine Learning for Computer Vision" reads
  (``07_training/flowers/flowers/ingest/tfrecords.py``): gzip records of ``jpeg_to_tfrecord.py``
  (the float32 pixels in [0, 1] at the image's own size as a ``float_list``, with ``shape``,
  ``label``, ``label_int``), parsed one by one with ``parse_single_example``
  (``VarLenFeature`` image and shape), ``tf.reshape`` to the stored shape,
  ``resize_with_pad`` to the model's size, ``shuffle(200)`` and batched. It gets the same
  parallel reads, ``AUTOTUNE`` maps and ``prefetch`` as ours: only the record format and
  the decoding differ. Its records are written once, before timing, from the JPEG bytes in
  our records (so both see the same pixels), in as many shards as ours but at least one per
  CPU, so that its larger files are decompressed in parallel. The book augments in the
  model (Keras layers on the accelerator), so the baseline does less work on the CPU here.

Each pipeline runs without end (``repeat()``: the book's and our evaluation pipeline
restart at every pass, as Keras restarts them each epoch; our training stream never
ends). After ``--warmup`` batches (start-up, shuffle buffer, compilation) ``--batches``
batches are timed, ``--repeats`` times; the best run is reported (images per second: the
highest; CPU time per image, all of the process's threads: the lowest).

Usage::

    .venv/bin/python bench/input_pipeline.py                       # 400 sample JPEGs
    .venv/bin/python bench/input_pipeline.py --per-class 500 --image-size 224
    .venv/bin/python bench/input_pipeline.py --sample-scale 3     # photo-sized JPEGs
    .venv/bin/python bench/input_pipeline.py --image-dir /data/flowers
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import glob  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tfrecords as tfrecords_bench  # noqa: E402  (bench/tfrecords.py: the book's records)
from machine import cpu_model, usable_cpus  # noqa: E402  (bench/machine.py)
from PIL import Image  # noqa: E402

from components.classification import schema  # noqa: E402
from components.common import schema as common_schema  # noqa: E402
from components.common.labels import LABELS_FILE, read_labels  # noqa: E402
from components.create_tfrecords import beam_pipeline  # noqa: E402
from components.train import data  # noqa: E402
from pipelines import sample_data  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
SPLIT = "train"


def scale_images(image_dir: str, factor: float, seed: int = 0) -> None:
    """Enlarges every JPEG under ``image_dir`` in place by ``factor``: the sample images
    (72 to 256 px) at the size of photos. Fresh pixel noise (as the generator adds) keeps
    them about as hard to compress as before, since decoding cost follows the bits."""
    rng = np.random.default_rng(seed)
    for path in sorted(glob.glob(os.path.join(image_dir, "*", "*.jpg"))):
        with Image.open(path) as image:
            size = (round(image.width * factor), round(image.height * factor))
            pixels = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), np.float32)
        pixels += rng.normal(0, 8, size=pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_baseline(dataset_dir: str, out_dir: str) -> list[str]:
    """The book's float-pixel records of ``dataset_dir``'s train split, from the same JPEG
    bytes, in as many gzip shards as ours but at least one per CPU: a gzip file is
    decompressed by one thread, and the baseline's records are about ten times larger."""
    labels = read_labels(os.path.join(dataset_dir, LABELS_FILE))
    ours = common_schema.shard_files(dataset_dir, SPLIT)
    os.makedirs(out_dir, exist_ok=True)
    shards = max(len(ours), usable_cpus())
    paths = [os.path.join(out_dir, f"{SPLIT}-{i:05d}.tfrecord.gz") for i in range(shards)]
    writers = [tf.io.TFRecordWriter(p, options="GZIP") for p in paths]
    try:
        records = common_schema.read_records(ours)
        for i, serialized in enumerate(records):
            features = schema.parse_examples(serialized)
            label = int(features[schema.LABEL])
            pixels = tfrecords_bench.decode_float_bytes(features[schema.ENCODED])
            writers[i % len(writers)].write(
                tfrecords_bench.float_example(pixels, labels[label], label)
            )
    finally:
        for writer in writers:
            writer.close()
    return paths


def baseline_dataset(files: list[str], image_size: int, batch_size: int) -> tf.data.Dataset:
    """The book's reading of its records, with the same parallelism as ours."""
    description = {
        "image": tf.io.VarLenFeature(tf.float32),
        "shape": tf.io.VarLenFeature(tf.int64),
        "label": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label_int": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }

    def read_from_tfr(proto):
        record = tf.io.parse_single_example(proto, description)
        shape = tf.sparse.to_dense(record["shape"])
        image = tf.reshape(tf.sparse.to_dense(record["image"]), shape)
        return image, record["label_int"]

    def preprocess(image, label):
        return tf.image.resize_with_pad(image, image_size, image_size), label

    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files))
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=False,
    )
    ds = ds.map(read_from_tfr, num_parallel_calls=AUTOTUNE, deterministic=False)
    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.shuffle(200).batch(batch_size).prefetch(AUTOTUNE)


def measure(make: Callable[[], tf.data.Dataset], warmup: int, batches: int) -> tuple[float, float]:
    """Images per second (wall clock) and CPU milliseconds per image (all of this process's
    threads) over ``batches`` batches of a fresh, endlessly repeated pipeline, after
    ``warmup`` batches. The CPU time is the steadier measure when other processes share
    the CPUs."""
    iterator = iter(make().repeat())
    for _ in range(warmup):
        next(iterator)
    images = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images += int(next(iterator)[1].shape[0])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return images / seconds, 1000 * cpu / images


def machine_lines() -> list[str]:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs "
        f"({usable_cpus()} usable), load average before the run {load}",
        f"platform: {platform.platform()}, python {platform.python_version()}, "
        f"tensorflow {tf.__version__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100, help="sample JPEGs per class")
    parser.add_argument("--image-dir", help="your own <label>/<image> tree instead of samples")
    parser.add_argument(
        "--sample-scale",
        type=float,
        default=1.0,
        help="enlarge the sample JPEGs by this factor (3: about photo size, 216 to 768 px)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="model input side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline; best kept")
    parser.add_argument(
        "--extras",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ours with cache=True and our evaluation pipeline",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if min(args.per_class, args.image_size, args.batch_size, args.batches, args.repeats) < 1:
        parser.error("sizes and counts must be >= 1")
    if args.sample_scale <= 0:
        parser.error("--sample-scale must be > 0")
    logging.getLogger().setLevel(logging.ERROR)

    header = machine_lines()
    work = tempfile.mkdtemp(prefix="bench-input-")
    try:
        if args.image_dir:
            image_dir = os.path.abspath(args.image_dir)
        else:
            image_dir = sample_data.generate(work, per_class=args.per_class, seed=0).image_dir
            if args.sample_scale != 1.0:
                scale_images(image_dir, args.sample_scale)
        dataset_dir = os.path.join(work, "ours")
        beam_pipeline.run(dataset_dir, image_dir=image_dir)
        count = common_schema.split_size(dataset_dir, SPLIT)
        start = time.perf_counter()
        baseline_files = write_baseline(dataset_dir, os.path.join(work, "baseline"))
        write_seconds = time.perf_counter() - start

        def bytes_per_image(files: list[str]) -> float:
            return sum(map(os.path.getsize, files)) / count

        size, batch = args.image_size, args.batch_size
        pipelines = {
            "ours (training)": lambda: data.make_dataset(
                dataset_dir, SPLIT, size, batch, training=True
            ),
            "baseline (book)": lambda: baseline_dataset(baseline_files, size, batch),
        }
        if args.extras:
            pipelines["ours (training, cache=True)"] = lambda: data.make_dataset(
                dataset_dir, SPLIT, size, batch, training=True, cache=True
            )
            pipelines["ours (evaluation)"] = lambda: data.make_dataset(
                dataset_dir, SPLIT, size, batch
            )
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):  # alternate, so that load changes hit all alike
            for name, make in pipelines.items():
                runs[name].append(measure(make, args.warmup, args.batches))

        print(f"\ncommand: {' '.join(shlex.quote(a) for a in ['python', *sys.argv])}")
        for line in header:
            print(line)
        ours_files = common_schema.shard_files(dataset_dir, SPLIT)
        print(
            f"input: the {count} train images of {image_dir} ({len(ours_files)} shard(s), "
            f"{bytes_per_image(ours_files):,.0f} bytes/image ours; {len(baseline_files)} "
            f"shard(s), {bytes_per_image(baseline_files):,.0f} bytes/image baseline, written "
            f"in {write_seconds:.1f} s); "
            f"{size} px, batch {batch}, {args.warmup} warm-up + {args.batches} timed batches, "
            f"best of {args.repeats}"
        )
        print(f"\n{'pipeline':<30} {'images/s':>9} {'CPU ms/image':>13}  images/s of each run")
        best = {name: max(r[0] for r in rates) for name, rates in runs.items()}
        cpu = {name: min(r[1] for r in rates) for name, rates in runs.items()}
        for name, rates in runs.items():
            each = ", ".join(f"{r[0]:,.0f}" for r in rates)
            print(f"{name:<30} {best[name]:>9,.0f} {cpu[name]:>13.2f}  {each}")
        ours, base = "ours (training)", "baseline (book)"
        print(
            f"\nours (training) / baseline: {best[ours] / best[base]:.2f}x images/s, "
            f"{cpu[base] / cpu[ours]:.2f}x less CPU per image"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
