"""Schedules: cron checks and conversion, and creating a schedule on either host.

A Vertex AI PipelineJobSchedule takes five cron fields, optionally after
``TZ=<IANA time zone>``; a KFP recurring run takes six with seconds first (five get
second 0) and no time zone (its controller's). The checks raise ``SubmitError`` before
anything is sent; ``create_kfp_recurring_run`` and ``create_vertex_schedule`` make the
client calls pipelines.submit's ``submit_kfp`` and ``submit_vertex`` end with.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from pipelines.submit_checks import SubmitError

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
KFP_MAX_CONCURRENCY = 10  # the KFP API server refuses more concurrent runs per recurring run


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


def schedule_times(
    start_time: str | None, end_time: str | None
) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """A schedule's start and end (RFC 3339, either optional); the end after now and the start."""
    start = parse_time(start_time, "--start-time") if start_time else None
    end = parse_time(end_time, "--end-time") if end_time else None
    if end is not None and (
        end <= datetime.datetime.now(datetime.UTC) or (start is not None and end <= start)
    ):
        raise SubmitError(
            f"--end-time {end_time} is not after now and --start-time: nothing would run"
        )
    return start, end


def check_schedule_options(
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


def check_max_concurrent_runs(value: int | None, most: int | None = None) -> int:
    """Runs of a schedule at once: 1 if None, else a whole number from 1 (to ``most``)."""
    value = 1 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SubmitError(f"--max-concurrent-runs takes a whole number from 1, got {value!r}")
    if most is not None and value > most:
        raise SubmitError(f"--max-concurrent-runs is at most {most} on KFP, got {value}")
    return value


def check_max_runs(value: int | None) -> int | None:
    """The number of runs after which a Vertex AI schedule completes (None: no limit)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SubmitError(f"--max-runs takes a whole number from 1, got {value!r}")
    return value


def vertex_schedule_url(region: str, schedule_id: str, project: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}"
        f"/pipelines/schedules/{schedule_id}?project={project}"
    )


def create_kfp_recurring_run(
    client: Any,
    host: str,
    *,
    schedule_name: str,
    experiment: str,
    namespace: str | None,
    cron: str,
    max_concurrent_runs: int,
    start: datetime.datetime | None,
    end: datetime.datetime | None,
    arguments: Mapping[str, Any],
    pipeline_file: str,
    enable_caching: bool | None,
    pipeline_root: str | None,
) -> tuple[Any, str]:
    """Creates a KFP recurring run of the pipeline in the experiment (created if missing).

    Returns:
        The recurring run and its UI URL (``<host>/#/recurringrun/details/<id>``).
    """
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
    return recurring, url


def create_vertex_schedule(
    job: Any,
    *,
    schedule_name: str,
    cron: str,
    start: datetime.datetime | None,
    end: datetime.datetime | None,
    max_runs: int | None,
    max_concurrent_runs: int,
    service_account: str | None,
    network: str | None,
    region: str,
    project: str,
) -> tuple[Any, str, str]:
    """Creates a Vertex AI PipelineJobSchedule of the (unsubmitted) PipelineJob ``job``.

    Returns:
        The schedule, its id and its Google Cloud console URL.
    """
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
    return created, schedule_id, url
