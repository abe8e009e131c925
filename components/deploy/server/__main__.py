"""The model server's command line: ``python -m components.deploy.server --help``.

It parses its arguments first and imports the server (TensorFlow, KServe) only then, so
that ``--help`` and a bad option answer at once and load none of it.

Vertex AI runs the deploy image as a custom container with its ``AIP_*`` variables set:
``AIP_HTTP_PORT`` is then the default ``--http-port``, ``AIP_STORAGE_URI`` (where Vertex
copied the model's SavedModel) the default ``--model-dir``, and ``AIP_PREDICT_ROUTE`` and
``AIP_HEALTH_ROUTE`` are answered besides the usual routes.
"""

from __future__ import annotations

import argparse
import os
import sys

from components.deploy import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_MODEL_NAME, LOOPBACK
from components.deploy.server.limits import ServerLimits, add_arguments


def parse_args(
    argv: list[str] | None = None, environ: dict[str, str] | None = None
) -> argparse.Namespace:
    """The server's options: the model, where it listens, and its limits (``environ``:
    the Vertex AI variables, ``os.environ`` by default)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.server",
        description="Serve an exported image model (a classifier, a detector) over "
        "TensorFlow Serving's REST predict API, KServe's v1 and v2 (REST and gRPC), TF "
        "Serving's gRPC PredictionService, and SageMaker's and Vertex AI's container "
        "contracts (KServe's model server).",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-repository", help="model repository root")
    model.add_argument(
        "--model-dir",
        default=environ.get("AIP_STORAGE_URI") or None,
        help="a SavedModel directory to serve instead, local or gs:// (default: "
        "$AIP_STORAGE_URI, set by Vertex AI)",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="model name: its directory in the repository, and the name in request paths "
        f"(required with --model-repository; default with --model-dir: {DEFAULT_MODEL_NAME})",
    )
    parser.add_argument(
        "--model-version",
        type=int,
        default=None,
        help="serve only this version (default: every version in the repository, the "
        "latest answering requests that name none, and those published later: see "
        "--file-system-poll-wait-seconds)",
    )
    parser.add_argument(
        "--version-label",
        action="append",
        default=[],
        metavar="LABEL=VERSION",
        help="a TF Serving version label (/v1/models/NAME/labels/LABEL, gRPC "
        "model_spec.version_label) for a served version; repeatable; stable is the "
        "latest version unless given",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=int(environ.get("AIP_HTTP_PORT") or DEFAULT_HTTP_PORT),
        help="REST port (default: %(default)s; $AIP_HTTP_PORT when set)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help="gRPC port: KServe v2 and TF Serving's PredictionService; 0: no gRPC "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="bind address (default: %(default)s; 0.0.0.0 exposes it to the network)",
    )
    parser.add_argument(
        "--allow-uri-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help='read the images that requests name ({"filenames": ...}) under this local '
        "path or gs:// prefix; repeatable; none by default: such requests get 403",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.model_repository is None and args.model_dir is None:
        parser.error("one of --model-repository or --model-dir is required")
    if args.model_repository is not None and args.model_name is None:
        parser.error("--model-name is required with --model-repository")
    args.model_name = args.model_name or DEFAULT_MODEL_NAME
    args.version_labels = {}
    for option in args.version_label:
        label, _, version = option.partition("=")
        if not label or not version.isdecimal():
            parser.error(f"--version-label {option!r}: expected LABEL=VERSION, e.g. canary=3")
        args.version_labels[label] = int(version)
    args.predict_routes = ("/invocations", *_env_routes(environ, "AIP_PREDICT_ROUTE"))
    args.health_routes = ("/ping", *_env_routes(environ, "AIP_HEALTH_ROUTE"))
    return args


def _env_routes(environ, name: str) -> tuple[str, ...]:
    route = environ.get(name, "")
    return (route,) if route.startswith("/") else ()


def main(argv: list[str] | None = None) -> None:
    """Serves the model the command line names; exits with an error message when it can't."""
    args = parse_args(argv)
    # Only now: TensorFlow and KServe take seconds to import.
    from components.deploy.server.http import ModelLoadError, serve

    try:
        serve(
            args.model_repository or "",
            args.model_name,
            http_port=args.http_port,
            host=args.host,
            version=args.model_version,
            limits=ServerLimits.from_args(args),
            grpc_port=args.grpc_port,
            model_dir=args.model_dir if args.model_repository is None else None,
            allow_uri_prefixes=tuple(args.allow_uri_prefix),
            predict_routes=args.predict_routes,
            health_routes=args.health_routes,
            version_labels=args.version_labels,
        )
    # No such model, a bad option or prefix, a gRPC port in use.
    except (FileNotFoundError, ValueError, RuntimeError, ModelLoadError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
