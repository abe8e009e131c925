"""Shards sized for training: how many TFRecord shards each split gets.

The shard count is fixed before the pipeline runs (each record's shard is a hash of its
URI, ``shard_index``, which spreads a split's records evenly over its count and puts an
image in the same shard on every run), so it comes from an estimate of the input bytes
made by the driver, cheaply:

* **Folder tree**: one ``FileSystems.match`` per class folder lists every image file with
  its size (a listing, no read): the exact input bytes.
* **CSV**: the first ``CSV_SAMPLE_LINES`` lines are read and the images they name are
  stat-ed (in parallel; a missing one counts 0 bytes). Their bytes per byte of CSV text,
  times the CSVs' total size, estimate the whole input (exact when the sample is all
  there is). With a compressed CSV the text is larger than the file, so the estimate is
  low: pass ``num_shards`` there if the shards come out too large.

A split's estimated bytes are the input bytes times its fraction; its shard count is
``ceil(bytes / target_shard_mb)``, at least 1. Stored bytes are at most the input bytes
for JPEGs (kept as they are) and usually smaller for images that are resized or
re-encoded, so shards come out at most about the target, or smaller. ``num_shards`` > 0
forces a count for every split instead.

Why not Beam's ``max_bytes_per_shard``: Beam 2.77's ``FileBasedSink`` has it, but
``WriteToTFRecord`` does not pass it on, and it only caps files when the runner chooses
the sharding (one file per bundle), which on Dataflow gives many small files; it never
fills a shard up to the target.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from concurrent.futures import ThreadPoolExecutor

from apache_beam.io.filesystems import FileSystems

from components.common import beam as beam_utils, io, schema
from components.create_tfrecords import inputs
from components.create_tfrecords.splits import split_fractions

TARGET_SHARD_MB = 150.0
CSV_SAMPLE_LINES = 500
_STAT_THREADS = 16
_MB = 1024 * 1024

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputEstimate:
    """The driver's estimate of the input.

    Attributes:
        input_bytes: Estimated bytes of the images to read.
        images: Estimated number of images (exact for a folder tree).
        method: How it was made: ``folder_listing``, ``csv_complete`` or ``csv_sample``.
        sampled: Images stat-ed (CSV) or listed (folder).
    """

    input_bytes: int
    images: int
    method: str
    sampled: int


def _size(uri: str) -> int:
    try:
        found = FileSystems.match([uri])[0].metadata_list
    except Exception:  # A missing or unreadable file is rejected later; it stores nothing.
        return 0
    return sum(m.size_in_bytes for m in found if m.path.rstrip("/") == uri.rstrip("/"))


def estimate_folder(image_dir: str, labels: list[str]) -> InputEstimate:
    """The exact bytes and count of the image files under the labels' folders."""
    dirs = [name for name in inputs.class_dirs(image_dir) if name in set(labels)]
    if not dirs:
        return InputEstimate(0, 0, "folder_listing", 0)
    results = FileSystems.match([io.join(image_dir, name, "*") for name in dirs])
    files = [
        m for result in results for m in result.metadata_list if inputs.has_image_extension(m.path)
    ]
    total = sum(m.size_in_bytes for m in files)
    return InputEstimate(total, len(files), "folder_listing", len(files))


def _sample_lines(paths: list[str], limit: int) -> tuple[list[tuple[str, str]], int, bool]:
    """Up to ``limit`` ``(csv file, line)`` from the start of the CSVs, the bytes they
    take, and whether that is all of them."""
    lines, nbytes = [], 0
    for path in paths:
        with FileSystems.open(path) as f:
            while True:
                if len(lines) >= limit:
                    return lines, nbytes, False
                raw = f.readline()
                if not raw:
                    break
                nbytes += len(raw)
                lines.append((path, raw.decode("utf-8", errors="replace")))
    return lines, nbytes, True


def estimate_csv(csv_uri: str, labels: list[str], sample_lines: int = CSV_SAMPLE_LINES):
    """Estimates the input bytes of a CSV listing from a sample of its first lines."""
    matched = sorted(
        (m for m in FileSystems.match([csv_uri])[0].metadata_list), key=lambda m: m.path
    )
    csv_bytes = sum(m.size_in_bytes for m in matched)
    lines, sample_bytes, complete = _sample_lines([m.path for m in matched], sample_lines)
    known = set(labels)
    uris = []
    for path, line in lines:
        try:
            fields = beam_utils.parse_csv_line(line)
        except Exception:
            continue
        if len(fields) == 2 and fields[1] in known:
            uris.append(beam_utils.resolve_listed_uri(fields[0], path))
    unique = sorted(set(uris))
    with ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        sizes = dict(zip(unique, pool.map(_size, unique), strict=True))
    sampled_bytes = sum(sizes.values())
    if complete or not sample_bytes:
        return InputEstimate(sampled_bytes, len(unique), "csv_complete", len(unique))
    scale = csv_bytes / sample_bytes
    return InputEstimate(
        round(sum(sizes[uri] for uri in uris) * scale),
        round(len(uris) * scale),
        "csv_sample",
        len(unique),
    )


def estimate_input(csv_uri: str, image_dir: str, labels: list[str]) -> InputEstimate:
    """``estimate_csv`` or ``estimate_folder``, whichever input is given."""
    if csv_uri:
        return estimate_csv(csv_uri, labels)
    return estimate_folder(image_dir, labels)


def shards_per_split(
    input_bytes: int,
    train_fraction: float,
    valid_fraction: float,
    target_shard_mb: float = TARGET_SHARD_MB,
    num_shards: int = 0,
) -> dict[str, int]:
    """Shards of each split: ``num_shards`` when > 0, else about ``target_shard_mb`` each.

    Raises:
        ValueError: when ``target_shard_mb`` is not > 0 or ``num_shards`` < 0.
    """
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0 (0 = from the data size), got {num_shards}")
    if not (target_shard_mb > 0 and math.isfinite(target_shard_mb)):
        raise ValueError(f"target_shard_mb must be > 0, got {target_shard_mb}")
    if num_shards:
        return dict.fromkeys(schema.SPLITS, num_shards)
    target = target_shard_mb * _MB
    fractions = split_fractions(train_fraction, valid_fraction)
    return {
        split: max(1, math.ceil(input_bytes * fractions[split] / target)) for split in schema.SPLITS
    }


def shard_index(uri: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) of a split that holds the image ``uri``.

    CRC-32 of the URI: cheap, stable across runs and Python processes (unlike ``hash``),
    and independent of ``splits.assign_split``'s SHA-256, so each split's images spread
    evenly over its shards.
    """
    return zlib.crc32(uri.encode("utf-8")) % count


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
