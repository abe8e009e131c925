"""What the Beam stages (create_tfrecords, batch_predict) share: creating the pipeline
with its runner, replacing an earlier run's shards, and reading listing lines."""

from __future__ import annotations

import csv
import logging
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

_log = logging.getLogger(__name__)


def _resolve_runner(runner: str, options: PipelineOptions) -> Any:
    """The runner to use: DirectRunner's batch engine directly for ``"DirectRunner"``.

    Beam's DirectRunner first tries to download and start the Prism runner from GitHub,
    which stalls where there is no internet (a cluster pod, an air-gapped machine). For a
    bounded pipeline it then runs the in-process FnApiRunner; this goes there at once,
    with the pipeline options the DirectRunner would hand it (``--direct_num_workers``,
    ``--direct_running_mode`` are honoured). Other names go to Beam unchanged.
    """
    if runner not in ("DirectRunner", "direct"):
        return runner
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def make_pipeline(runner: str, beam_args: list[str] | None = None) -> beam.Pipeline:
    """A Beam pipeline on ``runner`` (e.g. ``DirectRunner``, ``DataflowRunner``) with
    extra pipeline arguments such as ``["--project=p", "--region=r"]``."""
    options = PipelineOptions([f"--runner={runner}", *(str(arg) for arg in beam_args or [])])
    return beam.Pipeline(runner=_resolve_runner(runner, options), options=options)


def delete_matching(patterns: list[str]) -> int:
    """Deletes the files matching ``patterns`` (shards of an earlier run: a new run may
    write fewer, and readers glob). Returns how many were deleted."""
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        _log.warning("replacing %d shard(s) of an earlier run: %s", len(stale), patterns)
        FileSystems.delete(stale)
    return len(stale)


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
