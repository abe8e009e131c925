"""The create_tfrecords Beam pipeline: labelled images to sharded TFRecords.

The stage in steps, each in its own module:

1. ``inputs``: list the input (a ``uri,label`` CSV with a label file, or a
   ``<label>/<image>`` folder tree) as ``(uri, label)`` pairs with known labels.
2. ``duplicates.OneLabelPerUri``: one pair per URI (grouped by URI, which also spreads
   the reads over the workers).
3. ``records.ReadAndCheckImage``: read and fully decode each image with PIL
   (``image_checks``): decide to keep an upright RGB JPEG's bytes or to re-encode
   anything else as one, assign the split (``splits.assign_split``: a pure function of
   the URI). What goes on is a small ``ImageRecord`` (URI, label, split, the stored
   bytes' digest and size), not the image.
4. ``duplicates.KeepOnePerImage``: one record per distinct stored image.
5. ``sharding.WriteShards``: each split gets shards of about ``target_shard_mb`` from
   the bytes it stores, each record the shard ``sharding.shard_index`` picks; one writer
   per shard reads each of its images again (``records.stored_image``) and writes its
   record. Then write, with one sink for all of them
   (``common.beam.WriteTextFiles``), the manifests, the rejected inputs
   (``errors.jsonl``) and the counts (``stats.StatsFn``, ``stats.json``);
   the driver then adds the shard files and counts to ``stats.json`` and writes
   ``report.md`` (``report.render_report``).

Image bytes are read and decoded by step 3, read again by step 5 straight into their
shard, and never grouped or shuffled: what is grouped (URIs, digests, shard paths) is a
few hundred bytes per image, so memory stays flat in the size of the data on the
DirectRunner and Dataflow's shuffle carries no images.

Bad input is data, not a crash: each rejected input is counted and written with its reason
to ``errors.jsonl``; the run fails after the pipeline only when the rejected share passes
``max_error_fraction``. The output layout is the one ``components.common.schema``
documents.

On Dataflow, pass ``runner="DataflowRunner"`` with ``dataflow`` settings (``project``,
``region``, ``temp_location`` on ``gs://``, optionally ``worker_machine_type``,
``max_num_workers``, ``service_account_email`` and ``dataflow_kms_key``, and
``sdk_container_image``: the stage's ``dataflow-worker`` image
(containers/create_tfrecords/Dockerfile), which holds this package; inputs and output on
``gs://``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from components.common import beam as beam_utils, io, labels as labels_lib, schema
from components.create_tfrecords import image_checks, report as report_lib, sharding
from components.create_tfrecords.duplicates import KeepOnePerImage, OneLabelPerUri
from components.create_tfrecords.inputs import (
    IMAGE_EXTENSIONS,
    CheckLabel,
    ListInputs,
    ParseCsvLine,
    class_dirs,
    resolve_labels,
)
from components.create_tfrecords.records import (
    ERRORS,
    IGNORED,
    STAGE,
    ImageRecord,
    ReadAndCheckImage,
    manifest_line,
    read_file,
    stored_image,
    to_example,
)
from components.create_tfrecords.splits import assign_split, split_point, validate_fractions
from components.create_tfrecords.stats import (
    StatsFn,
    ignored_event,
    kept_event,
    rejected_event,
)

__all__ = [
    "ERRORS",
    "IMAGE_EXTENSIONS",
    "REPORT_FILE",
    "STAGE",
    "CheckLabel",
    "ImageRecord",
    "ParseCsvLine",
    "ReadAndCheckImage",
    "assign_split",
    "build_pipeline",
    "check_arguments",
    "check_error_share",
    "finish_run",
    "class_dirs",
    "manifest_line",
    "read_file",
    "remove_stale_shards",
    "run",
    "serialize_record",
    "split_point",
    "to_example",
    "validate_fractions",
]

REPORT_FILE = "report.md"
# Rejections that lose no image (another copy is kept): not counted as errors.
NOT_ERRORS = (image_checks.DUPLICATE_IMAGE,)

_log = logging.getLogger(__name__)


def serialize_record(record: ImageRecord, max_image_side: int) -> bytes:
    """A checked image's ``tf.train.Example``, its bytes read again (``stored_image``)."""
    return to_example(record, stored_image(record, max_image_side))


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
    target_shard_mb: float = sharding.TARGET_SHARD_MB,
    max_image_side: int = 1024,
    extra_ignored: dict[str, int] | None = None,
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
        num_shards: Shards per split; 0 derives each split's count from the bytes it
            stores and ``target_shard_mb``.
        target_shard_mb: Size a shard should have, in MiB, when ``num_shards`` is 0.
        max_image_side: Long side above which images are scaled down; 0 never scales.
        extra_ignored: Counts of inputs skipped before the pipeline (the label file's
            blank and repeated lines), added to ``ignored`` in ``stats.json``.
    """
    listing = pipeline | "ListInputs" >> ListInputs(labels, csv_uri=csv_uri, image_dir=image_dir)
    unique = (
        listing["ok"]
        | "GroupByUri" >> beam.GroupByKey()
        | "OneLabelPerUri" >> beam.ParDo(OneLabelPerUri()).with_outputs(ERRORS, IGNORED, main="ok")
    )
    checked = unique.ok | "ReadAndCheckImages" >> beam.ParDo(
        ReadAndCheckImage(labels, train_fraction, valid_fraction, max_image_side)
    ).with_outputs(ERRORS, main="ok")
    distinct = checked.ok | "KeepOnePerImage" >> KeepOnePerImage()
    written = distinct["ok"] | "WriteShards" >> sharding.WriteShards(
        output_dir,
        functools.partial(serialize_record, max_image_side=max_image_side),
        target_shard_mb=target_shard_mb,
        num_shards=num_shards,
    )
    records = written["ok"]

    # (path, line) pairs of the small text files, all written by one sink at the end.
    manifests = {split: schema.manifest_path(output_dir, split) for split in schema.SPLITS}
    side_files: list[beam.PCollection] = [
        records
        | "ManifestLines"
        >> beam.Map(lambda record: (manifests[record.split], manifest_line(record)))
    ]

    all_errors = (
        listing["errors"],
        unique[ERRORS],
        checked[ERRORS],
        distinct["errors"],
        written["errors"],
    ) | "AllErrors" >> beam.Flatten()
    errors_path = io.join(output_dir, schema.ERRORS_FILE)
    side_files.append(
        all_errors
        | "ErrorLines" >> beam.Map(lambda error: (errors_path, json.dumps(error, sort_keys=True)))
    )

    events = (
        records | "KeptEvents" >> beam.Map(kept_event),
        all_errors | "RejectedEvents" >> beam.Map(rejected_event),
        (listing["ignored"], unique[IGNORED])
        | "AllIgnored" >> beam.Flatten()
        | "IgnoredEvents" >> beam.Map(ignored_event),
    ) | "AllEvents" >> beam.Flatten()
    stats_path = io.join(output_dir, schema.STATS_FILE)
    side_files.append(
        events
        | "Count" >> beam.CombineGlobally(StatsFn(labels, extra_ignored))
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


def remove_stale_shards(output_dir: str) -> None:
    """Deletes the shards an earlier run left in ``output_dir`` (a new run may write fewer)."""
    beam_utils.delete_matching([schema.shard_pattern(output_dir, split) for split in schema.SPLITS])


def check_arguments(
    output_dir: str,
    train_fraction: float,
    valid_fraction: float,
    max_image_side: int,
    max_error_fraction: float,
    target_shard_mb: float,
    num_shards: int,
    runner: str,
    beam_args: Sequence[str],
    direct_num_workers: int,
    dataflow: beam_utils.DataflowSettings | None,
) -> None:
    """Raises ValueError on a setting no run can use (both tasks' ``run`` call it before
    any file is written), a Beam option set twice to different values included."""
    beam_utils.pipeline_options(runner, beam_args, direct_num_workers, dataflow)
    validate_fractions(train_fraction, valid_fraction)
    if max_image_side < 0:
        raise ValueError(f"max_image_side must be >= 0 (0 = no limit), got {max_image_side}")
    if not 0 <= max_error_fraction <= 1:
        raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
    if not output_dir:
        raise ValueError("output_dir is required")
    sharding.check_sharding(target_shard_mb, num_shards)


def finish_run(
    output_dir: str,
    source: str,
    target_shard_mb: float,
    num_shards: int,
    max_error_fraction: float,
) -> dict[str, Any]:
    """After the pipeline (both tasks' ``run``): adds the shards written and the sharding
    to ``stats.json``, writes ``report.md``, then fails the run when too much input was
    rejected (``check_error_share``). Returns the stats."""
    stats_path = io.join(output_dir, schema.STATS_FILE)
    stats = io.read_json(stats_path)
    stats["shards"] = sharding.written_shards(output_dir)
    stats["sharding"] = {
        "target_shard_mb": target_shard_mb,
        "num_shards_forced": num_shards,
        "num_shards": {split: shards["files"] for split, shards in stats["shards"].items()},
    }
    io.write_json(stats_path, stats)
    io.write_text(
        io.join(output_dir, REPORT_FILE), report_lib.render_report(stats, source, output_dir)
    )
    check_error_share(stats, max_error_fraction, output_dir, source)
    return stats


def check_error_share(
    stats: dict[str, Any], max_error_fraction: float, output_dir: str, source: str = ""
) -> None:
    """Fails the run when too much input was rejected, or when nothing was kept.

    A ``duplicate_image`` rejection is no error (a copy of the image is kept): such
    inputs count neither as errors nor in the total.

    Args:
        stats: The run's counts (``kept``, ``rejected``, ``rejected_by_reason``).
        max_error_fraction: Largest tolerated share of rejected inputs.
        output_dir: The dataset directory, where ``errors.jsonl`` lies.
        source: The input (CSV or image folder), for the message.

    Raises:
        ValueError: naming the counts by reason and the errors file.
    """
    not_errors = sum(stats["rejected_by_reason"].get(reason, 0) for reason in NOT_ERRORS)
    kept, rejected = stats["kept"], stats["rejected"] - not_errors
    total = kept + rejected
    errors_path = io.join(output_dir, schema.ERRORS_FILE)
    if total == 0:
        raise ValueError(f"create_tfrecords found no input images in {source or 'the input'}")
    share = rejected / total
    if share > max_error_fraction or kept == 0:
        raise ValueError(
            f"create_tfrecords rejected {rejected} of {total} input images ({share:.1%}), "
            f"more than max_error_fraction={max_error_fraction} allows"
            f"{'' if kept else ' (none was kept)'}: {beam_utils.reasons_summary(stats['rejected_by_reason'])}. "
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
    beam_args: Sequence[str] = (),
    direct_num_workers: int = 1,
    target_shard_mb: float = sharding.TARGET_SHARD_MB,
    dataflow: beam_utils.DataflowSettings | None = None,
) -> dict[str, Any]:
    """Runs the create_tfrecords pipeline and waits for it.

    Args:
        output_dir: Dataset directory to write (local path or ``gs://``); the layout is the
            one ``components.common.schema`` documents, plus ``report.md``. Shards of an
            earlier run there are replaced.
        csv_uri: CSV of ``uri,label`` lines, the book's format (or a glob of several CSVs).
            Exclusive with ``image_dir``; needs ``labels_uri``.
        labels_uri: Label file, one label per line; its order gives the class indices.
            Optional with ``image_dir`` (default: the sorted subdirectory names).
        image_dir: Root of a ``<label>/<image>`` folder tree. Exclusive with ``csv_uri``.
        train_fraction: Share of images in the train split.
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: Shards per split; 0 derives each split's count from the bytes it
            stores and ``target_shard_mb`` (see ``sharding``), so the count follows the
            data.
        max_image_side: Images whose long side is larger are scaled down to it and
            re-encoded; 0 keeps every size.
        max_error_fraction: Largest tolerated share of rejected inputs; above it the run
            fails (after writing ``errors.jsonl``, ``stats.json`` and ``report.md``).
        runner: Beam runner, e.g. ``"DirectRunner"`` (run in this process, never trying to
            download Prism) or ``"DataflowRunner"``.
        beam_args: Other Beam pipeline arguments, e.g. ``["--job_name=j"]``; one also set
            by a named parameter below must agree with it.
        direct_num_workers: DirectRunner only: 1 runs in this process (the fastest on a
            few cores, see ``common.beam.make_pipeline``); 0 runs one worker process per
            core (multi-process mode), n > 1 that many.
        target_shard_mb: Size a shard should have, in MiB, when ``num_shards`` is 0.
        dataflow: The named Dataflow settings (project, region, machines, the workers'
            image: the stage's ``dataflow-worker`` image); None: none.

    Returns:
        The counts also written to ``stats.json``: ``labels``, ``splits`` (images per
        split), ``classes`` (per split and label), ``kept``, ``rejected``,
        ``rejected_by_reason``, ``rejected_examples``, ``ignored`` (skipped inputs by
        kind), ``image_bytes`` and ``image_bytes_by_split`` (stored encoded bytes),
        ``reencoded``, ``resized``, ``conversions``, ``image_sizes`` (width and height
        min/median/max, a histogram of the long side), ``shards`` (files and bytes
        written per split) and ``sharding`` (``target_shard_mb``, ``num_shards_forced``
        and the resulting ``num_shards`` per split).

    Raises:
        ValueError: on invalid arguments, no input image, or a rejected share above
            ``max_error_fraction``.
        FileNotFoundError: when the CSV, label file or image folder does not exist.
    """
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
    labels, label_notes = resolve_labels(csv_uri, labels_uri, image_dir)
    source = csv_uri or image_dir

    io.makedirs(output_dir)
    labels_lib.write_labels(io.join(output_dir, labels_lib.LABELS_FILE), labels)
    remove_stale_shards(output_dir)
    _log.info(
        "create_tfrecords: %s -> %s (%d labels, %s, %s)",
        source,
        output_dir,
        len(labels),
        runner,
        f"{num_shards} shards per split" if num_shards else f"shards of ~{target_shard_mb} MiB",
    )

    with beam_utils.make_pipeline(runner, beam_args, direct_num_workers, dataflow) as pipeline:
        build_pipeline(
            pipeline,
            output_dir,
            labels,
            csv_uri=csv_uri,
            image_dir=image_dir,
            train_fraction=train_fraction,
            valid_fraction=valid_fraction,
            num_shards=num_shards,
            target_shard_mb=target_shard_mb,
            max_image_side=max_image_side,
            extra_ignored=label_notes,
        )

    stats = finish_run(output_dir, source, target_shard_mb, num_shards, max_error_fraction)
    splits = ", ".join(f"{split}={n}" for split, n in stats["splits"].items())
    _log.info("create_tfrecords kept %d images (%s) in %s", stats["kept"], splits, output_dir)
    if stats["rejected"]:
        _log.warning(
            "create_tfrecords skipped %d input(s) (%s); see %s",
            stats["rejected"],
            beam_utils.reasons_summary(stats["rejected_by_reason"]),
            io.join(output_dir, schema.ERRORS_FILE),
        )
    return stats
