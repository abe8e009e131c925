"""The dataset layout every task's create_tfrecords writes and its readers find: splits,
shards, manifests, stats and errors. What a record holds is the task's own
(``components.classification.schema``, ``components.detection.schema``).

The shards are not compressed, as TensorFlow's own ImageNet shards are not: gzip saves
under 2% of a JPEG's bytes and costs every reader a decompression of all of them.
Readers still take the gzip shards (``.tfrecord.gz``) that earlier versions wrote.

A dataset directory written by create_tfrecords looks like::

    <dataset>/train/train-00000-of-00002.tfrecord      sharded, uncompressed
    <dataset>/valid/valid-00000-of-00001.tfrecord
    <dataset>/test/test-00000-of-00001.tfrecord
    <dataset>/manifests/<split>.csv                     uri,label of every kept image
    <dataset>/labels.txt                                one label per line
    <dataset>/errors.jsonl                              one rejected input per line
    <dataset>/stats.json                                counts per split and class, sizes, bytes
    <dataset>/report.md                                 the same, for a person
"""

from __future__ import annotations

import csv

import tensorflow as tf

from components.common import io

SPLITS = ("train", "valid", "test")
SHARD_SUFFIX = ".tfrecord"
_GZIP_SUFFIX = ".gz"
STATS_FILE = "stats.json"
ERRORS_FILE = "errors.jsonl"


def shard_pattern(dataset_dir: str, split: str) -> str:
    """The glob that matches one split's shards."""
    return io.join(dataset_dir, split, f"{split}-*{SHARD_SUFFIX}")


def compression_type(files: list[str]) -> str:
    """The ``compression_type`` that reads ``files``: ``"GZIP"`` for ``.gz`` shards."""
    gzip = {f.endswith(_GZIP_SUFFIX) for f in files}
    if len(gzip) > 1:
        raise ValueError(f"a split mixes gzip and uncompressed shards: {sorted(files)}")
    return "GZIP" if gzip == {True} else ""


def read_records(files: list[str]) -> tf.data.TFRecordDataset:
    """The serialised Examples of ``files``, in order."""
    return tf.data.TFRecordDataset(files, compression_type=compression_type(files))


def shard_path(dataset_dir: str, split: str, index: int, count: int) -> str:
    """The file of shard ``index`` (from 0) of a split written as ``count`` shards."""
    return io.join(dataset_dir, split, f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}")


def shard_files(dataset_dir: str, split: str) -> list[str]:
    """One split's shard files (else its gzip shards, from an earlier version); a clear
    error when the split is empty or missing."""
    pattern = shard_pattern(dataset_dir, split)
    files = io.glob(pattern) or io.glob(pattern + _GZIP_SUFFIX)
    if not files:
        raise FileNotFoundError(
            f"no {split} shards under {dataset_dir} (expected {shard_pattern(dataset_dir, split)})"
        )
    return files


def split_size(dataset_dir: str, split: str) -> int:
    """How many images a split holds, from the dataset's ``stats.json``."""
    return int(io.read_json(io.join(dataset_dir, STATS_FILE))["splits"][split])


def manifest_path(dataset_dir: str, split: str) -> str:
    """CSV (``uri,label``) of the images kept in one split."""
    return io.join(dataset_dir, "manifests", f"{split}.csv")


def read_manifest(manifest: str) -> list[tuple[str, str]]:
    """``(uri, label)`` of each image a manifest (``uri,label`` CSV, e.g.
    ``manifest_path(dataset, "test")``) lists, in its order; the header line ``uri,...``
    and blank lines are skipped, a line without a label has ``""``."""
    rows = []
    for fields in csv.reader(io.read_text(manifest).splitlines()):
        if not fields or not fields[0].strip():
            continue
        uri = fields[0].strip()
        if not rows and uri.lower() == "uri":
            continue
        rows.append((uri, fields[1].strip() if len(fields) > 1 else ""))
    return rows
