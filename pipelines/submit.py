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
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_EXPERIMENT = "image-classification"
BUILD_DIR = "build"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a list",
    "STRUCT": "a mapping",
}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_PROJECT_RE = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+(-[a-z]+)+[0-9]+$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_KMS_KEY_RE = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
_NETWORK_RE = re.compile(r"^projects/[0-9]+/global/networks/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_CRON_TZ_RE = re.compile(r"^(CRON_TZ|TZ)=(\S+)$")
# Bounds of the numbers in each cron field (names such as MON or JAN are left to the server).
_CRON_FIELDS = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day of month": (1, 31),
    "month": (1, 12),
    "day of week": (0, 7),
}
FAILURE_POLICIES = ("slow", "fast")
KFP_MAX_CONCURRENCY = 10  # the KFP API server refuses more concurrent runs per recurring run


class SubmitError(Exception):
    """A problem found before anything was sent; the message is one line."""


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


# --- pure checks -------------------------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Reads pipeline parameters from a YAML or JSON file holding a mapping."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SubmitError(f"params file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise SubmitError(f"params file {path} is not valid {kind}: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SubmitError(
            f"params file {path} must hold a mapping of parameter names to values, "
            f"not a {type(data).__name__}"
        )
    return data


def load_pipeline_spec(pipeline_file: str | os.PathLike) -> dict[str, Any]:
    """Reads a compiled pipeline (the first YAML document: the pipeline spec)."""
    pipeline_file = os.fspath(pipeline_file)
    if not os.path.isfile(pipeline_file):
        raise SubmitError(f"pipeline file not found: {pipeline_file}")
    try:
        with open(pipeline_file, encoding="utf-8") as f:
            # A pipeline using platform config (kfp-kubernetes) is two documents.
            spec = next(iter(yaml.safe_load_all(f)), None)
    except yaml.YAMLError as e:
        raise SubmitError(f"pipeline file {pipeline_file} is not YAML: {_one_line(e)}") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise SubmitError(
            f"{pipeline_file} is not a compiled KFP v2 pipeline (no root/pipelineInfo)"
        )
    return spec


def pipeline_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters (``root.inputDefinitions.parameters``): name -> definition."""
    return dict((spec.get("root", {}).get("inputDefinitions") or {}).get("parameters") or {})


def _check_type(value: Any, parameter_type: str) -> tuple[bool, Any]:
    """Whether ``value`` fits ``parameter_type``, and the value to send."""
    if parameter_type == "STRING":
        return isinstance(value, str), value
    if parameter_type == "NUMBER_INTEGER":
        if isinstance(value, bool):
            return False, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int), value
    if parameter_type == "NUMBER_DOUBLE":
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if parameter_type == "BOOLEAN":
        return isinstance(value, bool), value
    if parameter_type == "LIST":
        return isinstance(value, list), value
    if parameter_type == "STRUCT":
        return isinstance(value, dict), value
    return True, value  # a type this check does not know: leave it to the server


def validate_params(
    params: Mapping[str, Any], parameters: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Checks parameter values against the pipeline's declared parameters.

    Args:
        params: Parameter values by name.
        parameters: The pipeline's parameter definitions (see ``pipeline_parameters``).

    Returns:
        The values to send (integral floats given for integer parameters become ints).

    Raises:
        SubmitError: For a non-mapping, an unknown name (the message lists the valid
            ones), a value of the wrong type, or a required parameter left out.
    """
    if not isinstance(params, Mapping):
        raise SubmitError(
            f"pipeline parameters must be a mapping of names to values, not a {type(params).__name__}"
        )
    valid = sorted(parameters)
    unknown = sorted(str(name) for name in params if name not in parameters)
    if unknown:
        raise SubmitError(
            f"unknown pipeline parameter(s): {', '.join(unknown)}; "
            f"the pipeline's parameters are: {', '.join(valid)}"
        )
    errors, values = [], {}
    for name, value in params.items():
        parameter_type = parameters[name].get("parameterType", "STRING")
        ok, values[name] = _check_type(value, parameter_type)
        if not ok:
            errors.append(
                f"{name} must be {_TYPE_NAMES.get(parameter_type, parameter_type)} "
                f"({parameter_type}), got {type(value).__name__} {value!r}"
            )
    missing = [
        name
        for name, definition in parameters.items()
        if name not in params
        and not definition.get("isOptional")
        and "defaultValue" not in definition
    ]
    if missing:
        errors.append(f"missing required parameter(s): {', '.join(sorted(missing))}")
    if errors:
        raise SubmitError("; ".join(errors))
    return values


def local_images(spec: Mapping[str, Any]) -> list[str]:
    """Executor images of the pipeline that no cluster can pull (``localhost/...``)."""
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    images = {(executor.get("container") or {}).get("image", "") for executor in executors.values()}
    return sorted(image for image in images if image.startswith("localhost/"))


def _check_images(spec: Mapping[str, Any], pipeline_file: str) -> None:
    images = local_images(spec)
    if images:
        more = f" and {len(images) - 1} more" if len(images) > 1 else ""
        raise SubmitError(
            f"{pipeline_file} uses local images no cluster can pull ({images[0]}{more}): "
            "set IMAGE_REGISTRY and IMAGE_TAG to the pushed stage images (Cloud Build tags "
            "them with the commit SHA) and compile again, or pass --allow-local-images"
        )


def check_host_url(host: str | None) -> str:
    """The KFP host (argument, else ``KFPHOST``) as an http(s) URL without a trailing slash."""
    host = (host or os.environ.get("KFPHOST") or "").strip()
    if not host:
        raise SubmitError(
            "no KFP host: pass --host or set KFPHOST "
            "(e.g. https://<id>.pipelines.googleusercontent.com or http://localhost:8080)"
        )
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SubmitError(
            f"KFP host must be an http:// or https:// URL (e.g. http://localhost:8080), got {host!r}"
        )
    return host.rstrip("/")


def check_kfp_host(host: str, timeout: float = 5.0) -> None:
    """Pre-flight: the host answers ``GET <host>/apis/v2beta1/healthz``.

    Any HTTP answer counts (an auth proxy may answer 302/401/403); no answer raises.
    Environment proxies are ignored, as kfp.Client ignores them.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{host}/apis/v2beta1/healthz", timeout=timeout):
            return
    except urllib.error.HTTPError as answer:
        answer.close()
        return
    except urllib.error.URLError as e:
        reason = e.reason
    except (OSError, http.client.HTTPException) as e:
        reason = e
    raise SubmitError(f"cannot reach KFP host {host}: {_one_line(reason) or type(reason).__name__}")


def check_gcp_credentials() -> Any:
    """Google Cloud application-default credentials, or a clear ``SubmitError``."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except DefaultCredentialsError as e:
        raise SubmitError(
            "no Google Cloud credentials found: run `gcloud auth application-default login`, "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file "
            f"({_one_line(e)})"
        ) from None
    return credentials


def bucket_name(bucket: str) -> str:
    """The bucket name from ``my-bucket`` or ``gs://my-bucket``."""
    name = bucket.strip().removeprefix("gs://").rstrip("/")
    if "/" in name:
        raise SubmitError(
            f"--bucket takes a bucket name, got {bucket!r}; pass a folder as --pipeline-root gs://..."
        )
    if not _BUCKET_RE.match(name) or ".." in name:
        raise SubmitError(
            f"invalid bucket name {bucket!r}: 3-222 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (e.g. my-bucket or gs://my-bucket)"
        )
    return name


def parse_labels(labels: str | Mapping[str, str] | None) -> dict[str, str]:
    """Vertex labels from ``key=value,key2=value2`` (or a mapping), checked."""
    if not labels:
        return {}
    if isinstance(labels, str):
        pairs = {}
        for item in filter(None, (part.strip() for part in labels.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise SubmitError(f"labels are key=value pairs separated by commas, got {item!r}")
            pairs[key.strip()] = value.strip()
        labels = pairs
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(str(key)) or not _LABEL_VALUE_RE.match(str(value)):
            raise SubmitError(
                f"invalid label {key}={value}: keys start with a lowercase letter; keys and "
                "values use lowercase letters, digits, '_' and '-' (at most 63 characters)"
            )
    return dict(labels)


def check_encryption_key(key: str, region: str) -> str:
    """A Cloud KMS key name for Vertex AI's CMEK, in the job's region.

    Vertex AI requires the key to be in the same region as the resource it protects, so
    a key in another location (``global`` included) is refused here, not by the API.
    """
    key = key.strip()
    match = _KMS_KEY_RE.match(key)
    if not match:
        raise SubmitError(
            "--encryption-key takes a Cloud KMS key name "
            f"projects/<project>/locations/{region}/keyRings/<ring>/cryptoKeys/<key>"
            f"{' (the key, not one of its versions)' if '/cryptoKeyVersions/' in key else ''}, "
            f"got {key!r}"
        )
    if match["location"] != region:
        raise SubmitError(
            f"--encryption-key is in location {match['location']!r} but the job runs in "
            f"{region!r}: Vertex AI needs a key in the same region as the job"
        )
    return key


def check_network(network: str) -> str:
    """A VPC network name for Vertex AI peering: ``projects/<number>/global/networks/<name>``."""
    network = network.strip()
    if not _NETWORK_RE.match(network):
        raise SubmitError(
            "--network takes projects/<project number>/global/networks/<name> (the number, "
            "not the project id: gcloud projects describe <id> --format='value(projectNumber)'), "
            f"got {network!r}"
        )
    return network


def check_failure_policy(policy: str) -> str:
    """``slow`` (run every task that can still run) or ``fast`` (stop scheduling tasks
    after the first failure)."""
    if policy not in FAILURE_POLICIES:
        raise SubmitError(f"--failure-policy takes slow or fast, got {policy!r}")
    return policy


def _check_cron_fields(cron: str, fields: list[str], names: list[str], symbols: str) -> None:
    for name, value in zip(names, fields, strict=True):
        if not re.fullmatch(rf"[0-9A-Za-z{re.escape(symbols)}]+", value):
            raise SubmitError(
                f"invalid schedule {cron!r}: the {name} field {value!r} may only hold digits, "
                f"names (MON, JAN) and {' '.join(symbols)}"
            )
        low, high = _CRON_FIELDS[name]
        for item in value.split(","):  # a step (*/15) or an nth weekday (5#3) is no value
            numbers = re.findall(r"[0-9]+", item.split("/")[0].split("#")[0])
            if any(not low <= int(number) <= high for number in numbers):
                raise SubmitError(
                    f"invalid schedule {cron!r}: the {name} field {value!r} is outside {low}-{high}"
                )


def _split_cron(cron: str) -> tuple[str | None, list[str]]:
    parts = cron.split()
    match = _CRON_TZ_RE.match(parts[0]) if parts else None
    return (match[0] if match else None), parts[1:] if match else parts


def vertex_cron(cron: str) -> str:
    """The cron of a Vertex AI schedule: five fields (minute hour day-of-month month
    day-of-week), optionally after ``TZ=<IANA time zone>`` (or ``CRON_TZ=``), checked."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    zone, fields = _split_cron(cron)
    if len(fields) != 5:
        raise SubmitError(
            f"invalid schedule {cron!r}: a Vertex AI schedule takes 5 cron fields (minute hour "
            "day-of-month month day-of-week, e.g. '0 3 * * *'), optionally after "
            f"TZ=<time zone>; got {len(fields)}"
        )
    _check_cron_fields(cron, fields, list(_CRON_FIELDS)[1:], "*/,-")
    if zone:
        name = zone.split("=", 1)[1]
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise SubmitError(
                f"invalid schedule {cron!r}: {name!r} is not an IANA time zone "
                "(e.g. TZ=America/New_York, TZ=Europe/Berlin, TZ=UTC)"
            ) from None
    return " ".join([zone, *fields] if zone else fields)


def kfp_cron(cron: str) -> str:
    """The cron of a KFP recurring run: six fields, seconds first. The usual five-field
    form (minute hour day-of-month month day-of-week) gets second 0; six are taken as given.
    """
    zone, fields = _split_cron(cron)
    if zone:
        raise SubmitError(
            f"invalid schedule {cron!r}: KFP evaluates a recurring run's cron in the time zone "
            "of its scheduledworkflow controller (its CRON_SCHEDULE_TIMEZONE, UTC unless set); "
            "drop the TZ= prefix and give the time in that zone"
        )
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise SubmitError(
            f"invalid schedule {cron!r}: give 5 cron fields (minute hour day-of-month month "
            "day-of-week, e.g. '0 3 * * *') or KFP's 6 with seconds first ('0 0 3 * * *'); "
            f"got {len(fields)}"
        )
    _check_cron_fields(cron, fields, list(_CRON_FIELDS), "*/,-?#")
    return " ".join(fields)


def parse_time(value: str, flag: str) -> datetime.datetime:
    """An RFC 3339 time with its offset (``2030-01-31T03:00:00Z``), for a schedule's bounds."""
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise SubmitError(
            f"{flag} takes an RFC 3339 time such as 2030-01-31T03:00:00Z, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise SubmitError(f"{flag} {value!r} has no time zone: end it with Z or an offset (+01:00)")
    return parsed


def _schedule_times(
    start_time: str | None, end_time: str | None
) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    start = parse_time(start_time, "--start-time") if start_time else None
    end = parse_time(end_time, "--end-time") if end_time else None
    if end is not None and (
        end <= datetime.datetime.now(datetime.UTC) or (start is not None and end <= start)
    ):
        raise SubmitError(
            f"--end-time {end_time} is not after now and --start-time: nothing would run"
        )
    return start, end


def _check_schedule_options(
    schedule: str | None, schedule_only: Mapping[str, Any], one_run_only: Mapping[str, Any]
) -> None:
    """Options that mean nothing without --schedule, or that a schedule would ignore."""
    if not schedule:
        given = [flag for flag, value in schedule_only.items() if value is not None]
        if given:
            raise SubmitError(f"{', '.join(given)} only apply with --schedule")
        return
    given = [flag for flag, value in one_run_only.items() if value]
    if given:
        raise SubmitError(
            f"{', '.join(given)} names one run; a schedule's runs are named after --schedule-name"
        )


def _check_max_concurrent_runs(value: int | None, most: int | None = None) -> int:
    value = 1 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SubmitError(f"--max-concurrent-runs takes a whole number from 1, got {value!r}")
    if most is not None and value > most:
        raise SubmitError(f"--max-concurrent-runs is at most {most} on KFP, got {value}")
    return value


def _settings_into_params(
    values: Mapping[str, Any],
    parameters: Mapping[str, Any],
    settings: Mapping[str, tuple[str, str | None]],
) -> dict[str, Any]:
    """Job settings also given to the pipeline's parameters of the same name.

    The pipeline passes them on to the jobs it starts (Vertex custom jobs, batch
    predictions, endpoints), which would otherwise run without them.

    Args:
        values: The user's parameter values.
        parameters: The compiled pipeline's parameters.
        settings: Parameter name -> (flag, the flag's value or None).

    Raises:
        SubmitError: A parameter set to a value other than its flag's.
    """
    values = dict(values)
    for name, (flag, value) in settings.items():
        if not value or name not in parameters:
            continue
        if name in values and values[name] != value:
            raise SubmitError(
                f"{flag} is {value!r} but the pipeline parameter {name} is {values[name]!r}: "
                f"leave {name} out of the parameters (the flag sets it) or give both the same value"
            )
        values[name] = value
    return values


def vertex_run_url(region: str, job_id: str, project: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}"
        f"/pipelines/runs/{job_id}?project={project}"
    )


def vertex_schedule_url(region: str, schedule_id: str, project: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}"
        f"/pipelines/schedules/{schedule_id}?project={project}"
    )


# --- submission --------------------------------------------------------------------------


def _resolve_params(params: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, str | os.PathLike):
        return load_params(params)
    if not isinstance(params, Mapping):
        raise SubmitError(
            f"pipeline parameters must be a mapping or a file path, not a {type(params).__name__}"
        )
    return dict(params)


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
    _check_schedule_options(
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
        max_concurrent_runs = _check_max_concurrent_runs(max_concurrent_runs, KFP_MAX_CONCURRENCY)
        start, end = _schedule_times(start_time, end_time)
    values = _resolve_params(params)
    pipeline_file = _pipeline_file("kfp", pipeline_file, pipeline)
    spec = load_pipeline_spec(pipeline_file)
    arguments = validate_params(values, pipeline_parameters(spec))
    if not allow_local_images:
        _check_images(spec, pipeline_file)
    name = spec["pipelineInfo"]["name"]
    if preflight is not None:
        preflight(host, timeout)

    if client_factory is None:
        from kfp import Client as client_factory
    client = client_factory(host=host, **({"namespace": namespace} if namespace else {}))
    if schedule:
        schedule_name = schedule_name or f"{name}-schedule"
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=schedule_name,
            cron_expression=cron,
            max_concurrency=max_concurrent_runs,
            # Back from a pause or an outage, start the latest missed run, not one per miss.
            no_catchup=True,
            start_time=start,
            end_time=end,
            params=arguments,
            pipeline_package_path=pipeline_file,
            enable_caching=enable_caching,
            pipeline_root=pipeline_root,
        )
        url = f"{host}/#/recurringrun/details/{recurring.recurring_run_id}"
        print(f"Created recurring run {schedule_name} ({cron}) on {host}: {url}")
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
    project, region = (project or "").strip(), (region or "").strip()
    missing = [
        flag
        for flag, value in (
            ("--project", project),
            ("--region", region),
            ("--bucket (or --pipeline-root)", bucket or pipeline_root),
        )
        if not value
    ]
    if missing:
        raise SubmitError(f"missing {', '.join(missing)} for a Vertex AI submission")
    if not _PROJECT_RE.match(project):
        raise SubmitError(f"invalid project id {project!r}")
    if not _REGION_RE.match(region):
        raise SubmitError(f"invalid region {region!r} (e.g. us-central1, europe-west4)")
    if pipeline_root:
        if not pipeline_root.startswith("gs://"):
            raise SubmitError(f"--pipeline-root must be a gs:// URI, got {pipeline_root!r}")
        bucket_name(pipeline_root.removeprefix("gs://").split("/")[0])
    else:
        pipeline_root = f"gs://{bucket_name(bucket)}/pipeline_root"
    if service_account and not _EMAIL_RE.match(service_account):
        raise SubmitError(
            f"--service-account takes a service account email, got {service_account!r}"
        )
    encryption_key = check_encryption_key(encryption_key, region) if encryption_key else None
    network = check_network(network) if network else None
    failure_policy = check_failure_policy(failure_policy) if failure_policy else None
    label_values = parse_labels(labels)
    _check_schedule_options(
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
        max_concurrent_runs = _check_max_concurrent_runs(max_concurrent_runs)
        if max_runs is not None and (
            isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1
        ):
            raise SubmitError(f"--max-runs takes a whole number from 1, got {max_runs!r}")
        start, end = _schedule_times(start_time, end_time)
    values = _resolve_params(params)
    pipeline_file = _pipeline_file("vertex", pipeline_file, pipeline)
    spec = load_pipeline_spec(pipeline_file)
    parameters = pipeline_parameters(spec)
    values = _settings_into_params(
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
        _check_images(spec, pipeline_file)
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
        schedule_name = schedule_name or f"{name}-schedule"
        created = job.create_schedule(
            cron=cron,
            display_name=schedule_name,
            start_time=start,
            end_time=end,
            max_run_count=max_runs,
            max_concurrent_run_count=max_concurrent_runs,
            service_account=service_account,
            network=network,
        )
        schedule_id = created.resource_name.rsplit("/", 1)[-1]
        url = vertex_schedule_url(region, schedule_id, project)
        print(f"Created Vertex AI pipeline schedule {schedule_name} ({cron}): {url}")
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
