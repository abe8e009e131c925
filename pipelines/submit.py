"""Submits the compiled pipeline to a Kubeflow Pipelines host or to Vertex AI Pipelines.

Usage::

    python -m pipelines.submit kfp --host https://<kfp-host> [--params params.yaml]
    python -m pipelines.submit vertex --project <project> --region us-central1 \\
        --bucket <bucket> [--params params.yaml] [--service-account <sa-email>] \\
        [--encryption-key projects/.../cryptoKeys/<key>] \\
        [--network projects/<number>/global/networks/<name>]

With ``--schedule "0 3 * * *"`` either target creates a schedule instead of one run: a
Vertex AI PipelineJobSchedule, or a KFP recurring run (KFP's cron has a seconds field
first: a five-field expression gets second 0).

Without ``--pipeline-file`` the pipeline (``--pipeline classification``, the default, or
``detection``) is compiled for the target first, into ``build/pipeline-<target>.yaml``
(``build/detection-pipeline-<target>.yaml``), against the stage images that
``IMAGE_REGISTRY`` and ``IMAGE_TAG`` name (see components.images).

Everything that can be checked is checked before anything is sent: the host URL and that
it answers, Google Cloud credentials, project, region and bucket, and the parameters (a
YAML or JSON mapping) against the names and types the compiled pipeline declares. A
failed check raises ``SubmitError`` with a one-line message; the command line prints it
and exits with status 2. ``submit_kfp`` and ``submit_vertex`` are plain functions for
notebooks; they return a ``Submitted`` whose ``handle`` is the KFP run result or the
Vertex ``PipelineJob`` (to wait on), or for a schedule the KFP recurring run or the
Vertex ``PipelineJobSchedule``.

The checks live in pipelines.submit_checks, the cron checks and the schedule calls in
pipelines.schedules; this module puts them together and holds the command line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.schedules import (
    KFP_MAX_CONCURRENCY,
    check_max_concurrent_runs,
    check_max_runs,
    check_schedule_options,
    create_kfp_recurring_run,
    create_vertex_schedule,
    kfp_cron,
    schedule_times,
    vertex_cron,
)
from pipelines.submit_checks import (
    FAILURE_POLICIES,
    SubmitError,
    check_encryption_key,
    check_failure_policy,
    check_gcp_credentials,
    check_host_url,
    check_images,
    check_kfp_host,
    check_network,
    check_service_account,
    check_vertex_project,
    load_pipeline_spec,
    parse_labels,
    pipeline_parameters,
    resolve_params,
    settings_into_params,
    validate_params,
)

DEFAULT_EXPERIMENT = "image-classification"
BUILD_DIR = "build"


@dataclass
class Submitted:
    """What a submission returns: the run or job id (None for a schedule), the UI URL of the
    run or schedule, the client's handle, and the schedule's id when one was created."""

    run_id: str | None
    url: str
    pipeline_file: str
    arguments: dict[str, Any] = field(default_factory=dict)
    handle: Any = None
    schedule_id: str | None = None


def vertex_run_url(region: str, job_id: str, project: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}"
        f"/pipelines/runs/{job_id}?project={project}"
    )


# --- submission --------------------------------------------------------------------------


def _pipeline_file(
    target: str, pipeline_file: str | os.PathLike | None, pipeline: str = "classification"
) -> str:
    if pipeline_file is not None:
        return os.fspath(pipeline_file)
    from pipelines.compile import compile_pipeline, default_output

    output = os.path.join(BUILD_DIR, os.path.basename(default_output(target, pipeline)))
    return compile_pipeline(target, output, pipeline=pipeline)


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def submit_kfp(
    host: str | None = None,
    *,
    pipeline_file: str | os.PathLike | None = None,
    pipeline: str = "classification",
    params: Mapping[str, Any] | str | os.PathLike | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    pipeline_root: str | None = None,
    schedule: str | None = None,
    schedule_name: str | None = None,
    max_concurrent_runs: int | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    allow_local_images: bool = False,
    timeout: float = 5.0,
    client_factory: Callable[..., Any] | None = None,
    preflight: Callable[[str, float], None] | None = check_kfp_host,
) -> Submitted:
    """Submits the pipeline as a run on a Kubeflow Pipelines host, or creates a recurring run.

    Args:
        host: KFP API endpoint (default: the ``KFPHOST`` environment variable).
        pipeline_file: Compiled YAML (default: compile the kfp target into build/).
        pipeline: What to compile without ``pipeline_file``: classification, detection.
        params: Parameter values, or a YAML/JSON file of them.
        experiment: Experiment the run belongs to (created if missing).
        run_name: Run name (default: the pipeline name and a timestamp).
        namespace: Kubernetes namespace of a multi-user deployment.
        enable_caching: True/False override every task's cache setting; None keeps the
            compiled ones (deploy never caches).
        pipeline_root: Where the run's artifacts go (default: the host's).
        schedule: A cron expression: create a recurring run instead of one run. Five
            fields (minute hour day-of-month month day-of-week) get second 0 for KFP's
            six; six are taken as given. Of the runs missed while it was disabled (or
            the scheduler down), only the latest starts.
        schedule_name: The recurring run's name (default: ``<pipeline name>-schedule``).
        max_concurrent_runs: Runs of the schedule at once, 1 (default) to 10.
        start_time: RFC 3339 time before which the schedule starts no run.
        end_time: RFC 3339 time after which it starts no run.
        allow_local_images: Submit even if the pipeline names ``localhost/`` images.
        timeout: Seconds the reachability pre-flight waits.
        client_factory: Makes the client (default ``kfp.Client``).
        preflight: Reachability check of the host (None skips it).

    Returns:
        The run's id and UI URL (``<host>/#/runs/details/<run id>``); for a schedule, the
        recurring run's id and URL (``<host>/#/recurringrun/details/<id>``).
    """
    host = check_host_url(host)
    check_schedule_options(
        schedule,
        {
            "--schedule-name": schedule_name,
            "--max-concurrent-runs": max_concurrent_runs,
            "--start-time": start_time,
            "--end-time": end_time,
        },
        {"--run-name": run_name},
    )
    if schedule:
        cron = kfp_cron(schedule)
        max_concurrent_runs = check_max_concurrent_runs(max_concurrent_runs, KFP_MAX_CONCURRENCY)
        start, end = schedule_times(start_time, end_time)
    values = resolve_params(params)
    pipeline_file = _pipeline_file("kfp", pipeline_file, pipeline)
    spec = load_pipeline_spec(pipeline_file)
    arguments = validate_params(values, pipeline_parameters(spec))
    if not allow_local_images:
        check_images(spec, pipeline_file)
    name = spec["pipelineInfo"]["name"]
    if preflight is not None:
        preflight(host, timeout)

    if client_factory is None:
        from kfp import Client as client_factory
    client = client_factory(host=host, **({"namespace": namespace} if namespace else {}))
    if schedule:
        recurring, url = create_kfp_recurring_run(
            client,
            host,
            schedule_name=schedule_name or f"{name}-schedule",
            experiment=experiment,
            namespace=namespace,
            cron=cron,
            max_concurrent_runs=max_concurrent_runs,
            start=start,
            end=end,
            arguments=arguments,
            pipeline_file=pipeline_file,
            enable_caching=enable_caching,
            pipeline_root=pipeline_root,
        )
        return Submitted(None, url, pipeline_file, arguments, recurring, recurring.recurring_run_id)
    run_name = run_name or f"{name}-{_timestamp()}"
    result = client.create_run_from_pipeline_package(
        pipeline_file=pipeline_file,
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        enable_caching=enable_caching,
        pipeline_root=pipeline_root,
    )
    url = f"{host}/#/runs/details/{result.run_id}"
    print(f"Submitted run {run_name} to {host}: {url}")
    return Submitted(result.run_id, url, pipeline_file, arguments, result)


def submit_vertex(
    project: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    *,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    encryption_key: str | None = None,
    network: str | None = None,
    failure_policy: str | None = None,
    params: Mapping[str, Any] | str | os.PathLike | None = None,
    pipeline_file: str | os.PathLike | None = None,
    pipeline: str = "classification",
    enable_caching: bool | None = None,
    display_name: str | None = None,
    labels: str | Mapping[str, str] | None = None,
    schedule: str | None = None,
    schedule_name: str | None = None,
    max_concurrent_runs: int | None = None,
    max_runs: int | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    allow_local_images: bool = False,
    job_factory: Callable[..., Any] | None = None,
    credentials_check: Callable[[], Any] | None = check_gcp_credentials,
) -> Submitted:
    """Submits the pipeline as a Vertex AI PipelineJob, or creates a PipelineJobSchedule.

    ``service_account``, ``encryption_key`` and ``network`` also set the pipeline's
    parameters ``service_account``, ``encryption_spec_key_name`` and ``network`` where the
    compiled pipeline declares them and ``params`` leaves them out, so the jobs the
    pipeline starts run with them too; ``params`` giving one a different value is an error.

    Args:
        project: Google Cloud project id.
        region: Vertex AI region, e.g. us-central1.
        bucket: Bucket for the pipeline root ``gs://<bucket>/pipeline_root``.
        pipeline_root: A gs:// pipeline root instead of the bucket's.
        service_account: Service account the job runs as (default: Vertex's).
        encryption_key: Cloud KMS key (CMEK) of the job and what it creates:
            ``projects/<p>/locations/<region>/keyRings/<ring>/cryptoKeys/<key>``, in the
            job's region.
        network: VPC network the job is peered with,
            ``projects/<project number>/global/networks/<name>`` (private services access
            configured).
        failure_policy: ``slow`` (Vertex's default: run every task that still can) or
            ``fast`` (schedule no new task after a failure).
        params: Parameter values, or a YAML/JSON file of them.
        pipeline_file: Compiled YAML (default: compile the vertex target into build/).
        pipeline: What to compile without ``pipeline_file``: classification, detection.
        enable_caching: True/False override every task's cache setting; None keeps the
            compiled ones.
        display_name: The job's display name (default: the pipeline name).
        labels: Job labels, ``key=value,...`` or a mapping.
        schedule: A cron expression (5 fields, optionally ``TZ=<zone> `` first): create a
            PipelineJobSchedule instead of one job.
        schedule_name: The schedule's display name (default: ``<pipeline name>-schedule``).
        max_concurrent_runs: Runs of the schedule at once (default 1).
        max_runs: The schedule completes after this many runs (default: no limit).
        start_time: RFC 3339 time before which the schedule starts no run.
        end_time: RFC 3339 time after which it starts no run.
        allow_local_images: Submit even if the pipeline names ``localhost/`` images.
        job_factory: Makes the job (default ``google.cloud.aiplatform.PipelineJob``).
        credentials_check: Returns credentials or raises SubmitError (None skips it and
            leaves credentials to the Vertex SDK).

    Returns:
        The job's id and its Google Cloud console URL; for a schedule, the schedule's id
        and console URL.
    """
    project, region, pipeline_root = check_vertex_project(project, region, bucket, pipeline_root)
    if service_account:
        check_service_account(service_account)
    encryption_key = check_encryption_key(encryption_key, region) if encryption_key else None
    network = check_network(network) if network else None
    failure_policy = check_failure_policy(failure_policy) if failure_policy else None
    label_values = parse_labels(labels)
    check_schedule_options(
        schedule,
        {
            "--schedule-name": schedule_name,
            "--max-concurrent-runs": max_concurrent_runs,
            "--max-runs": max_runs,
            "--start-time": start_time,
            "--end-time": end_time,
        },
        {"--display-name": display_name},
    )
    if schedule:
        cron = vertex_cron(schedule)
        max_concurrent_runs = check_max_concurrent_runs(max_concurrent_runs)
        max_runs = check_max_runs(max_runs)
        start, end = schedule_times(start_time, end_time)
    values = resolve_params(params)
    pipeline_file = _pipeline_file("vertex", pipeline_file, pipeline)
    spec = load_pipeline_spec(pipeline_file)
    parameters = pipeline_parameters(spec)
    values = settings_into_params(
        values,
        parameters,
        {
            "service_account": ("--service-account", service_account),
            "encryption_spec_key_name": ("--encryption-key", encryption_key),
            "network": ("--network", network),
        },
    )
    parameter_values = validate_params(values, parameters)
    if not allow_local_images:
        check_images(spec, pipeline_file)
    credentials = credentials_check() if credentials_check is not None else None

    if job_factory is None:
        from google.cloud.aiplatform import PipelineJob as job_factory
    name = spec["pipelineInfo"]["name"]
    job = job_factory(
        display_name=display_name or name,
        template_path=pipeline_file,
        pipeline_root=pipeline_root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        encryption_spec_key_name=encryption_key,
        labels=label_values or None,
        credentials=credentials,
        project=project,
        location=region,
        failure_policy=failure_policy,
    )
    if schedule:
        created, schedule_id, url = create_vertex_schedule(
            job,
            schedule_name=schedule_name or f"{name}-schedule",
            cron=cron,
            start=start,
            end=end,
            max_runs=max_runs,
            max_concurrent_runs=max_concurrent_runs,
            service_account=service_account,
            network=network,
            region=region,
            project=project,
        )
        return Submitted(None, url, pipeline_file, parameter_values, created, schedule_id)
    job.submit(service_account=service_account, network=network)
    url = vertex_run_url(region, job.job_id, project)
    print(f"Submitted Vertex AI pipeline job {job.job_id}: {url}")
    return Submitted(job.job_id, url, pipeline_file, parameter_values, job)


# --- command line ------------------------------------------------------------------------


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"takes on or off, got {value!r}")
    return value == "on"


def _add_common(p: argparse.ArgumentParser, target: str) -> None:
    p.add_argument("--pipeline-file", help=f"compiled YAML (default: compile {target}'s)")
    p.add_argument("--pipeline", choices=("classification", "detection"), default="classification")
    p.add_argument("--params", metavar="FILE", help="YAML or JSON mapping of pipeline parameters")
    caching = p.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-caching",
        dest="enable_caching",
        action="store_const",
        const=True,
        help="cache every task (overrides the compiled settings, deploy's included)",
    )
    caching.add_argument(
        "--no-cache",
        dest="enable_caching",
        action="store_const",
        const=False,
        help="run every task afresh",
    )
    caching.add_argument(
        "--cache",
        dest="enable_caching",
        type=_on_off,
        metavar="on|off",
        help="--cache on is --enable-caching, --cache off is --no-cache (make's CACHE=)",
    )
    p.add_argument(
        "--allow-local-images",
        action="store_true",
        help="submit even if the pipeline names localhost/ images (e.g. a kind cluster)",
    )
    s = p.add_argument_group("schedule (instead of one run)")
    s.add_argument(
        "--schedule",
        metavar="CRON",
        help="cron, e.g. '0 3 * * *' (minute hour day month weekday)"
        + (
            "; KFP's six fields with seconds first are taken as given"
            if target == "kfp"
            else "; 'TZ=America/New_York 0 3 * * *' for a time zone"
        ),
    )
    s.add_argument("--schedule-name", help="default: <pipeline name>-schedule")
    s.add_argument(
        "--max-concurrent-runs",
        type=int,
        help="runs of the schedule at once (default 1"
        + (", at most 10)" if target == "kfp" else ")"),
    )
    s.add_argument("--start-time", help="RFC 3339, e.g. 2030-01-31T03:00:00Z (default: now)")
    s.add_argument("--end-time", help="RFC 3339 (default: none)")
    if target == "vertex":
        s.add_argument("--max-runs", type=int, help="complete after this many runs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.submit", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kfp", help="submit a run to a Kubeflow Pipelines host")
    k.add_argument("--host", help="KFP API endpoint (default: $KFPHOST)")
    _add_common(k, "kfp")
    k.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    k.add_argument("--run-name", help="default: the pipeline name and a timestamp")
    k.add_argument("--namespace", help="namespace of a multi-user deployment")
    k.add_argument("--pipeline-root", help="where the run writes artifacts (default: the host's)")
    k.add_argument("--timeout", type=float, default=5.0, help="pre-flight timeout, seconds")

    v = sub.add_parser("vertex", help="submit a Vertex AI PipelineJob")
    v.add_argument("--project", help="Google Cloud project id")
    v.add_argument("--region", help="Vertex AI region, e.g. us-central1")
    v.add_argument("--bucket", help="bucket of the pipeline root gs://<bucket>/pipeline_root")
    v.add_argument("--pipeline-root", help="gs:// pipeline root (instead of --bucket's)")
    v.add_argument("--service-account", help="service account email the job runs as")
    v.add_argument(
        "--encryption-key",
        metavar="KMS_KEY",
        help="CMEK: projects/P/locations/<region>/keyRings/R/cryptoKeys/K",
    )
    v.add_argument(
        "--network", help="VPC to peer with: projects/<project number>/global/networks/<name>"
    )
    v.add_argument(
        "--failure-policy",
        choices=FAILURE_POLICIES,
        help="slow (Vertex's default): run what still can after a failure; fast: stop",
    )
    _add_common(v, "vertex")
    v.add_argument("--display-name", help="default: the pipeline name")
    v.add_argument("--labels", help="job labels: key=value,key2=value2")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    schedule = {
        "schedule": args.schedule,
        "schedule_name": args.schedule_name,
        "max_concurrent_runs": args.max_concurrent_runs,
        "start_time": args.start_time,
        "end_time": args.end_time,
    }
    try:
        if args.command == "kfp":
            submit_kfp(
                args.host,
                pipeline_file=args.pipeline_file,
                pipeline=args.pipeline,
                params=args.params,
                experiment=args.experiment,
                run_name=args.run_name,
                namespace=args.namespace,
                enable_caching=args.enable_caching,
                pipeline_root=args.pipeline_root,
                allow_local_images=args.allow_local_images,
                timeout=args.timeout,
                **schedule,
            )
        else:
            submit_vertex(
                args.project,
                args.region,
                args.bucket,
                pipeline_root=args.pipeline_root,
                service_account=args.service_account,
                encryption_key=args.encryption_key,
                network=args.network,
                failure_policy=args.failure_policy,
                params=args.params,
                pipeline_file=args.pipeline_file,
                pipeline=args.pipeline,
                enable_caching=args.enable_caching,
                display_name=args.display_name,
                labels=args.labels,
                max_runs=args.max_runs,
                allow_local_images=args.allow_local_images,
                **schedule,
            )
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
