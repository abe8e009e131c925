"""Shards sized for training, written as the images are read: each split's records go to
``ceil(stored bytes / target_shard_mb)`` shards (at least 1), each image to the shard a
hash of its URI names.

The count follows the data: it is the bytes the split actually stores, summed in the
pipeline over the checked images (small records, see ``records.ImageRecord``), so shards
come out about ``target_shard_mb`` whether the images are kept as they are or shrunk by
``max_image_side``; ``num_shards`` > 0 forces a count for every split instead. An image's
shard is ``shard_index`` (a CRC-32 of its URI modulo the count): the same shard on every
run of the same data, and a split's images spread evenly over its shards (a shard's size
varies by about one over the square root of its image count).

``WriteShards`` groups the small records by shard path, so one writer makes each shard,
and that writer reads each image again and writes its record straight to the shard file
(``serialize``): no image's bytes are grouped, shuffled or held beyond the one being
written. On the DirectRunner memory stays flat in the size of the data; on Dataflow the
shuffle carries a few hundred bytes per image instead of the image twice.

Why not Beam's ``WriteToTFRecord``: its shards are filled by grouping the serialized
records (the images) or, with runner-chosen sharding, one file per bundle, and its
``max_bytes_per_shard`` is not passed on by ``WriteToTFRecord``; neither gives shards of
a chosen size without moving the images through a shuffle.
"""

from __future__ import annotations

import math
import posixpath
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.common import beam as beam_utils, schema
from components.create_tfrecords.image_checks import ImageRejected
from components.create_tfrecords.records import ERRORS, ImageRecord, reject

TARGET_SHARD_MB = 150.0
_MB = 1024 * 1024


def check_sharding(target_shard_mb: float, num_shards: int) -> None:
    """Raises ValueError when ``target_shard_mb`` is not > 0 or ``num_shards`` < 0."""
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0 (0 = from the data size), got {num_shards}")
    if not (target_shard_mb > 0 and math.isfinite(target_shard_mb)):
        raise ValueError(f"target_shard_mb must be > 0, got {target_shard_mb}")


def shard_count(split_bytes: int, target_shard_mb: float, num_shards: int = 0) -> int:
    """Shards of a split storing ``split_bytes``: ``num_shards`` when > 0, else about
    ``target_shard_mb`` each, at least 1 (an empty split still has its one empty shard)."""
    if num_shards:
        return num_shards
    return max(1, math.ceil(split_bytes / (target_shard_mb * _MB)))


def shard_index(uri: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) of a split that holds the image ``uri``.

    CRC-32 of the URI: cheap, stable across runs and Python processes (unlike ``hash``),
    and independent of ``splits.assign_split``'s SHA-256, so each split's images spread
    evenly over its shards.
    """
    return zlib.crc32(uri.encode("utf-8")) % count


def _shard_path(
    record: ImageRecord, split_bytes: dict[str, int], output_dir: str, target_mb: float, forced: int
) -> tuple[str, ImageRecord]:
    count = shard_count(split_bytes.get(record.split, 0), target_mb, forced)
    index = shard_index(record.uri, count)
    return schema.shard_path(output_dir, record.split, index, count), record


def _every_shard(
    _, split_bytes: dict[str, int], output_dir: str, target_mb: float, forced: int
) -> Iterator[str]:
    for split in schema.SPLITS:
        count = shard_count(split_bytes.get(split, 0), target_mb, forced)
        for i in range(count):
            yield schema.shard_path(output_dir, split, i, count)


class WriteShard(beam.DoFn):
    """Writes one ``(shard path, records)`` group as that TFRecord file, with TensorFlow's
    writer, in the order of the records' digests (the same on every run, and no order of
    URIs or classes); ``None`` records (the marker that the shard must exist) are skipped.

    Each record's bytes come from ``serialize`` (record to serialized ``tf.train.Example``),
    which reads its image; one that raises ``ImageRejected`` goes to ``errors`` and the
    others are written. The main output is each record written, so that what the manifests
    and counts say is what the shards hold. A retried write rewrites the whole file.
    """

    def __init__(self, serialize: Callable[[ImageRecord], bytes]):
        self._serialize = serialize

    def process(self, group: tuple[str, Any]) -> Iterator[Any]:
        import tensorflow as tf

        path, records = group
        records = sorted((r for r in records if r is not None), key=lambda r: (r.sha256, r.uri))
        tf.io.gfile.makedirs(posixpath.dirname(path))
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                try:
                    example = self._serialize(record)
                except ImageRejected as e:
                    yield reject(record.uri, record.label, e.reason, e.detail)
                    continue
                writer.write(example)
                yield record


class WriteShards(beam.PTransform):
    """Checked records (``ImageRecord``) to each split's shards under ``output_dir``.

    Returns ``{"ok": the records written, "errors": the rejections of ``serialize``}``.
    """

    def __init__(
        self,
        output_dir: str,
        serialize: Callable[[ImageRecord], bytes],
        target_shard_mb: float = TARGET_SHARD_MB,
        num_shards: int = 0,
    ):
        super().__init__()
        check_sharding(target_shard_mb, num_shards)
        self._output_dir = output_dir
        self._serialize = serialize
        self._target_mb = target_shard_mb
        self._forced = num_shards

    def expand(self, records: beam.PCollection) -> dict[str, beam.PCollection]:
        settings = {
            "output_dir": self._output_dir,
            "target_mb": self._target_mb,
            "forced": self._forced,
        }
        split_bytes = beam.pvalue.AsDict(
            records
            | "StoredBytes" >> beam.Map(lambda record: (record.split, record.stored_bytes))
            | "BytesPerSplit" >> beam.CombinePerKey(sum)
        )
        every = (
            records.pipeline
            | "Once" >> beam.Create([None], reshuffle=False)
            | "EveryShard" >> beam.FlatMap(_every_shard, split_bytes, **settings)
        )
        written = (
            records
            | "KeyByShard" >> beam.Map(_shard_path, split_bytes, **settings)
            | "GroupByShard" >> beam_utils.GroupByPath(every)
            | "WriteShard"
            >> beam.ParDo(WriteShard(self._serialize)).with_outputs(ERRORS, main="ok")
        )
        return {"ok": written.ok, "errors": written[ERRORS]}


def written_shards(output_dir: str) -> dict[str, dict[str, int]]:
    """The shard files each split has on disk: ``{"files": n, "bytes": total}``."""
    results = FileSystems.match([schema.shard_pattern(output_dir, s) for s in schema.SPLITS])
    return {
        split: {
            "files": len(result.metadata_list),
            "bytes": sum(m.size_in_bytes for m in result.metadata_list),
        }
        for split, result in zip(schema.SPLITS, results, strict=True)
    }
