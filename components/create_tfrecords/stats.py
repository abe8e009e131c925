"""The run's counts, combined in the pipeline into the dict written to ``stats.json``.

Kept images are counted per split and class, with their stored bytes per split, what was
converted (``format``, ``mode``, ``orientation``, ``resized``) and the distribution of the
stored sizes (width and height min/median/max; a histogram of the long side in
power-of-two buckets). Rejections are counted per reason with a few examples (the
smallest URIs, so the same input gives the same examples); skipped inputs (header and
blank lines, repeated lines, non-image files) per kind. For detection (``objects``) the
classes count objects rather than images, with the objects per split, the images without
any, and the boxes clipped to their image.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from components.common import schema
from components.create_tfrecords.records import ImageRecord

EXAMPLES_PER_REASON = 3
CONVERSIONS = ("format", "mode", "orientation", "resized")
IGNORED_KINDS = ("csv_header_lines", "blank_lines", "repeated_uri_lines", "non_image_files")
# Lower bounds of the long-side histogram's buckets, in pixels.
LONG_SIDE_BUCKETS = (0, 64, 128, 256, 512, 1024, 2048, 4096)


def long_side_bucket(long_side: int) -> str:
    """The histogram bucket of a long side: ``"<64"``, ``"64-127"``, ..., ``"4096+"``."""
    lower = max(b for b in LONG_SIDE_BUCKETS if long_side >= b)
    i = LONG_SIDE_BUCKETS.index(lower)
    if i == 0:
        return f"<{LONG_SIDE_BUCKETS[1]}"
    if i == len(LONG_SIDE_BUCKETS) - 1:
        return f"{lower}+"
    return f"{lower}-{LONG_SIDE_BUCKETS[i + 1] - 1}"


def _summary(values: collections.Counter) -> dict[str, int]:
    """min, median (the lower one for an even count) and max of a value counter."""
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    total, seen = sum(values.values()), 0
    median = None
    for value in sorted(values):
        seen += values[value]
        if median is None and seen * 2 >= total:
            median = value
    return {"min": min(values), "median": median, "max": max(values)}


def kept_event(record: ImageRecord) -> tuple:
    return (
        "kept",
        record.split,
        record.label,
        record.stored_bytes,
        record.width,
        record.height,
        record.conversions,
    )


def rejected_event(error: dict[str, str]) -> tuple:
    return ("rejected", error["reason"], error["uri"], error["detail"])


def ignored_event(what: str) -> tuple:
    return ("ignored", what)


def object_events(split: str, labels: Iterable[str], clipped: int = 0) -> list[tuple]:
    """A kept image's objects (detection): one event per object's class, one for an image
    with none, and its count of boxes clipped to the image."""
    events: list[tuple] = [("object", split, label) for label in labels]
    if not events:
        events.append(("no_objects", split))
    if clipped:
        events.append(("clipped", clipped))
    return events


class StatsFn(beam.CombineFn):
    """Combines ``kept_event``, ``rejected_event``, ``ignored_event`` (and, with
    ``objects``, ``object_events``) tuples into the counts of ``stats.json`` (see
    ``extract_output``).

    The accumulator is ``(counter, examples)``: a ``Counter`` of tuple keys and, per
    reason, the smallest ``[uri, detail]`` pairs.
    """

    def __init__(
        self,
        labels: list[str],
        extra_ignored: dict[str, int] | None = None,
        objects: bool = False,
    ):
        self._labels = list(labels)
        self._extra_ignored = dict(extra_ignored or {})
        self._objects = objects

    def create_accumulator(self):
        return collections.Counter(), {}

    def add_input(self, acc, event: tuple):
        counts, examples = acc
        kind = event[0]
        if kind == "kept":
            _, split, label, nbytes, width, height, conversions = event
            counts[("kept", split, label)] += 1
            counts[("bytes", split)] += nbytes
            counts[("width", width)] += 1
            counts[("height", height)] += 1
            counts[("long_side", long_side_bucket(max(width, height)))] += 1
            counts[("reencoded",)] += bool(conversions)
            for conversion in conversions:
                counts[("converted", conversion)] += 1
        elif kind in ("object", "no_objects"):
            counts[event] += 1
        elif kind == "clipped":
            counts[("clipped",)] += event[1]
        elif kind == "rejected":
            _, reason, uri, detail = event
            counts[("rejected", reason)] += 1
            self._add_example(examples, reason, [uri, detail])
        else:
            counts[("ignored", event[1])] += 1
        return acc

    @staticmethod
    def _add_example(examples: dict, reason: str, example: list[str]) -> None:
        kept = examples.setdefault(reason, [])
        if example not in kept:
            kept.append(example)
            kept.sort()
            del kept[EXAMPLES_PER_REASON:]

    def merge_accumulators(self, accumulators: Iterable):
        merged_counts, merged_examples = collections.Counter(), {}
        for counts, examples in accumulators:
            merged_counts.update(counts)
            for reason, pairs in examples.items():
                for pair in pairs:
                    self._add_example(merged_examples, reason, pair)
        return merged_counts, merged_examples

    def extract_output(self, acc) -> dict[str, Any]:
        counts, examples = acc
        counted = "object" if self._objects else "kept"
        classes = {
            split: {label: counts[(counted, split, label)] for label in self._labels}
            for split in schema.SPLITS
        }
        by_reason = {key[1]: n for key, n in sorted(counts.items()) if key[0] == "rejected"}
        splits = {
            split: sum(n for key, n in counts.items() if key[:2] == ("kept", split))
            for split in schema.SPLITS
        }
        bytes_by_split = {split: counts[("bytes", split)] for split in schema.SPLITS}
        ignored = dict.fromkeys(IGNORED_KINDS, 0)
        ignored.update({key[1]: n for key, n in counts.items() if key[0] == "ignored"})
        ignored.update(self._extra_ignored)
        sizes = {
            name: collections.Counter({k[1]: n for k, n in counts.items() if k[0] == name})
            for name in ("width", "height")
        }
        histogram = {
            long_side_bucket(lower): counts[("long_side", long_side_bucket(lower))]
            for lower in LONG_SIDE_BUCKETS
        }
        conversions = {name: counts[("converted", name)] for name in CONVERSIONS}
        objects = {}
        if self._objects:
            objects = {
                "objects": {split: sum(classes[split].values()) for split in schema.SPLITS},
                "images_without_objects": {s: counts[("no_objects", s)] for s in schema.SPLITS},
                "clipped_boxes": counts[("clipped",)],
            }
        return {
            **objects,
            "labels": self._labels,
            "splits": splits,
            "classes": classes,
            "kept": sum(splits.values()),
            "rejected": sum(by_reason.values()),
            "rejected_by_reason": by_reason,
            "rejected_examples": {reason: examples[reason] for reason in sorted(examples)},
            "ignored": ignored,
            "image_bytes": sum(bytes_by_split.values()),
            "image_bytes_by_split": bytes_by_split,
            "reencoded": counts[("reencoded",)],
            "resized": conversions["resized"],
            "conversions": conversions,
            "image_sizes": {
                "width": _summary(sizes["width"]),
                "height": _summary(sizes["height"]),
                "long_side_histogram": histogram,
            },
        }
