"""The model server's command line: ``python -m components.deploy.server --help``.

It parses its arguments first and imports the server (TensorFlow, KServe) only then, so
that ``--help`` and a bad option answer at once and load none of it.
"""

from __future__ import annotations

import argparse
import sys

from components.deploy import DEFAULT_HTTP_PORT, LOOPBACK
from components.deploy.server.limits import ServerLimits, add_arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The server's options: the model, where it listens, and its limits."""
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.server",
        description="Serve the latest version of an exported image classifier over "
        "TensorFlow Serving's REST predict API (KServe's model server).",
    )
    parser.add_argument("--model-repository", required=True, help="model repository root")
    parser.add_argument("--model-name", required=True, help="model name (directory under it)")
    parser.add_argument(
        "--model-version", type=int, default=None, help="version to serve (default: the latest)"
    )
    parser.add_argument(
        "--http-port", type=int, default=DEFAULT_HTTP_PORT, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="bind address (default: %(default)s; 0.0.0.0 exposes it to the network)",
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serves the model the command line names; exits with an error message when it can't."""
    args = parse_args(argv)
    # Only now: TensorFlow and KServe take seconds to import.
    from components.deploy.server.http import ModelLoadError, serve

    try:
        serve(
            args.model_repository,
            args.model_name,
            http_port=args.http_port,
            host=args.host,
            version=args.model_version,
            limits=ServerLimits.from_args(args),
        )
    except (FileNotFoundError, ValueError, ModelLoadError) as e:  # no such model, bad option
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
