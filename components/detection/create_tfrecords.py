"""create_tfrecords for detection: annotated images to the Object Detection API's TFRecords.

The classification stage's machinery, with detection's own reading and records:

1. ``listing.ListAnnotations``: every ``Annotations/*.xml`` of a Pascal VOC folder
   (``ImageSets/Main`` split lists honoured when present), the images of a COCO JSON
   file, or the lines of Vertex AI's JSON Lines, as ``annotations.ImageAnnotation``s; a
   record that cannot be read is rejected (``malformed_annotation``).
2. One annotation per image (``listing.OneAnnotationPerUri``): repeated alike, kept once;
   differently, rejected (``conflicting_annotations``).
3. ``ReadAndCheckAnnotatedImage``: read and check the image as classification does
   (``image_checks``: EXIF orientation applied, non-JPEG re-encoded, large images scaled
   down), normalize, clip and turn its boxes with it (``boxes.image_boxes``: an invalid
   box, a class outside the label map, a size the image does not have rejects the image);
   the split is the annotation's own (VOC lists, Vertex's ``ml_use``), else the stable
   hash of the URI.
4. ``duplicates.KeepOnePerImage``: byte-identical images under several URIs are kept once
   when annotated alike, rejected when not.
5. ``sharding.WriteShards``: shards of about ``target_shard_mb``, each image's bytes read
   again straight into its record (``schema.make_example``); then the manifests
   (``uri,classes``), each split's ground truth as COCO JSON (``coco/<split>.json``),
   ``errors.jsonl`` and ``stats.json`` (objects per class and split, images without
   objects, clipped boxes) through one sink, and ``label_map.pbtxt``, ``labels.txt`` and
   ``report.md`` from the driver.

The class list is the given label map's (``label_map_uri``: a ``label_map.pbtxt`` or a
``labels.txt``), else COCO's categories in id order, else the sorted class names the
annotations use (read by the driver before the pipeline).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.common import beam as beam_utils, io, labels as labels_lib, schema as common_schema
from components.create_tfrecords import image_checks, sharding
from components.create_tfrecords.beam_pipeline import (
    check_arguments,
    finish_run,
    remove_stale_shards,
)
from components.create_tfrecords.duplicates import KeepOnePerImage
from components.create_tfrecords.image_checks import ImageRejected
from components.create_tfrecords.records import (
    ERRORS,
    manifest_line,
    read_file,
    stored_image,
)
from components.create_tfrecords.splits import assign_split
from components.create_tfrecords.stats import (
    StatsFn,
    ignored_event,
    kept_event,
    object_events,
    rejected_event,
)
from components.detection import coco, listing, schema
from components.detection.annotations import ImageAnnotation
from components.detection.boxes import Box, ImageBoxesRejected, image_boxes

_log = logging.getLogger(__name__)


class AnnotatedImage(NamedTuple):
    """One checked image and its boxes on their way to a record, without the image's
    bytes (``records.stored_image`` reads them again). ``label`` is its annotation as
    text (``annotation_text``): what byte-identical copies are compared by."""

    uri: str
    label: str
    split: str
    stored_bytes: int
    height: int
    width: int
    reencoded: bool
    resized: bool
    sha256: str
    conversions: tuple[str, ...]
    boxes: tuple[Box, ...]
    clipped: int = 0


def annotation_text(boxes: Iterable[Box]) -> str:
    """An image's boxes as one line of text, the same for the same annotation."""
    parts = sorted(f"{b.label} {b.xmin:.4f} {b.ymin:.4f} {b.xmax:.4f} {b.ymax:.4f}" for b in boxes)
    return "; ".join(parts) or "(no objects)"


# --------------------------------------------------------------------------- images


class ReadAndCheckAnnotatedImage(beam.DoFn):
    """An ``ImageAnnotation`` to an ``AnnotatedImage``; a bad image or annotation goes to
    ``errors``."""

    def __init__(
        self, labels: Sequence[str], train_fraction: float, valid_fraction: float, max_side: int
    ):
        self._labels = frozenset(labels)
        self._fractions = train_fraction, valid_fraction
        self._max_side = max_side

    def process(self, annotation: ImageAnnotation) -> Iterator[Any]:
        uri = annotation.uri
        try:
            checked = image_checks.check_image(read_file(uri), self._max_side)
            boxes, clipped = image_boxes(
                annotation.boxes,
                annotation.normalized,
                annotation.size,
                checked.original_size,
                checked.orientation,
                self._labels,
            )
        except (ImageRejected, ImageBoxesRejected) as e:
            yield listing.rejected(e, uri)
            return
        yield AnnotatedImage(
            uri=uri,
            label=annotation_text(boxes),
            split=annotation.split or assign_split(uri, *self._fractions),
            stored_bytes=len(checked.encoded),
            height=checked.height,
            width=checked.width,
            reencoded=checked.reencoded,
            resized=checked.resized,
            sha256=hashlib.sha256(checked.encoded).hexdigest(),
            conversions=checked.conversions(),
            boxes=boxes,
            clipped=clipped,
        )


def serialize_record(
    record: AnnotatedImage, max_image_side: int, class_ids: dict[str, int]
) -> bytes:
    """An image's Object Detection API record, its bytes read again (``stored_image``)."""
    encoded = stored_image(record, max_image_side)  # type: ignore[arg-type]
    return schema.make_example(
        encoded, record.uri, record.height, record.width, record.sha256, record.boxes, class_ids
    )


class _WriteCocoJson(beam.DoFn):
    """Writes one split's ``(path, images)`` group as its COCO ground truth."""

    def __init__(self, labels: Sequence[str]):
        self._labels = list(labels)

    def process(self, group: tuple[str, Iterable[Any]]) -> Iterator[str]:
        path, images = group
        truth = coco.ground_truth([i for i in images if i is not None], self._labels)
        with FileSystems.create(path, mime_type="application/json") as f:
            f.write(json.dumps(truth).encode("utf-8"))
        yield path


def _manifest_line(record: AnnotatedImage) -> str:
    """``uri,classes``: the classes the image holds, space-separated (none: empty)."""
    return manifest_line(record._replace(label=" ".join(sorted({b.label for b in record.boxes}))))


def _events(record: AnnotatedImage) -> list[tuple]:
    return [
        kept_event(record._replace(label="")),  # type: ignore[arg-type]
        *object_events(record.split, [b.label for b in record.boxes], record.clipped),
    ]


def build_pipeline(
    pipeline: beam.Pipeline,
    output_dir: str,
    labels: list[str],
    *,
    voc_dir: str = "",
    coco_json: str = "",
    image_dir: str = "",
    vertex_jsonl: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    target_shard_mb: float = sharding.TARGET_SHARD_MB,
    max_image_side: int = 1024,
) -> None:
    """Adds the stage's transforms to a Beam pipeline (``run`` builds and runs one); the
    arguments are ``run``'s."""
    listed = pipeline | "ListAnnotations" >> listing.ListAnnotations(
        voc_dir, coco_json, image_dir, vertex_jsonl
    )
    checked = listed["ok"] | "ReadAndCheckImages" >> beam.ParDo(
        ReadAndCheckAnnotatedImage(labels, train_fraction, valid_fraction, max_image_side)
    ).with_outputs(ERRORS, main="ok")
    distinct = checked.ok | "KeepOnePerImage" >> KeepOnePerImage()
    written = distinct["ok"] | "WriteShards" >> sharding.WriteShards(
        output_dir,
        functools.partial(
            serialize_record, max_image_side=max_image_side, class_ids=schema.class_ids(labels)
        ),
        target_shard_mb=target_shard_mb,
        num_shards=num_shards,
    )
    records = written["ok"]

    truths = {split: coco.coco_path(output_dir, split) for split in common_schema.SPLITS}
    _ = (
        records
        | "GroundTruth"
        >> beam.Map(lambda r: (truths[r.split], (r.uri, r.height, r.width, r.boxes)))
        | "GroupBySplit" >> beam_utils.GroupByPath(list(truths.values()))
        | "WriteCocoJson" >> beam.ParDo(_WriteCocoJson(labels))
    )
    manifests = {
        split: common_schema.manifest_path(output_dir, split) for split in common_schema.SPLITS
    }
    side_files = [
        records | "ManifestLines" >> beam.Map(lambda r: (manifests[r.split], _manifest_line(r)))
    ]
    all_errors = (
        listed["errors"],
        checked[ERRORS],
        distinct["errors"],
        written["errors"],
    ) | "AllErrors" >> beam.Flatten()
    errors_path = io.join(output_dir, common_schema.ERRORS_FILE)
    side_files.append(
        all_errors
        | "ErrorLines" >> beam.Map(lambda e: (errors_path, json.dumps(e, sort_keys=True)))
    )
    events = (
        records | "KeptEvents" >> beam.FlatMap(_events),
        all_errors | "RejectedEvents" >> beam.Map(rejected_event),
        listed["ignored"] | "IgnoredEvents" >> beam.Map(ignored_event),
    ) | "AllEvents" >> beam.Flatten()
    stats_path = io.join(output_dir, common_schema.STATS_FILE)
    side_files.append(
        events
        | "Count" >> beam.CombineGlobally(StatsFn(labels, objects=True))
        | "StatsJson"
        >> beam.Map(lambda stats: (stats_path, json.dumps(stats, indent=2, sort_keys=True)))
    )
    _ = (
        side_files
        | "AllSideFiles" >> beam.Flatten()
        | "WriteSideFiles"
        >> beam_utils.WriteTextFiles([*manifests.values(), errors_path, stats_path])
    )


# --------------------------------------------------------------------------- driver


def run(
    output_dir: str,
    voc_dir: str = "",
    coco_json: str = "",
    image_dir: str = "",
    vertex_jsonl: str = "",
    label_map_uri: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    target_shard_mb: float = sharding.TARGET_SHARD_MB,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    runner: str = "DirectRunner",
    beam_args: Sequence[str] = (),
    direct_num_workers: int = 1,
    dataflow: beam_utils.DataflowSettings | None = None,
) -> dict[str, Any]:
    """Runs the detection create_tfrecords pipeline and waits for it.

    Args:
        output_dir: Dataset directory to write (local path or ``gs://``): shards in the
            layout every task shares (``common.schema``), ``label_map.pbtxt``, ``labels.txt``,
            ``coco/<split>.json``, manifests, ``errors.jsonl``, ``stats.json``,
            ``report.md``. Shards of an earlier run there are replaced.
        voc_dir: A Pascal VOC folder (``Annotations/*.xml``, ``JPEGImages/``, optional
            ``ImageSets/Main`` lists). Give exactly one of voc_dir, coco_json, vertex_jsonl.
        coco_json: A COCO JSON annotation file.
        image_dir: The folder COCO's ``file_name`` values are relative to (default: the
            JSON file's folder).
        vertex_jsonl: Vertex AI ``image_bounding_box`` JSON Lines (a glob may name several).
        label_map_uri: The classes: a ``label_map.pbtxt`` or ``labels.txt``; a box of
            another class rejects its image (``unknown_class``). Empty: every class the
            annotations use (COCO: its categories).
        train_fraction: Share of images in the train split (images whose annotation names
            no split).
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: Shards per split; 0 derives each split's count from the bytes it
            stores and ``target_shard_mb``.
        target_shard_mb: Size a shard should have, in MiB, when ``num_shards`` is 0.
        max_image_side: Images whose long side is larger are scaled down to it (their
            normalized boxes unchanged); 0 keeps every size.
        max_error_fraction: Largest tolerated share of rejected inputs.
        runner: Beam runner (``DirectRunner`` or ``DataflowRunner``).
        beam_args: Other Beam pipeline arguments.
        direct_num_workers: DirectRunner processes (``common.beam.direct_args``).
        dataflow: The named Dataflow settings; None: none.

    Returns:
        The counts also written to ``stats.json``: classification's (``splits`` are
        images) with ``classes`` counting objects, plus ``objects`` per split,
        ``images_without_objects`` per split and ``clipped_boxes``.

    Raises:
        ValueError: on invalid arguments, an annotation file that is not its format, no
            input image, or a rejected share above ``max_error_fraction``.
        FileNotFoundError: when an input does not exist.
    """
    sources = [s for s in (voc_dir, coco_json, vertex_jsonl) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one input: voc_dir, coco_json or vertex_jsonl")
    check_arguments(
        output_dir,
        train_fraction,
        valid_fraction,
        max_image_side,
        max_error_fraction,
        target_shard_mb,
        num_shards,
        runner,
        beam_args,
        direct_num_workers,
        dataflow,
    )
    source = sources[0]
    if not FileSystems.match([source])[0].metadata_list and not (
        voc_dir and FileSystems.exists(voc_dir)
    ):
        raise FileNotFoundError(f"no such input: {source}")
    if coco_json:
        image_dir = image_dir or posixpath.dirname(coco_json)
        # A file that is not COCO fails here, not in the pipeline.
        listing.coco_categories(coco_json)
    labels = (
        listing.read_label_map(label_map_uri)
        if label_map_uri
        else listing.discover_labels(voc_dir, coco_json, vertex_jsonl)
    )
    if not labels:
        raise ValueError(f"no class in {label_map_uri or source}: nothing to detect")

    io.makedirs(output_dir)
    labels_lib.write_labels(io.join(output_dir, labels_lib.LABELS_FILE), labels)
    io.write_text(io.join(output_dir, schema.LABEL_MAP_FILE), schema.label_map_text(labels))
    remove_stale_shards(output_dir)
    _log.info(
        "create_tfrecords (detection): %s -> %s (%d classes, %s)",
        source,
        output_dir,
        len(labels),
        runner,
    )
    with beam_utils.make_pipeline(runner, beam_args, direct_num_workers, dataflow) as pipeline:
        build_pipeline(
            pipeline,
            output_dir,
            labels,
            voc_dir=voc_dir,
            coco_json=coco_json,
            image_dir=image_dir,
            vertex_jsonl=vertex_jsonl,
            train_fraction=train_fraction,
            valid_fraction=valid_fraction,
            num_shards=num_shards,
            target_shard_mb=target_shard_mb,
            max_image_side=max_image_side,
        )
    stats = finish_run(output_dir, source, target_shard_mb, num_shards, max_error_fraction)
    _log.info(
        "create_tfrecords (detection) kept %d images, %d objects, in %s",
        stats["kept"],
        sum(stats["objects"].values()),
        output_dir,
    )
    return stats


# --------------------------------------------------------------------------- command line


# run's parameters the command line sets otherwise (Beam arguments pass through as they
# are; Dataflow's settings are Beam's own --project, --region, ... options there).
_NOT_FLAGS = ("output_dir", "voc_dir", "coco_json", "vertex_jsonl", "beam_args", "dataflow")


def main(argv: list[str] | None = None) -> int:
    """``python -m components.detection.create_tfrecords --output-dir DIR (--voc-dir DIR |
    --coco-json FILE [--image-dir DIR] | --vertex-jsonl FILE) [options] [Beam args]``:
    runs the stage, prints the counts as JSON; exit status 1 with a message when it fails
    on its input. The options are ``run``'s parameters (``common.cli``); arguments it does
    not know go to Beam as pipeline arguments."""
    import argparse
    import inspect
    import sys

    from components.common.cli import add_function_arguments

    parser = argparse.ArgumentParser(
        prog="python -m components.detection.create_tfrecords",
        description="Box-annotated images to the Object Detection API's TFRecords.",
    )
    parser.add_argument("--output-dir", required=True, help="dataset directory to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc-dir", default="", help="Pascal VOC folder")
    source.add_argument("--coco-json", default="", help="COCO JSON file")
    source.add_argument("--vertex-jsonl", default="", help="Vertex AI JSON Lines")
    names = [n for n in inspect.signature(run).parameters if n not in _NOT_FLAGS]
    add_function_arguments(parser, run, names)
    args, beam_args = parser.parse_known_args(argv)
    given = {n: v for n, v in vars(args).items() if n in names and v is not None}
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = run(
            output_dir=args.output_dir,
            voc_dir=args.voc_dir,
            coco_json=args.coco_json,
            vertex_jsonl=args.vertex_jsonl,
            beam_args=beam_args,
            **given,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"create_tfrecords: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
