"""Listing annotations for detection's create_tfrecords: each format's files to one
``ImageAnnotation`` per image (``ListAnnotations``), and the classes when no label map is
given (``discover_labels``, read by the driver before the pipeline).

* VOC: every ``Annotations/*.xml``; the ``ImageSets/Main`` train/trainval/val/test lists
  set the splits when present, and an image they do not list is skipped
  (``not_in_split_lists``), as the Object Detection API's tools skip it.
* COCO: the JSON file is read by one worker, which emits its images (a file that is not
  COCO fails in the driver first, ``coco_categories``).
* Vertex AI: the JSON Lines, a line per image.

One annotation per image: the same image annotated twice alike is kept once (counted in
``ignored`` as ``repeated_annotations``), differently is rejected
(``conflicting_annotations``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from components.common import io, labels as labels_lib
from components.create_tfrecords.image_checks import ImageRejected
from components.create_tfrecords.records import ERRORS, IGNORED, ignore, read_file, reject
from components.detection import annotations as annotations_lib, schema
from components.detection.annotations import AnnotationRejected, ImageAnnotation
from components.detection.boxes import ImageBoxesRejected

CONFLICTING_ANNOTATIONS = "conflicting_annotations"
_READ_THREADS = 16


def rejected(e: AnnotationRejected | ImageRejected | ImageBoxesRejected, uri: str):
    """A rejection of ``uri`` for the ``errors`` output, from the exception that says why
    (no label: an image's annotation is not one label)."""
    return reject(uri, "", e.reason, e.detail)


class ParseVoc(beam.DoFn):
    """A VOC annotation file (``fileio.ReadableFile``) to ``(uri, ImageAnnotation)``."""

    def __init__(self, voc_dir: str, splits: dict[str, str]):
        self._voc_dir = voc_dir
        self._splits = splits

    def process(self, readable: Any) -> Iterator[Any]:
        path = readable.metadata.path
        try:
            annotation = annotations_lib.parse_voc(read_file(path), path, self._voc_dir)
        except (AnnotationRejected, ImageRejected) as e:
            yield rejected(e, getattr(e, "uri", path))
            return
        if self._splits:
            split = self._splits.get(annotations_lib.voc_image_id(annotation))
            if split is None:
                yield from ignore("not_in_split_lists")
                return
            annotation = annotation._replace(split=split)
        yield annotation.uri, annotation


class ParseCoco(beam.DoFn):
    """A COCO JSON file's path to ``(uri, ImageAnnotation)`` per image."""

    def __init__(self, image_dir: str):
        self._image_dir = image_dir

    def process(self, path: str) -> Iterator[Any]:
        for parsed in annotations_lib.parse_coco(read_file(path), path, self._image_dir):
            if isinstance(parsed, AnnotationRejected):
                yield rejected(parsed, parsed.uri)
            else:
                yield parsed.uri, parsed


class ParseVertexLine(beam.DoFn):
    """``(JSON Lines file, line)`` to ``(uri, ImageAnnotation)``."""

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        path, line = element
        try:
            annotation = annotations_lib.parse_vertex_line(line, path)
        except AnnotationRejected as e:
            yield rejected(e, e.uri)
            return
        if annotation is None:
            yield from ignore("blank_lines")
        else:
            yield annotation.uri, annotation


class OneAnnotationPerUri(beam.DoFn):
    """``(uri, [annotations])``: kept once when alike, rejected when they differ."""

    def process(self, element: tuple[str, Iterable[ImageAnnotation]]) -> Iterator[Any]:
        uri, listed = element
        listed = list(listed)
        distinct = {(a.boxes, a.normalized, a.size, a.split) for a in listed}
        if len(distinct) == 1:
            yield from ignore("repeated_annotations", len(listed) - 1)
            yield min(listed, key=lambda a: a.source)
            return
        sources = sorted({a.source for a in listed})
        detail = f"annotated {len(listed)} times, differently: {', '.join(sources[:5])}"
        yield reject(uri, "", CONFLICTING_ANNOTATIONS, detail)


class ListAnnotations(beam.PTransform):
    """The annotations as ``{"ok": one ImageAnnotation per image, "errors", "ignored"}``."""

    def __init__(
        self, voc_dir: str = "", coco_json: str = "", image_dir: str = "", vertex_jsonl: str = ""
    ):
        super().__init__()
        self._voc_dir, self._coco_json = voc_dir, coco_json
        self._image_dir, self._vertex_jsonl = image_dir, vertex_jsonl

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        if self._voc_dir:
            pattern = io.join(self._voc_dir, annotations_lib.VOC_ANNOTATIONS, "*.xml")
            parse = beam.ParDo(ParseVoc(self._voc_dir, read_voc_splits(self._voc_dir)))
            listed = (
                pbegin
                | "MatchXml" >> fileio.MatchFiles(pattern)
                | "ReadMatches" >> fileio.ReadMatches()
            )
        elif self._coco_json:
            parse = beam.ParDo(ParseCoco(self._image_dir))
            listed = pbegin | "CocoFile" >> beam.Create([self._coco_json])
        else:
            parse = beam.ParDo(ParseVertexLine())
            listed = pbegin | "ReadJsonl" >> beam.io.ReadFromTextWithFilename(self._vertex_jsonl)
        parsed = listed | "Parse" >> parse.with_outputs(ERRORS, IGNORED, main="ok")
        unique = (
            parsed.ok
            | "GroupByUri" >> beam.GroupByKey()
            | "OneAnnotationPerUri"
            >> beam.ParDo(OneAnnotationPerUri()).with_outputs(ERRORS, IGNORED, main="ok")
        )
        return {
            "ok": unique.ok,
            "errors": (parsed[ERRORS], unique[ERRORS]) | "ListingErrors" >> beam.Flatten(),
            "ignored": (parsed[IGNORED], unique[IGNORED]) | "ListingIgnored" >> beam.Flatten(),
        }


def read_voc_splits(voc_dir: str) -> dict[str, str]:
    """Image id to split from ``ImageSets/Main``'s train/trainval/val/test lists; empty
    when the folder has none."""
    lists = {}
    for name in annotations_lib.VOC_SPLIT_LISTS:
        path = io.join(voc_dir, "ImageSets", "Main", f"{name}.txt")
        if FileSystems.exists(path):
            lists[name] = io.read_text(path)
    return annotations_lib.voc_splits(lists)


def _classes_in(parsed: Iterable[Any]) -> set[str]:
    return {box.label for p in parsed if isinstance(p, ImageAnnotation) for box in p.boxes}


def coco_categories(coco_json: str) -> list[str]:
    """The category names of a COCO JSON file, in id order.

    Raises:
        ValueError: when the file is not JSON, or not COCO.
    """
    try:
        data = json.loads(read_file(coco_json))
    except ImageRejected as e:
        raise FileNotFoundError(e.detail) from None
    except ValueError as e:
        raise ValueError(f"{coco_json} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{coco_json} is not COCO JSON: no 'images' list")
    categories = data.get("categories")
    named = sorted(
        (c["id"], str(c["name"]))
        for c in (categories if isinstance(categories, list) else [])
        if isinstance(c, dict) and c.get("name") and isinstance(c.get("id"), int)
    )
    return [name for _, name in named]


def discover_labels(voc_dir: str = "", coco_json: str = "", vertex_jsonl: str = "") -> list[str]:
    """The classes when no label map is given: COCO's categories in id order, else the
    sorted class names of the annotations that can be read (the others are rejected by
    the pipeline)."""
    if coco_json:
        return coco_categories(coco_json)
    if voc_dir:
        pattern = io.join(voc_dir, annotations_lib.VOC_ANNOTATIONS, "*.xml")
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]

        def parse(path: str) -> Any:
            try:
                return annotations_lib.parse_voc(read_file(path), path, voc_dir)
            except (AnnotationRejected, ImageRejected) as e:
                return e

        with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            return sorted(_classes_in(pool.map(parse, paths)))
    found: set[str] = set()
    for path in (m.path for m in FileSystems.match([vertex_jsonl])[0].metadata_list):
        for n, line in enumerate(io.read_text(path).splitlines()):
            try:
                found |= _classes_in([annotations_lib.parse_vertex_line(line, f"{path}:{n + 1}")])
            except AnnotationRejected:
                continue
    return sorted(found)


def read_label_map(label_map_uri: str) -> list[str]:
    """The classes of a ``label_map.pbtxt`` (by id) or a ``labels.txt`` (one per line)."""
    if label_map_uri.endswith(".pbtxt"):
        return schema.parse_label_map(io.read_text(label_map_uri))
    return labels_lib.read_labels(label_map_uri)
