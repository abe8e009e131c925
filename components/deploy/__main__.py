"""Deploys an export to the local target, outside a pipeline; prints the endpoint as JSON.

Usage::

    python -m components.deploy --export-dir EXPORT [--model-name image-classifier] \\
        [--model-repository DIR] [--port 8080]

Then serve it with the printed ``serve_command`` (``python -m components.deploy.server``).
"""

from __future__ import annotations

import argparse
import json
import logging

from components.deploy import DEFAULT_HTTP_PORT
from components.deploy.local import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REPOSITORY, deploy_local


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.deploy", description=__doc__)
    parser.add_argument("--export-dir", required=True, help="SavedModel of the export stage")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--model-repository", default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="port to advertise")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    info = deploy_local(
        args.export_dir,
        model_name=args.model_name,
        model_repository=args.model_repository,
        port=args.port,
        timeout_s=args.timeout_s,
    )
    print(json.dumps(info, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
