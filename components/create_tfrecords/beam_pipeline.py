"""The create_tfrecords Beam pipeline: labelled images to gzip-compressed, sharded TFRecords.

Inputs, in either of two formats:

* the book's CSV: lines ``uri,label`` (no header needed; a ``uri,label`` header line, blank
  lines and surrounding whitespace are tolerated; a relative URI is relative to the CSV's
  folder; the CSV URI may be a glob matching several files) plus a label file;
* a folder tree ``root/<label>/<image>``: files with an image extension
  (``IMAGE_EXTENSIONS``) are read; the labels are the sorted subdirectory names, or the
  label file's when one is given.

Every image is fully decoded with PIL (``image_checks``). Bad input is data, not a crash:
each rejected input is counted (Beam counters and ``stats.json``) and written with its
reason to ``errors.jsonl``; the run fails after the pipeline only when the rejected share
passes ``max_error_fraction``. The output layout is the one ``components.common.schema``
documents. The train/valid/test split is ``assign_split(uri)``: a pure function of the URI.

On Dataflow, pass e.g. ``runner="DataflowRunner"`` and ``beam_args=["--project=...",
"--region=...", "--temp_location=gs://...", "--sdk_container_image=<image with this
package>"]`` (or ``--setup_file``), with ``gs://`` inputs and output.
"""

import collections
import csv
import hashlib
import io as _pyio
import json
import logging
import math
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from components.common import beam as beam_utils, io, labels as labels_lib, schema
from components.create_tfrecords import image_checks
from components.create_tfrecords.image_checks import ImageRejected

STAGE = "create_tfrecords"
ERRORS = "errors"  # Tag of the rejected-input side outputs.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SHARD_NAME_TEMPLATE = "-SSSSS-of-NNNNN"
_HEADER_URI_NAMES = {"uri", "url", "image", "image_uri", "image_url", "path", "image_path"}
_HEADER_URI_NAMES |= {"file", "filename", "gcs_uri", "gcs_path"}
_HEADER_LABEL_NAMES = {"label", "labels", "class", "class_name", "label_name", "category"}
_PROGRESS_EVERY = 1000

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


def validate_fractions(train_fraction: float, valid_fraction: float) -> None:
    """Checks the split fractions; the test fraction is what they leave.

    Raises:
        ValueError: when a fraction is negative or not a number, or they sum to more than 1.
    """
    for name, value in (("train_fraction", train_fraction), ("valid_fraction", valid_fraction)):
        if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if train_fraction + valid_fraction > 1 + 1e-9:
        raise ValueError(
            f"train_fraction + valid_fraction must be <= 1 (the rest is the test split), "
            f"got {train_fraction} + {valid_fraction} = {train_fraction + valid_fraction}"
        )


def _hash64(uri: str) -> int:
    return int.from_bytes(hashlib.sha256(uri.encode("utf-8")).digest()[:8], "big")


def split_point(uri: str) -> float:
    """Where a URI falls in [0, 1]: the first 8 bytes of its SHA-256 as a fraction of 2**64
    (the float may round up to 1.0; ``assign_split`` compares the exact integers)."""
    return _hash64(uri) / 2**64


def assign_split(uri: str, train_fraction: float, valid_fraction: float) -> str:
    """The split of one image: a pure function of its URI, so re-runs never move it.

    Args:
        uri: The image's URI, exactly as stored in ``image/filename``.
        train_fraction: Share of images in ``train``.
        valid_fraction: Share of images in ``valid``; the rest go to ``test``.

    Returns:
        ``"train"``, ``"valid"`` or ``"test"``.

    Raises:
        ValueError: when the fractions are invalid (see ``validate_fractions``).
    """
    validate_fractions(train_fraction, valid_fraction)
    # u = h / 2**64 < fraction, compared exactly (Python compares int and float exactly).
    h = _hash64(uri)
    if h < train_fraction * 2**64:
        return "train"
    if h < (train_fraction + valid_fraction) * 2**64:
        return "valid"
    return "test"


# --------------------------------------------------------------------------- records


class ImageRecord(NamedTuple):
    """One kept image on its way to a TFRecord."""

    uri: str
    label: str
    label_index: int
    split: str
    encoded: bytes
    height: int
    width: int
    reencoded: bool
    resized: bool


def error_record(uri: str, label: str, reason: str, detail: str) -> dict[str, str]:
    """One line of ``errors.jsonl``."""
    return {"uri": uri, "label": label, "reason": reason, "detail": detail, "stage": STAGE}


def _reject(uri: str, label: str, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(STAGE, "images_rejected").inc()
    Metrics.counter(STAGE, f"rejected_{reason}").inc()
    return beam.pvalue.TaggedOutput(ERRORS, error_record(uri, label, reason, detail))


def to_example(record: ImageRecord) -> bytes:
    """Serialises a kept image as a ``tf.train.Example`` (``components.common.schema``)."""
    return schema.make_example(
        encoded=record.encoded,
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


# --------------------------------------------------------------------------- inputs


def _resolve(uri: str, csv_file: str) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    return io.join(posixpath.dirname(csv_file), uri)


def _is_header(uri: str, label: str, labels: set[str]) -> bool:
    return (
        label not in labels
        and uri.lower() in _HEADER_URI_NAMES
        and label.lower() in _HEADER_LABEL_NAMES
    )


class ParseCsvLine(beam.DoFn):
    """``(csv file, line)`` to ``(uri, label)``; malformed lines go to the ``errors`` output."""

    def __init__(self, labels: Iterable[str]):
        self._labels = set(labels)

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        csv_file, line = element
        text = line.strip()
        try:
            fields = beam_utils.parse_csv_line(text)
        except csv.Error as e:
            yield _reject(csv_file, "", image_checks.MALFORMED_LINE, f"{e}: {text!r}")
            return
        if not fields:
            return
        if len(fields) != 2 or not fields[0] or not fields[1]:
            detail = f"expected 'uri,label', got {len(fields)} field(s): {text!r}"
            yield _reject(csv_file, "", image_checks.MALFORMED_LINE, detail)
            return
        uri, label = fields
        if _is_header(uri, label, self._labels):
            Metrics.counter(STAGE, "csv_header_lines").inc()
            return
        yield _resolve(uri, csv_file), label


def _label_from_path(path: str) -> tuple[str, str]:
    return path, posixpath.basename(posixpath.dirname(path))


def _has_image_extension(path: str) -> bool:
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return True
    Metrics.counter(STAGE, "skipped_non_image_files").inc()
    return False


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
            yield _reject(uri, label, image_checks.UNKNOWN_LABEL, detail)


class OneLabelPerUri(beam.DoFn):
    """``(uri, [labels])`` after grouping: a repeated line is kept once, a URI listed
    with different labels is rejected."""

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[Any]:
        uri, labels = element
        labels = list(labels)
        distinct = sorted(set(labels))
        if len(distinct) == 1:
            if len(labels) > 1:
                Metrics.counter(STAGE, "duplicate_inputs").inc(len(labels) - 1)
            yield uri, distinct[0]
        else:
            detail = f"listed with {len(distinct)} different labels: {distinct}"
            yield _reject(uri, "|".join(distinct), image_checks.CONFLICTING_LABELS, detail)


def read_file(uri: str) -> bytes:
    """Reads a local or remote file's bytes as they are (no decompression).

    Raises:
        ImageRejected: ``missing_file`` or ``unreadable_file``.
    """
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    except Exception as e:
        try:
            missing = not FileSystems.exists(uri)
        except Exception:
            missing = False
        if missing:
            raise ImageRejected(image_checks.MISSING_FILE, f"no such file: {uri}") from e
        raise ImageRejected(image_checks.UNREADABLE_FILE, f"cannot read {uri}: {e}") from e


class ReadAndCheckImage(beam.DoFn):
    """``(uri, label)`` to an ``ImageRecord``; unreadable or bad images go to ``errors``."""

    def __init__(
        self, labels: list[str], train_fraction: float, valid_fraction: float, max_side: int
    ):
        self._label_index = {label: i for i, label in enumerate(labels)}
        self._train_fraction = train_fraction
        self._valid_fraction = valid_fraction
        self._max_side = max_side

    def setup(self) -> None:
        self._seen = 0
        self._kept = Metrics.counter(STAGE, "images_kept")
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
            yield _reject(uri, label, e.reason, e.detail)
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
            encoded=checked.encoded,
            height=checked.height,
            width=checked.width,
            reencoded=checked.reencoded,
            resized=checked.resized,
        )


# --------------------------------------------------------------------------- counts


class StatsFn(beam.CombineFn):
    """Combines kept records and rejections into the dict written to ``stats.json``.

    Inputs are small events: ``("kept", split, label, nbytes, reencoded, resized)`` or
    ``("rejected", reason)``.
    """

    def __init__(self, labels: list[str]):
        self._labels = list(labels)

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, acc: collections.Counter, event: tuple) -> collections.Counter:
        if event[0] == "kept":
            _, split, label, nbytes, reencoded, resized = event
            acc[("kept", split, label)] += 1
            acc[("image_bytes",)] += nbytes
            acc[("reencoded",)] += int(reencoded)
            acc[("resized",)] += int(resized)
        else:
            acc[("rejected", event[1])] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[collections.Counter]):
        merged = collections.Counter()
        for acc in accumulators:
            merged.update(acc)
        return merged

    def extract_output(self, acc: collections.Counter) -> dict[str, Any]:
        classes = {
            split: {label: acc[("kept", split, label)] for label in self._labels}
            for split in schema.SPLITS
        }
        by_reason = {key[1]: n for key, n in sorted(acc.items()) if key[0] == "rejected"}
        splits = {split: sum(counts.values()) for split, counts in classes.items()}
        return {
            "labels": self._labels,
            "splits": splits,
            "classes": classes,
            "kept": sum(splits.values()),
            "rejected": sum(by_reason.values()),
            "rejected_by_reason": by_reason,
            "image_bytes": acc[("image_bytes",)],
            "reencoded": acc[("reencoded",)],
            "resized": acc[("resized",)],
        }


def _kept_event(record: ImageRecord) -> tuple:
    return (
        "kept",
        record.split,
        record.label,
        len(record.encoded),
        record.reencoded,
        record.resized,
    )


# --------------------------------------------------------------------------- pipeline


def _write_single_file(pcoll: beam.PCollection, path: str, step: str) -> None:
    """Writes the lines of a PCollection to exactly ``path`` (written even when empty)."""
    _ = pcoll | step >> beam.io.WriteToText(path, shard_name_template="")


def build_pipeline(
    pipeline: beam.Pipeline,
    output_dir: str,
    labels: list[str],
    *,
    csv_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    max_image_side: int = 1024,
) -> None:
    """Adds the stage's transforms to a Beam pipeline (``run`` builds and runs one).

    Args:
        pipeline: The pipeline to add to.
        output_dir: Dataset directory (local or ``gs://``).
        labels: The label list; its order gives the class indices.
        csv_uri: CSV of ``uri,label`` lines (or a glob of several); exclusive with image_dir.
        image_dir: Root of a ``<label>/<image>`` folder tree; exclusive with csv_uri.
        train_fraction: Share of images in the train split.
        valid_fraction: Share of images in the valid split; the rest is test.
        num_shards: Shards per split; 0 lets the runner choose.
        max_image_side: Long side above which images are scaled down; 0 never scales.
    """
    errors = []
    if csv_uri:
        parsed = (
            pipeline
            | "ReadCsv" >> beam.io.ReadFromTextWithFilename(csv_uri)
            | "ParseCsv" >> beam.ParDo(ParseCsvLine(labels)).with_outputs(ERRORS, main="ok")
        )
        errors.append(parsed[ERRORS])
        pairs = parsed.ok
    else:
        patterns = [io.join(image_dir, name, "*") for name in class_dirs(image_dir)]
        pairs = (
            pipeline
            | "ClassPatterns" >> beam.Create(patterns)
            | "MatchImages" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "ImageExtensions" >> beam.Filter(_has_image_extension)
            | "LabelFromFolder" >> beam.Map(_label_from_path)
        )
    known = pairs | "CheckLabel" >> beam.ParDo(CheckLabel(labels)).with_outputs(ERRORS, main="ok")
    errors.append(known[ERRORS])
    # Grouping by URI drops repeats and, as a fusion break, spreads the reads over workers.
    unique = (
        known.ok
        | "GroupByUri" >> beam.GroupByKey()
        | "OneLabelPerUri" >> beam.ParDo(OneLabelPerUri()).with_outputs(ERRORS, main="ok")
    )
    errors.append(unique[ERRORS])
    checked = unique.ok | "ReadAndCheckImages" >> beam.ParDo(
        ReadAndCheckImage(labels, train_fraction, valid_fraction, max_image_side)
    ).with_outputs(ERRORS, main="ok")
    errors.append(checked[ERRORS])
    records = checked.ok

    by_split = records | "PartitionBySplit" >> beam.Partition(
        lambda record, _: schema.SPLITS.index(record.split), len(schema.SPLITS)
    )
    for split, split_records in zip(schema.SPLITS, by_split, strict=True):
        _ = (
            split_records
            | f"Serialize_{split}" >> beam.Map(to_example)
            | f"Write_{split}"
            >> beam.io.WriteToTFRecord(
                io.join(output_dir, split, split),
                file_name_suffix=schema.SHARD_SUFFIX,
                num_shards=num_shards,
                shard_name_template=SHARD_NAME_TEMPLATE,
                compression_type=CompressionTypes.GZIP,
            )
        )
        _write_single_file(
            split_records | f"ManifestLines_{split}" >> beam.Map(manifest_line),
            schema.manifest_path(output_dir, split),
            f"WriteManifest_{split}",
        )

    all_errors = tuple(errors) | "AllErrors" >> beam.Flatten()
    _write_single_file(
        all_errors | "ErrorLines" >> beam.Map(json.dumps, sort_keys=True),
        io.join(output_dir, schema.ERRORS_FILE),
        "WriteErrors",
    )

    events = (
        records | "KeptEvents" >> beam.Map(_kept_event),
        all_errors | "RejectedEvents" >> beam.Map(lambda error: ("rejected", error["reason"])),
    ) | "AllEvents" >> beam.Flatten()
    _write_single_file(
        events
        | "Count" >> beam.CombineGlobally(StatsFn(labels))
        | "StatsJson" >> beam.Map(json.dumps, indent=2, sort_keys=True),
        io.join(output_dir, schema.STATS_FILE),
        "WriteStats",
    )


# --------------------------------------------------------------------------- driver


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


def _resolve_labels(csv_uri: str, labels_uri: str, image_dir: str) -> list[str]:
    if bool(csv_uri) == bool(image_dir):
        raise ValueError(
            "give exactly one input: csv_uri (a uri,label CSV, with labels_uri) or "
            f"image_dir (a <label>/<image> folder tree); got csv_uri={csv_uri!r}, "
            f"image_dir={image_dir!r}"
        )
    if csv_uri:
        if not labels_uri:
            raise ValueError("csv_uri needs labels_uri: a label file, one label per line")
        if not FileSystems.match([csv_uri])[0].metadata_list:
            raise FileNotFoundError(f"no CSV file matches csv_uri: {csv_uri}")
        return labels_lib.read_labels(labels_uri)
    dirs = class_dirs(image_dir)
    if labels_uri:
        labels = labels_lib.read_labels(labels_uri)
        if missing := [label for label in labels if label not in dirs]:
            _log.warning("no folder under %s for label(s) %s", image_dir, missing)
        return labels
    if not dirs:
        raise ValueError(f"no class subdirectories (<label>/<image>) under {image_dir}")
    return dirs


def _remove_stale_shards(output_dir: str) -> None:
    beam_utils.delete_matching([schema.shard_pattern(output_dir, split) for split in schema.SPLITS])


def _reasons(stats: dict[str, Any]) -> str:
    return ", ".join(f"{r}={n}" for r, n in sorted(stats["rejected_by_reason"].items()))


def check_error_share(
    stats: dict[str, Any], max_error_fraction: float, output_dir: str, source: str = ""
) -> None:
    """Fails the run when too much input was rejected, or when nothing was kept.

    Args:
        stats: The run's counts (``kept``, ``rejected``, ``rejected_by_reason``).
        max_error_fraction: Largest tolerated share of rejected inputs.
        output_dir: The dataset directory, where ``errors.jsonl`` lies.
        source: The input (CSV or image folder), for the message.

    Raises:
        ValueError: naming the counts by reason and the errors file.
    """
    kept, rejected = stats["kept"], stats["rejected"]
    total = kept + rejected
    errors_path = io.join(output_dir, schema.ERRORS_FILE)
    if total == 0:
        raise ValueError(f"create_tfrecords found no input images in {source or 'the input'}")
    share = rejected / total
    if share > max_error_fraction or kept == 0:
        raise ValueError(
            f"create_tfrecords rejected {rejected} of {total} input images ({share:.1%}), "
            f"more than max_error_fraction={max_error_fraction} allows"
            f"{'' if kept else ' (none was kept)'}: {_reasons(stats)}. "
            f"Each rejected input and its reason is listed in {errors_path}"
        )


def run(
    output_dir: str,
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    runner: str = "DirectRunner",
    beam_args: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the create_tfrecords pipeline and waits for it.

    Args:
        output_dir: Dataset directory to write (local path or ``gs://``); the layout is the
            one ``components.common.schema`` documents. Shards of an earlier run there are
            replaced.
        csv_uri: CSV of ``uri,label`` lines, the book's format (or a glob of several CSVs).
            Exclusive with ``image_dir``; needs ``labels_uri``.
        labels_uri: Label file, one label per line; its order gives the class indices.
            Optional with ``image_dir`` (default: the sorted subdirectory names).
        image_dir: Root of a ``<label>/<image>`` folder tree. Exclusive with ``csv_uri``.
        train_fraction: Share of images in the train split.
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: Shards per split; 0 lets the runner choose (about one per bundle of
            work: one or a few on DirectRunner, more on Dataflow as it scales out).
        max_image_side: Images whose long side is larger are scaled down to it and
            re-encoded; 0 keeps every size.
        max_error_fraction: Largest tolerated share of rejected inputs; above it the run
            fails (after writing ``errors.jsonl``).
        runner: Beam runner, e.g. ``"DirectRunner"`` (run in this process, never trying to
            download Prism) or ``"DataflowRunner"``.
        beam_args: Extra Beam pipeline arguments, e.g. ``["--project=p", "--region=r",
            "--temp_location=gs://b/tmp"]`` for Dataflow.

    Returns:
        The counts also written to ``stats.json``: ``labels``, ``splits`` (images per
        split), ``classes`` (per split and label), ``kept``, ``rejected``,
        ``rejected_by_reason``, ``image_bytes`` (stored encoded bytes), ``reencoded`` and
        ``resized``.

    Raises:
        ValueError: on invalid arguments, no input image, or a rejected share above
            ``max_error_fraction``.
        FileNotFoundError: when the CSV, label file or image folder does not exist.
    """
    validate_fractions(train_fraction, valid_fraction)
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0 (0 = automatic), got {num_shards}")
    if max_image_side < 0:
        raise ValueError(f"max_image_side must be >= 0 (0 = no limit), got {max_image_side}")
    if not 0 <= max_error_fraction <= 1:
        raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
    if not output_dir:
        raise ValueError("output_dir is required")
    labels = _resolve_labels(csv_uri, labels_uri, image_dir)

    io.makedirs(output_dir)
    labels_lib.write_labels(io.join(output_dir, labels_lib.LABELS_FILE), labels)
    _remove_stale_shards(output_dir)
    source = csv_uri or image_dir
    _log.info("create_tfrecords: %s -> %s (%d labels, %s)", source, output_dir, len(labels), runner)

    with beam_utils.make_pipeline(runner, beam_args) as pipeline:
        build_pipeline(
            pipeline,
            output_dir,
            labels,
            csv_uri=csv_uri,
            image_dir=image_dir,
            train_fraction=train_fraction,
            valid_fraction=valid_fraction,
            num_shards=num_shards,
            max_image_side=max_image_side,
        )

    stats = io.read_json(io.join(output_dir, schema.STATS_FILE))
    check_error_share(stats, max_error_fraction, output_dir, source)
    splits = ", ".join(f"{split}={n}" for split, n in stats["splits"].items())
    _log.info("create_tfrecords kept %d images (%s) in %s", stats["kept"], splits, output_dir)
    if stats["rejected"]:
        _log.warning(
            "create_tfrecords skipped %d input(s) (%s); see %s",
            stats["rejected"],
            _reasons(stats),
            io.join(output_dir, schema.ERRORS_FILE),
        )
    return stats
