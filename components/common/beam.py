"""What the Beam stages (create_tfrecords, batch_predict) share: the pipeline options
(Dataflow's named ones included), creating the pipeline with its runner, replacing an
earlier run's shards, reading listing lines, and writing files keyed by path in one step
(small text files; create_tfrecords' shards group by path the same way)."""

from __future__ import annotations

import csv
import dataclasses
import logging
import posixpath
from collections.abc import Collection, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from components.common.gcp_names import kms_key_name

_log = logging.getLogger(__name__)

# Beam's own spellings of the same option (argparse aliases of one destination).
_ALIASES = {"worker_machine_type": "machine_type"}


@dataclasses.dataclass(frozen=True)
class DataflowSettings:
    """The named Dataflow settings, the same for both Beam stages; an empty string (or 0
    workers) leaves an option unset, so that Beam's default applies.

    Attributes:
        project: Google Cloud project of the job (``--project``).
        region: Dataflow region, e.g. ``us-central1`` (``--region``).
        temp_location: ``gs://`` folder for temporary and staging files
            (``--temp_location``).
        worker_machine_type: Worker VM type, e.g. ``n2-standard-4`` (``--machine_type``).
        max_num_workers: Most workers autoscaling may start (``--max_num_workers``).
        sdk_container_image: Image the workers run (``--sdk_container_image``): the
            stage's ``dataflow-worker`` image.
        service_account_email: Service account the workers run as
            (``--service_account_email``); empty: the Compute Engine default one.
        dataflow_kms_key: Cloud KMS key of the job's state and temporary data
            (``--dataflow_kms_key``), ``projects/P/locations/L/keyRings/R/cryptoKeys/K``;
            empty: Google-managed encryption.
    """

    project: str = ""
    region: str = ""
    temp_location: str = ""
    worker_machine_type: str = ""
    max_num_workers: int = 0
    sdk_container_image: str = ""
    service_account_email: str = ""
    dataflow_kms_key: str = ""

    def args(self, runner: str = "DataflowRunner") -> list[str]:
        """The Beam pipeline arguments of these settings for ``runner``.

        A worker image also sets ``--sdk_location=container``: the workers use the Beam
        SDK installed in that image instead of staging one. The worker image, service
        account and KMS key are Dataflow's own, so with another runner they are left out
        (a pipeline can name each Beam stage's worker image, and the vertex target its
        service account and key, whatever runner the stage is run with).

        Returns:
            Arguments such as ``["--project=p", "--region=r"]``, in a fixed order.

        Raises:
            ValueError: when ``max_num_workers`` is negative, or ``dataflow_kms_key`` is
                not a Cloud KMS key's resource name.
        """
        if self.max_num_workers < 0:
            raise ValueError(
                f"max_num_workers must be >= 0 (0 = unset), got {self.max_num_workers}"
            )
        on_dataflow = runner == "DataflowRunner"
        image = self.sdk_container_image.strip() if on_dataflow else ""
        named = [
            ("project", self.project.strip()),
            ("region", self.region.strip()),
            ("temp_location", self.temp_location.strip()),
            ("machine_type", self.worker_machine_type.strip()),
            ("max_num_workers", str(self.max_num_workers) if self.max_num_workers else ""),
            ("service_account_email", self.service_account_email.strip() if on_dataflow else ""),
            ("dataflow_kms_key", kms_key_name(self.dataflow_kms_key) if on_dataflow else ""),
            ("sdk_container_image", image),
            ("sdk_location", "container" if image else ""),
        ]
        return [f"--{name}={value}" for name, value in named if value]


def _flag(arg: str) -> tuple[str, str | None]:
    """``--name=value`` to ``(name, value)``; ``--name`` alone gives ``(name, None)``."""
    name, sep, value = arg[2:].partition("=")
    name = name.replace("-", "_")
    return _ALIASES.get(name, name), (value if sep else None)


def merge_args(named: list[str], beam_args: Sequence[str] | None = None) -> list[str]:
    """``named`` options (``--name=value`` each) followed by ``beam_args``.

    An option given both ways with the same value is kept once; with different values it
    is an error rather than a silent choice of one.

    Raises:
        ValueError: naming the option set twice to different values.
    """
    extra = [str(arg) for arg in beam_args or []]
    given: dict[str, str] = dict(_flag(arg) for arg in named)  # type: ignore[misc]
    merged = list(named)
    i = 0
    while i < len(extra):
        arg = extra[i]
        value = None
        if arg.startswith("--"):
            name, value = _flag(arg)
            if value is None and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value = extra[i + 1]  # The "--name value" form.
                step = 2
            else:
                step = 1
            if name in given:
                if value != given[name]:
                    raise ValueError(
                        f"--{name} is set twice, to {given[name]!r} by its parameter and to "
                        f"{value!r} in beam_args; give it once"
                    )
                i += step
                continue
            merged.extend(extra[i : i + step])
            i += step
            continue
        merged.append(arg)
        i += 1
    return merged


def _resolve_runner(runner: str, options: PipelineOptions) -> Any:
    """The runner to use: DirectRunner's batch engine directly for ``"DirectRunner"``.

    Beam's DirectRunner first tries to download and start the Prism runner from GitHub,
    which stalls where there is no internet (a cluster pod, an air-gapped machine). For a
    bounded pipeline it then runs the in-process FnApiRunner; this goes there at once,
    with the pipeline options the DirectRunner would hand it (``--direct_num_workers``,
    ``--direct_running_mode`` are honoured). A streaming pipeline (``--streaming``) goes
    to the DirectRunner's streaming engine, the one that reads and writes Pub/Sub. Other
    names go to Beam unchanged.
    """
    if runner not in ("DirectRunner", "direct"):
        return runner
    if options.view_as(StandardOptions).streaming:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return BundleBasedDirectRunner()
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def direct_args(runner: str, direct_num_workers: int = 1) -> list[str]:
    """The DirectRunner's options for ``direct_num_workers`` processes.

    Args:
        runner: The Beam runner name.
        direct_num_workers: 1 runs the pipeline in this process (Beam's ``in_memory``
            mode); 0 starts one worker process per core, n > 1 that many
            (``multi_processing`` mode).

    Raises:
        ValueError: for a negative count, or a count other than 1 with another runner.
    """
    if direct_num_workers < 0:
        raise ValueError(
            f"direct_num_workers must be >= 0 (0 = one per core), got {direct_num_workers}"
        )
    if direct_num_workers == 1:
        return []
    if runner not in ("DirectRunner", "direct"):
        raise ValueError(f"direct_num_workers applies to the DirectRunner only, not {runner}")
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={direct_num_workers}"]


def pipeline_options(
    runner: str,
    beam_args: Sequence[str] | None = None,
    direct_num_workers: int = 1,
    dataflow: DataflowSettings | None = None,
) -> PipelineOptions:
    """The pipeline options of ``make_pipeline`` (see there), without creating a pipeline."""
    named = [
        *direct_args(runner, direct_num_workers),
        *(dataflow or DataflowSettings()).args(runner),
    ]
    return PipelineOptions([f"--runner={runner}", *merge_args(named, beam_args)])


def make_pipeline(
    runner: str,
    beam_args: Sequence[str] | None = None,
    direct_num_workers: int = 1,
    dataflow: DataflowSettings | None = None,
) -> beam.Pipeline:
    """A Beam pipeline on ``runner`` (e.g. ``DirectRunner``, ``DataflowRunner``).

    Args:
        runner: Beam runner name.
        beam_args: Extra pipeline arguments, e.g. ``["--job_name=j"]``; an option also set
            by a named parameter must agree with it.
        direct_num_workers: DirectRunner processes (``direct_args``): 1 (default) runs
            in this process, 0 one worker process per core.
        dataflow: The named Dataflow settings; None: none.

    Why one process by default: on a 2-core machine, create_tfrecords over 2,000
    generated JPEGs took 1.9 s in this process and 24.7 s with a worker per core (and
    24 s against 46 s over 16,000): each worker process starts Python, imports
    TensorFlow and the stage, and every element crosses a process boundary, which the
    second core does not pay back. Multi-process mode pays off with many cores and long
    per-element work; beyond one machine, use Dataflow.
    """
    options = pipeline_options(runner, beam_args, direct_num_workers, dataflow)
    return beam.Pipeline(runner=_resolve_runner(runner, options), options=options)


def stage_counters(result: Any, namespace: str) -> dict[str, int]:
    """A finished (or stopped) run's counters in ``namespace``, by name; empty when the
    runner reports none."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception as e:  # Some runners do not report metrics.
        _log.info("%s: no counters from the runner: %s", namespace, e)
        return {}
    counters: dict[str, int] = {}
    for counter in query.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        counters[name] = counters.get(name, 0) + int(value or 0)
    return dict(sorted(counters.items()))


def delete_matching(patterns: list[str]) -> int:
    """Deletes the files matching ``patterns`` (shards of an earlier run: a new run may
    write fewer, and readers glob). Returns how many were deleted."""
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        _log.warning("replacing %d shard(s) of an earlier run: %s", len(stale), patterns)
        FileSystems.delete(stale)
    return len(stale)


MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
EMPTY_FILE = "empty_file"


class UnreadableFile(Exception):
    """A listed file that cannot be read; ``reason`` is ``missing_file``,
    ``unreadable_file`` or (``read_image_file``) ``empty_file``, ``detail`` says why for
    a person."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def read_file(uri: str) -> bytes:
    """Reads a local or remote file's bytes as they are (no decompression).

    Raises:
        UnreadableFile: with reason ``missing_file`` when the file does not exist, else
            ``unreadable_file``.
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
            raise UnreadableFile(MISSING_FILE, f"no such file: {uri}") from e
        raise UnreadableFile(UNREADABLE_FILE, f"cannot read {uri}: {type(e).__name__}: {e}") from e


def read_image_file(uri: str) -> bytes:
    """An image file's bytes as they are, local or remote (both prediction stages).

    Raises:
        UnreadableFile: with reason ``missing_file``, ``unreadable_file`` or
            ``empty_file``.
    """
    data = read_file(uri)
    if not data:
        raise UnreadableFile(EMPTY_FILE, f"the file is empty (0 bytes): {uri}")
    return data


# Header lines of a listing are skipped when their fields are such column names.
HEADER_URI_NAMES = frozenset(
    {"uri", "url", "image", "image_uri", "image_url", "path", "image_path"}
    | {"file", "filename", "gcs_uri", "gcs_path"}
)
HEADER_LABEL_NAMES = frozenset(
    {"label", "labels", "class", "class_name", "label_name", "category", "true_label"}
)


def is_header(fields: list[str], labels: Collection[str] = ()) -> bool:
    """Whether a listing line's fields (``uri`` or ``uri,label``) are a header such as
    ``uri,label`` or ``path,class``, rather than an image; never when the label is one of
    ``labels``."""
    if len(fields) > 1 and (fields[1] in labels or fields[1].lower() not in HEADER_LABEL_NAMES):
        return False
    return fields[0].lower() in HEADER_URI_NAMES


def resolve_listed_uri(uri: str, listing: str) -> str:
    """A listing's URI as read: relative ones are relative to the listing's folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return posixpath.join(posixpath.dirname(listing), uri)


def error_record(stage: str, uri: str, reason: str, detail: str, **fields: str) -> dict:
    """One line of a stage's ``errors.jsonl``: ``uri``, the stage's own ``fields`` (e.g.
    ``label``), ``reason``, ``detail`` and ``stage``."""
    return {"uri": uri, **fields, "reason": reason, "detail": detail, "stage": stage}


def reasons_summary(by_reason: dict[str, int]) -> str:
    """``reason=count`` pairs, sorted, for an error message."""
    return ", ".join(f"{reason}={n}" for reason, n in sorted(by_reason.items()))


def parse_csv_line(line: str) -> list[str]:
    """The stripped fields of one CSV line of a listing (``uri,label`` or ``uri``).

    A byte-order mark and trailing empty fields (trailing commas) are dropped; a blank
    line gives ``[]``.

    Raises:
        csv.Error: when the line is not valid CSV.
    """
    text = line.replace("\ufeff", "").strip()
    if not text:
        return []
    fields = [field.strip() for field in next(csv.reader([text], strict=True))]
    while len(fields) > 1 and not fields[-1]:
        fields.pop()
    return fields


class GroupByPath(beam.PTransform):
    """``(path, item)`` pairs to one ``(path, items)`` group per path, for a sink that
    writes each group as one file; every path of ``paths`` (a list, or a PCollection of
    paths made in the pipeline) has its group even when no pair names it, with a ``None``
    item (the marker that the file must exist)."""

    def __init__(self, paths: list[str] | beam.PCollection):
        super().__init__()
        self._paths = paths

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        if isinstance(self._paths, beam.PCollection):
            every = self._paths | "EveryPath" >> beam.Map(lambda path: (path, None))
        else:
            every = pairs.pipeline | "EveryPath" >> beam.Create(
                [(path, None) for path in self._paths], reshuffle=False
            )
        return (
            (pairs, every) | "WithEveryPath" >> beam.Flatten() | "GroupByPath" >> beam.GroupByKey()
        )


class _WriteLines(beam.DoFn):
    """Writes one ``(path, lines)`` group as exactly ``path``: each line, then a newline
    (as ``WriteToText`` does); a ``None`` line (the marker that the file must exist) is
    skipped. Streams the lines, so the file need not fit in memory."""

    def process(self, group: tuple[str, Any]):
        path, lines = group
        with FileSystems.create(
            path, mime_type="text/plain", compression_type=CompressionTypes.UNCOMPRESSED
        ) as f:
            for line in lines:
                if line is not None:
                    f.write(line.encode("utf-8") + b"\n")
        yield path


class WriteTextFiles(beam.PTransform):
    """Writes ``(path, line)`` pairs as one text file per path, with a single file sink.

    It stands for one ``WriteToText(path, shard_name_template="")`` per file: the same
    content (UTF-8 lines, each ending in a newline, in no particular order), each path in
    ``paths`` written even when it gets no line. Each file has one writer, as a
    single-shard ``WriteToText`` has; a ``GroupByKey`` by path brings its lines there
    (on Dataflow, a large group is streamed, not held in memory). On the DirectRunner this
    is much cheaper than a ``WriteToText`` per file, whose init, write and finalize
    stages each cost a fixed time.

    Returns:
        The PCollection of the written paths.
    """

    def __init__(self, paths: list[str]):
        super().__init__()
        self._paths = list(paths)

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        return pairs | GroupByPath(self._paths) | "WriteFiles" >> beam.ParDo(_WriteLines())
