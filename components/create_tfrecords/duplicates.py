"""Duplicates: the same URI listed more than once, and different URIs holding the same image.

* **Same URI, same label** (a repeated line, or a CSV listing an image twice): kept once,
  the repeats counted in ``ignored`` as ``repeated_uri_lines``.
* **Same URI, different labels**: rejected as ``conflicting_labels`` (one error for the
  URI; its ``label`` field lists the labels joined by ``|``).
* **Byte-identical images under different URIs**, compared by the SHA-256 of the *stored*
  bytes (what goes into the TFRecord: the original JPEG, or the re-encoding of anything
  else). Identical files always store identical bytes, and so do copies of one picture
  in different containers (the same pixels as PNG and as BMP), so one image never lands
  in two splits or twice in one. With one label, the smallest URI is kept and each other
  one is rejected as ``duplicate_image``, its detail naming the kept URI. With different
  labels the truth is unknown: all of them are rejected as ``conflicting_labels``.

The comparison is the Beam way: records are keyed by their digest and combined per key
(the smallest-URI record per key, with the URIs and labels of the others), so it scales
out with the data. The records carry the digest and size of the stored bytes, not the
bytes (``records.ImageRecord``): what is combined and shuffled is a few hundred bytes per
image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from components.create_tfrecords import image_checks
from components.create_tfrecords.records import ERRORS, ImageRecord, ignore, reject

_DETAIL_URIS = 5  # Other URIs named in one rejection's detail.


class OneLabelPerUri(beam.DoFn):
    """``(uri, [labels])`` after grouping: a repeated line is kept once, a URI listed
    with different labels is rejected."""

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[Any]:
        uri, labels = element
        labels = list(labels)
        distinct = sorted(set(labels))
        if len(distinct) == 1:
            if len(labels) > 1:
                yield from ignore("repeated_uri_lines", len(labels) - 1)
            yield uri, distinct[0]
        else:
            detail = f"listed with {len(distinct)} different labels: {distinct}"
            yield reject(uri, "|".join(distinct), image_checks.CONFLICTING_LABELS, detail)


Accumulator = tuple[ImageRecord | None, list[tuple[str, str]]]


class SmallestUriPerImage(beam.CombineFn):
    """Combines the records of one image content: the smallest-URI record, and the
    ``(uri, label)`` of every record (sorted)."""

    def create_accumulator(self) -> Accumulator:
        return None, []

    def add_input(self, acc: Accumulator, record: ImageRecord) -> Accumulator:
        best, members = acc
        members.append((record.uri, record.label))
        if best is None or record.uri < best.uri:
            best = record
        return best, members

    def merge_accumulators(self, accumulators: Iterable[Accumulator]) -> Accumulator:
        best, members = None, []
        for other, other_members in accumulators:
            members.extend(other_members)
            if other is not None and (best is None or other.uri < best.uri):
                best = other
        return best, members

    def extract_output(self, acc: Accumulator) -> Accumulator:
        best, members = acc
        return best, sorted(members)


def _others(members: list[tuple[str, str]], uri: str) -> str:
    others = [f"{u} ({label})" for u, label in members if u != uri]
    more = len(others) - _DETAIL_URIS
    return ", ".join(others[:_DETAIL_URIS]) + (f" and {more} more" if more > 0 else "")


class ResolveDuplicates(beam.DoFn):
    """``(digest, (smallest-URI record, members))`` to the kept record, or rejections."""

    def process(self, element: tuple[str, Accumulator]) -> Iterator[Any]:
        digest, (best, members) = element
        if best is None:
            return
        if len(members) == 1:
            yield best
            return
        labels = sorted({label for _, label in members})
        short = digest[:16]
        if len(labels) == 1:
            yield best
            for uri, label in members:
                if uri != best.uri:
                    detail = f"same image bytes (sha256 {short}...) as {best.uri}, which is kept"
                    yield reject(uri, label, image_checks.DUPLICATE_IMAGE, detail)
            return
        for uri, label in members:
            detail = (
                f"the same image bytes (sha256 {short}...) are listed with different labels "
                f"{labels}: also {_others(members, uri)}"
            )
            yield reject(uri, label, image_checks.CONFLICTING_LABELS, detail)


class KeepOnePerImage(beam.PTransform):
    """Kept records to ``{"ok": one record per distinct stored image, "errors": the
    rejected duplicates}``."""

    def expand(self, records: beam.PCollection) -> dict[str, beam.PCollection]:
        resolved = (
            records
            | "KeyByDigest" >> beam.Map(lambda record: (record.sha256, record))
            | "SmallestUriPerImage" >> beam.CombinePerKey(SmallestUriPerImage())
            | "ResolveDuplicates" >> beam.ParDo(ResolveDuplicates()).with_outputs(ERRORS, main="ok")
        )
        return {"ok": resolved.ok, "errors": resolved[ERRORS]}
