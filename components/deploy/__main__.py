"""Deploys an export outside a pipeline; prints what serves it as JSON.

Usage::

    # local: a model repository, checked with a local server
    python -m components.deploy --export-dir EXPORT [--model-name image-classifier] \\
        [--model-repository DIR] [--port 8080]
    # Vertex AI: a Model version deployed to an endpoint (the export on gs://)
    python -m components.deploy --target vertex --export-dir gs://.../exported_model \\
        --project P --region us-central1 [--traffic-percent 10] [--machine-type ...] \\
        [--serving-container auto|prebuilt|custom] [--deploy-image IMAGE] \\
        [--encryption-spec-key-name KEY] [--private-endpoint --network projects/N/global/networks/V]
    # KServe: an InferenceService in the current kubeconfig context's cluster
    python -m components.deploy --target kserve --export-dir EXPORT \\
        --model-repository gs://bucket/models --namespace NS [--traffic-percent 10]

For the local target, serve it then with the printed ``serve_command``
(``python -m components.deploy.server``).
"""

from __future__ import annotations

import argparse
import json
import logging

from components.common import cli
from components.deploy import kserve, local, vertex
from components.deploy.vertex_serving import SERVING_CONTAINERS

TARGETS = ("local", "vertex", "kserve")
LOCAL = cli.defaults(local.deploy_local)
# Each cloud target's own options, flags of its deploy function's parameters; the
# options the targets share are hand-written below, as they set differently named
# parameters (or a required one) of each target's function.
VERTEX_OPTIONS = (
    "endpoint_display_name",
    "serving_image",
    "serving_container",
    "deploy_image",
    "machine_type",
    "accelerator_type",
    "accelerator_count",
    "keep_versions",
    "service_account",
    "encryption_spec_key_name",
    "network",
    "private_endpoint",
    "enable_explanations",
)
KSERVE_OPTIONS = ("runtime_version", "cpu", "memory", "gpu_count", "service_account_name")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; checks each target's required arguments.

    The options several targets share default to None: the target's own default then.
    Each target's own options are its deploy function's parameters, which type, document
    and default them (``common.cli``).
    """
    parser = argparse.ArgumentParser(prog="python -m components.deploy", description=__doc__)
    parser.add_argument("--export-dir", required=True, help="SavedModel of the export stage")
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument(
        "--model-name",
        default=LOCAL["model_name"],
        help="served name (local), Model display name (vertex), InferenceService (kserve)",
    )
    parser.add_argument(
        "--model-repository",
        default=None,
        help=f"model repository (local: default {LOCAL['model_repository']}; kserve: required)",
    )
    parser.add_argument("--port", type=int, default=LOCAL["port"], help="port to advertise")
    parser.add_argument("--timeout-s", type=float, help="wait for serving (default per target)")
    parser.add_argument("--traffic-percent", type=int, help="vertex, kserve (default 100)")
    parser.add_argument("--min-replicas", type=int, help="vertex, kserve (default 1)")
    parser.add_argument("--max-replicas", type=int, help="vertex, kserve (default 1)")
    group = parser.add_argument_group("vertex")
    group.add_argument("--project", default="", help="Google Cloud project (required)")
    group.add_argument("--region", default="", help="Vertex AI region (required)")
    cli.add_function_arguments(
        group,
        vertex.deploy_to_vertex,
        VERTEX_OPTIONS,
        choices={"serving_container": SERVING_CONTAINERS},
        flags={"enable_explanations": "--explain"},
        fill_defaults=True,
    )
    group = parser.add_argument_group("kserve")
    group.add_argument(
        "--namespace", default="", help="namespace of the InferenceService (required)"
    )
    cli.add_function_arguments(group, kserve.deploy_kserve, KSERVE_OPTIONS, fill_defaults=True)
    args = parser.parse_args(argv)
    if args.target == "vertex" and not (args.project and args.region):
        parser.error("--target vertex needs --project and --region")
    if args.target == "kserve" and not (args.namespace and args.model_repository):
        parser.error("--target kserve needs --namespace and --model-repository")
    return args


def _given(**options) -> dict:
    """The options given on the command line (the others keep the function's default)."""
    return {name: value for name, value in options.items() if value is not None}


def deploy(args: argparse.Namespace) -> dict:
    """Deploys to the chosen target; returns what the target's deploy function returns."""
    if args.target == "vertex":
        return vertex.deploy_to_vertex(
            args.export_dir,
            args.project,
            args.region,
            args.model_name,
            endpoint_display_name=args.endpoint_display_name,
            serving_image=args.serving_image,
            serving_container=args.serving_container,
            deploy_image=args.deploy_image,
            machine_type=args.machine_type,
            accelerator_type=args.accelerator_type,
            accelerator_count=args.accelerator_count,
            keep_versions=args.keep_versions,
            service_account=args.service_account,
            encryption_spec_key_name=args.encryption_spec_key_name,
            network=args.network,
            private_endpoint=args.private_endpoint,
            enable_explanations=args.enable_explanations,
            **_given(
                min_replica_count=args.min_replicas,
                max_replica_count=args.max_replicas,
                traffic_percent=args.traffic_percent,
                operation_timeout_s=args.timeout_s,
            ),
        )
    if args.target == "kserve":
        return kserve.deploy_kserve(
            args.export_dir,
            args.model_repository,
            args.model_name,
            args.namespace,
            runtime_version=args.runtime_version,
            cpu=args.cpu,
            memory=args.memory,
            gpu_count=args.gpu_count,
            service_account_name=args.service_account_name,
            **_given(
                min_replicas=args.min_replicas,
                max_replicas=args.max_replicas,
                traffic_percent=args.traffic_percent,
                timeout_s=args.timeout_s,
            ),
        )
    return local.deploy_local(
        args.export_dir,
        model_name=args.model_name,
        port=args.port,
        **_given(model_repository=args.model_repository, timeout_s=args.timeout_s),
    )


def main(argv: list[str] | None = None) -> None:
    """Deploys from the command line; prints what serves the model as JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(json.dumps(deploy(args), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
