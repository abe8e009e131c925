"""Reading and checking images: ``(uri, label)`` pairs become ``ImageRecord``s (or
rejections), and kept records become ``tf.train.Example``s and manifest lines.

An ``ImageRecord`` holds what the stage decides by (URI, label, split, the stored bytes'
SHA-256 and size), never the image bytes: the check reads and decodes each image and
keeps only that, so what is grouped and shuffled is a few hundred bytes per image
whatever its size. The shard writer reads the image again and stores exactly the bytes
the check chose (``stored_image``), so an image's bytes go from its file to its shard and
through nothing in between.

Every transform of the stage sends what it rejects to the ``errors`` output as an
``error_record`` (``uri``, ``label``, ``reason``, ``detail``, ``stage``) and what it skips
without rejecting (a CSV header, a blank line, a repeated line, a non-image file) to the
``ignored`` output as a counter name; both end up in ``stats.json``.
"""

from __future__ import annotations

import csv
import hashlib
import io as _pyio
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from components.classification import schema
from components.common import beam as beam_utils
from components.create_tfrecords import image_checks
from components.create_tfrecords.image_checks import ImageRejected
from components.create_tfrecords.splits import assign_split

STAGE = "create_tfrecords"
ERRORS = "errors"  # Tag of the rejected-input side outputs.
IGNORED = "ignored"  # Tag of the skipped-without-rejection side outputs.
_PROGRESS_EVERY = 1000

_log = logging.getLogger(__name__)


class ImageRecord(NamedTuple):
    """One checked image on its way to a TFRecord: what the stage knows of it, without
    its bytes (``stored_image`` gets them back)."""

    uri: str
    label: str
    label_index: int
    split: str
    stored_bytes: int  # Size of the bytes to store (the original JPEG or a re-encoding).
    height: int
    width: int
    reencoded: bool
    resized: bool
    sha256: str = ""  # Of the stored bytes: byte-identical duplicates share it.
    conversions: tuple[str, ...] = ()  # ``CheckedImage.conversions()``.


def reject(uri: str, label: str, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    """A rejection for the ``errors`` output, counted in the Beam counters."""
    Metrics.counter(STAGE, "images_rejected").inc()
    Metrics.counter(STAGE, f"rejected_{reason}").inc()
    record = beam_utils.error_record(STAGE, uri, reason, detail, label=label)
    return beam.pvalue.TaggedOutput(ERRORS, record)


def ignore(what: str, count: int = 1) -> Iterator[beam.pvalue.TaggedOutput]:
    """``count`` skipped inputs of one kind for the ``ignored`` output."""
    Metrics.counter(STAGE, what).inc(count)
    for _ in range(count):
        yield beam.pvalue.TaggedOutput(IGNORED, what)


def to_example(record: ImageRecord, encoded: bytes) -> bytes:
    """Serialises a kept image, its stored bytes ``encoded``, as a ``tf.train.Example``
    (``components.classification.schema``)."""
    return schema.make_example(
        encoded=encoded,
        label_index=record.label_index,
        label=record.label,
        filename=record.uri,
        height=record.height,
        width=record.width,
    )


def manifest_line(record: ImageRecord) -> str:
    """``uri,label`` in CSV quoting: a manifest is itself valid input for this stage."""
    out = _pyio.StringIO()
    csv.writer(out, lineterminator="").writerow([record.uri, record.label])
    return out.getvalue()


def read_file(uri: str) -> bytes:
    """Reads a local or remote file's bytes as they are.

    Raises:
        ImageRejected: ``missing_file`` or ``unreadable_file``.
    """
    try:
        return beam_utils.read_file(uri)
    except beam_utils.UnreadableFile as e:
        raise ImageRejected(e.reason, e.detail) from e


class ReadAndCheckImage(beam.DoFn):
    """``(uri, label)`` to an ``ImageRecord`` (no image bytes); unreadable or bad images
    go to ``errors``."""

    def __init__(
        self, labels: list[str], train_fraction: float, valid_fraction: float, max_side: int
    ):
        self._label_index = {label: i for i, label in enumerate(labels)}
        self._train_fraction = train_fraction
        self._valid_fraction = valid_fraction
        self._max_side = max_side

    def setup(self) -> None:
        self._seen = 0
        self._kept = Metrics.counter(STAGE, "images_checked")
        self._reencoded = Metrics.counter(STAGE, "images_reencoded")
        self._resized = Metrics.counter(STAGE, "images_resized")
        self._bytes = Metrics.counter(STAGE, "image_bytes")

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        uri, label = element
        self._seen += 1
        if self._seen % _PROGRESS_EVERY == 0:
            _log.info("create_tfrecords: this worker has read %d images", self._seen)
        try:
            checked = image_checks.check_image(read_file(uri), self._max_side)
        except ImageRejected as e:
            yield reject(uri, label, e.reason, e.detail)
            return
        self._kept.inc()
        self._bytes.inc(len(checked.encoded))
        if checked.reencoded:
            self._reencoded.inc()
        if checked.resized:
            self._resized.inc()
        yield ImageRecord(
            uri=uri,
            label=label,
            label_index=self._label_index[label],
            split=assign_split(uri, self._train_fraction, self._valid_fraction),
            stored_bytes=len(checked.encoded),
            height=checked.height,
            width=checked.width,
            reencoded=checked.reencoded,
            resized=checked.resized,
            sha256=hashlib.sha256(checked.encoded).hexdigest(),
            conversions=checked.conversions(),
        )


def stored_image(record: ImageRecord, max_image_side: int) -> bytes:
    """The bytes to store for a checked image, read again from its file.

    An image kept as it is stores the file's bytes; a converted one is converted again
    (the same Pillow, the same bytes). Either way their SHA-256 must be the one the check
    found: the dataset's duplicate check, split and counts were decided on those bytes.

    Raises:
        ImageRejected: ``missing_file`` or ``unreadable_file`` when the file cannot be
            read any more, ``changed_during_run`` when it now holds other bytes.
    """
    data = read_file(record.uri)
    try:
        encoded = (
            image_checks.check_image(data, max_image_side).encoded if record.reencoded else data
        )
    except ImageRejected as e:
        encoded, why = b"", e.detail
    else:
        why = ""
    if encoded and hashlib.sha256(encoded).hexdigest() == record.sha256:
        return encoded
    raise ImageRejected(
        image_checks.CHANGED_DURING_RUN,
        f"{record.uri} changed while create_tfrecords ran (the bytes to store are no longer "
        f"those it checked{': ' + why if why else ''}); run it again",
    )
