"""Reading the inputs: a ``uri,label`` CSV (with a label file) or a ``<label>/<image>``
folder tree, to ``(uri, label)`` pairs with known labels.

* CSV: no header needed; a ``uri,label`` header line, blank lines and surrounding
  whitespace are tolerated (and counted in ``ignored``); a malformed line is rejected as
  ``malformed_line``; a relative URI is relative to the CSV's folder; the CSV URI may be a
  glob matching several files.
* Folder tree: files with an image extension (``IMAGE_EXTENSIONS``) are read, others
  counted as ``non_image_files``; hidden folders are left out. The labels are the sorted
  subdirectory names, or the label file's when one is given.
* Label file: one label per line; blank lines and repeated labels are dropped (the first
  position counts) and counted.

A label not in use is rejected as ``unknown_label``.
"""

from __future__ import annotations

import csv
import logging
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from components.common import beam as beam_utils, io, labels as labels_lib
from components.create_tfrecords import image_checks
from components.create_tfrecords.records import ERRORS, IGNORED, ignore, reject

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")

_log = logging.getLogger(__name__)


def has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


class ParseCsvLine(beam.DoFn):
    """``(csv file, line)`` to ``(uri, label)``; malformed lines go to ``errors``, blank
    and header lines to ``ignored``."""

    def __init__(self, labels: Iterable[str]):
        self._labels = set(labels)

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        csv_file, line = element
        text = line.strip()
        try:
            fields = beam_utils.parse_csv_line(text)
        except csv.Error as e:
            yield reject(csv_file, "", image_checks.MALFORMED_LINE, f"{e}: {text!r}")
            return
        if not fields:
            yield from ignore("blank_lines")
            return
        if len(fields) != 2 or not fields[0] or not fields[1]:
            detail = f"expected 'uri,label', got {len(fields)} field(s): {text!r}"
            yield reject(csv_file, "", image_checks.MALFORMED_LINE, detail)
            return
        uri, label = fields
        if beam_utils.is_header([uri, label], self._labels):
            yield from ignore("csv_header_lines")
            return
        yield beam_utils.resolve_listed_uri(uri, csv_file), label


class ImageFiles(beam.DoFn):
    """A matched file's path to ``(path, label of its folder)``; other files are ignored."""

    def process(self, metadata: Any) -> Iterator[Any]:
        path = metadata.path
        if has_image_extension(path):
            yield path, posixpath.basename(posixpath.dirname(path))
        else:
            yield from ignore("non_image_files")


class CheckLabel(beam.DoFn):
    """Passes ``(uri, label)`` on when the label is known; otherwise rejects it."""

    def __init__(self, labels: Iterable[str]):
        self._labels = set(labels)

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        uri, label = element
        if label in self._labels:
            yield uri, label
        else:
            detail = f"label {label!r} is not one of the {len(self._labels)} labels in use"
            yield reject(uri, label, image_checks.UNKNOWN_LABEL, detail)


class ListInputs(beam.PTransform):
    """The input listing as ``{"ok": (uri, label) pairs with known labels, "errors":
    rejections, "ignored": skipped-input names}``."""

    def __init__(self, labels: list[str], csv_uri: str = "", image_dir: str = ""):
        super().__init__()
        self._labels = list(labels)
        self._csv_uri = csv_uri
        self._image_dir = image_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        errors = []
        if self._csv_uri:
            lines = pbegin | "ReadCsv" >> beam.io.ReadFromTextWithFilename(self._csv_uri)
            parsed = lines | "ParseCsv" >> beam.ParDo(ParseCsvLine(self._labels)).with_outputs(
                ERRORS, IGNORED, main="ok"
            )
            errors.append(parsed[ERRORS])
        else:
            patterns = [io.join(self._image_dir, d, "*") for d in class_dirs(self._image_dir)]
            parsed = (
                pbegin
                | "ClassPatterns" >> beam.Create(patterns)
                | "MatchImages" >> fileio.MatchAll()
                | "ImageFiles" >> beam.ParDo(ImageFiles()).with_outputs(IGNORED, main="ok")
            )
        known = parsed.ok | "CheckLabel" >> beam.ParDo(CheckLabel(self._labels)).with_outputs(
            ERRORS, main="ok"
        )
        errors.append(known[ERRORS])
        return {
            "ok": known.ok,
            "errors": tuple(errors) | "ListingErrors" >> beam.Flatten(),
            "ignored": parsed[IGNORED],
        }


# --------------------------------------------------------------------------- driver side


def class_dirs(image_dir: str) -> list[str]:
    """The (sorted) class subdirectories of a folder tree, hidden ones left out.

    Raises:
        FileNotFoundError: when ``image_dir`` is not a directory.
    """
    if not io.isdir(image_dir):
        raise FileNotFoundError(f"image_dir is not a directory: {image_dir}")
    return [
        name
        for name in io.listdir(image_dir)
        if not name.startswith(".") and io.isdir(io.join(image_dir, name))
    ]


def read_label_file(path: str) -> tuple[list[str], dict[str, int]]:
    """A label file's labels and what was dropped from it.

    Returns:
        The labels (``labels.parse_labels``) and the counts ``label_file_blank_lines``
        and ``label_file_repeated_labels``.

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: when it holds no label.
    """
    if not io.exists(path):
        raise FileNotFoundError(f"label file not found: {path}")
    text = io.read_text(path)
    labels = labels_lib.parse_labels(text)
    lines = [line.strip() for line in text.splitlines()]
    blank = sum(not line for line in lines)
    repeated = sum(bool(line) for line in lines) - len(labels)
    if blank or repeated:
        _log.warning(
            "label file %s: dropped %d blank line(s) and %d repeated label(s)",
            path,
            blank,
            repeated,
        )
    return labels, {"label_file_blank_lines": blank, "label_file_repeated_labels": repeated}


def resolve_labels(
    csv_uri: str, labels_uri: str, image_dir: str
) -> tuple[list[str], dict[str, int]]:
    """Checks the input arguments and returns the labels in use (their order gives the
    class indices) and the label file's dropped-line counts.

    Raises:
        ValueError: when not exactly one input is given, a CSV has no label file, or a
            folder tree has no class folder.
        FileNotFoundError: when the CSV, the label file or the folder does not exist.
    """
    if bool(csv_uri) == bool(image_dir):
        raise ValueError(
            "give exactly one input: csv_uri (a uri,label CSV, with labels_uri) or "
            f"image_dir (a <label>/<image> folder tree); got csv_uri={csv_uri!r}, "
            f"image_dir={image_dir!r}"
        )
    notes = {"label_file_blank_lines": 0, "label_file_repeated_labels": 0}
    if csv_uri:
        if not labels_uri:
            raise ValueError("csv_uri needs labels_uri: a label file, one label per line")
        if not FileSystems.match([csv_uri])[0].metadata_list:
            raise FileNotFoundError(f"no CSV file matches csv_uri: {csv_uri}")
        return read_label_file(labels_uri)
    dirs = class_dirs(image_dir)
    if labels_uri:
        labels, notes = read_label_file(labels_uri)
        if missing := [label for label in labels if label not in dirs]:
            _log.warning("no folder under %s for label(s) %s", image_dir, missing)
        return labels, notes
    if not dirs:
        raise ValueError(f"no class subdirectories (<label>/<image>) under {image_dir}")
    return dirs, notes
