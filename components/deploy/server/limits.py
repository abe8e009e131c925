"""The model server's limits: one frozen object, its command-line options and defaults.

``ServerLimits`` travels from the command line (``add_arguments``, then
``ServerLimits.from_args``) to the model, the REST server and its middleware, and back to
a command line (``ServerLimits.to_options``, for ``deploy.local.server_command``). Nothing
here imports the server's heavy dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses

MAX_INSTANCES = 64
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INFLIGHT = 32
BATCH_MAX_SIZE = 32
BATCH_TIMEOUT_MS = 0.0
SHUTDOWN_DELAY_S = 0.0
# Seconds the server gives open requests to finish after SIGTERM.
GRACE_PERIOD_S = 10
# Seconds between two looks at the model repository for new and removed versions (TF
# Serving's --file_system_poll_wait_seconds, whose default is 1). Versions arrive at the
# pace of pipeline runs and take seconds to load, so 30 s delays one by little, while on
# a gs:// repository each look is a listing plus a stat per version: 2,880 a day instead
# of 86,400 per server.
FILE_SYSTEM_POLL_WAIT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What the server takes at most, and how long it waits.

    Each field is the command-line option of the same name (``max_instances`` is
    ``--max-instances``); ``add_arguments`` describes them.
    """

    max_instances: int = MAX_INSTANCES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    max_inflight: int = MAX_INFLIGHT
    batch_max_size: int = BATCH_MAX_SIZE
    batch_timeout_ms: float = BATCH_TIMEOUT_MS
    shutdown_delay_s: float = SHUTDOWN_DELAY_S
    grace_period_s: int = GRACE_PERIOD_S
    file_system_poll_wait_seconds: float = FILE_SYSTEM_POLL_WAIT_SECONDS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerLimits:
        """The limits parsed by a parser that ``add_arguments`` set up."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def to_options(self) -> list[str]:
        """The server's command-line options for the limits that differ from the defaults
        (the others are left out, so that the server's own defaults apply)."""
        options = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                options += ["--" + field.name.replace("_", "-"), str(value)]
        return options


# The defaults, as one object: the default argument of what takes limits.
DEFAULT_LIMITS = ServerLimits()


class InflightBound:
    """Predict requests in flight, REST and gRPC together, and their bound (0: none).

    Both servers run in one event loop, so the count needs no lock.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        """Counts a request in; False (and not counted) when the bound is reached."""
        if self.limit and self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1

    def busy_message(self) -> str:
        return (
            f"the server is busy: {self.count} requests in flight, the limit is "
            f"{self.limit}; retry later"
        )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one option per ``ServerLimits`` field to ``parser``, with its default."""
    parser.add_argument(
        "--max-instances",
        type=_count,
        default=MAX_INSTANCES,
        help="images per request, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=_count,
        default=MAX_IMAGE_BYTES,
        help="bytes per encoded image, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_count,
        default=MAX_BODY_BYTES,
        help="request body size limit, 413 beyond it; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--max-inflight",
        type=_count,
        default=MAX_INFLIGHT,
        help="predict requests in flight at once, 503 beyond; 0: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-max-size",
        type=_count,
        default=BATCH_MAX_SIZE,
        help="images per model call when batching concurrent requests; 0: no batching "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=_seconds,
        default=BATCH_TIMEOUT_MS,
        help="how long a batch's first request waits for more (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-delay-s",
        type=_seconds,
        default=SHUTDOWN_DELAY_S,
        help="after SIGTERM, seconds of serving with readiness off before the server stops "
        "accepting (default: %(default)s)",
    )
    parser.add_argument(
        "--grace-period-s",
        type=_count,
        default=GRACE_PERIOD_S,
        help="seconds the requests in flight get to finish once the server stops accepting "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        type=_seconds,
        default=FILE_SYSTEM_POLL_WAIT_SECONDS,
        help="seconds between looks at the model repository for versions published or "
        "removed since (when serving every version: not with --model-version or --model-dir); "
        "0: versions are read at start-up only (default: %(default)s)",
    )
