"""Deploys an export outside a pipeline; prints what serves it as JSON.

Usage::

    # local: a model repository, checked with a local server
    python -m components.deploy --export-dir EXPORT [--model-name image-classifier] \\
        [--model-repository DIR] [--port 8080]
    # Vertex AI: a Model version deployed to an endpoint (the export on gs://)
    python -m components.deploy --target vertex --export-dir gs://.../exported_model \\
        --project P --region us-central1 [--traffic-percent 10] [--machine-type ...] \\
        [--serving-container auto|prebuilt|custom] [--deploy-image IMAGE]
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

from components.common.cli import defaults
from components.deploy import kserve, local, vertex
from components.deploy.vertex_serving import SERVING_CONTAINERS

TARGETS = ("local", "vertex", "kserve")
LOCAL, VERTEX, KSERVE = (
    defaults(local.deploy_local),
    defaults(vertex.deploy_to_vertex),
    defaults(kserve.deploy_kserve),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; checks each target's required arguments.

    The options several targets share default to None: the target's own default then.
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
    group.add_argument("--project", default="")
    group.add_argument("--region", default="")
    group.add_argument("--endpoint-display-name", default=VERTEX["endpoint_display_name"])
    group.add_argument(
        "--serving-image",
        default=VERTEX["serving_image"],
        help="default: the serving container's own (prebuilt TensorFlow, or the deploy image)",
    )
    group.add_argument(
        "--serving-container",
        choices=SERVING_CONTAINERS,
        default=VERTEX["serving_container"],
        help="prebuilt TensorFlow container, the deploy image as a custom container, or "
        "auto: prebuilt unless the export's TensorFlow is newer (default: %(default)s)",
    )
    group.add_argument(
        "--deploy-image",
        default=VERTEX["deploy_image"],
        help="image of a custom container (default: the deploy stage image of "
        "IMAGE_REGISTRY and IMAGE_TAG)",
    )
    group.add_argument("--machine-type", default=VERTEX["machine_type"])
    group.add_argument("--accelerator-type", default=VERTEX["accelerator_type"])
    group.add_argument("--accelerator-count", type=int, default=VERTEX["accelerator_count"])
    group.add_argument("--keep-versions", type=int, default=VERTEX["keep_versions"])
    group.add_argument("--service-account", default=VERTEX["service_account"])
    group.add_argument(
        "--explain",
        dest="enable_explanations",
        action="store_true",
        help="upload with the export's explanation spec",
    )
    group = parser.add_argument_group("kserve")
    group.add_argument("--namespace", default="")
    group.add_argument(
        "--runtime-version",
        default=KSERVE["runtime_version"],
        help="TensorFlow Serving version",
    )
    group.add_argument("--cpu", default=KSERVE["cpu"])
    group.add_argument("--memory", default=KSERVE["memory"])
    group.add_argument("--gpu-count", type=int, default=KSERVE["gpu_count"])
    group.add_argument("--service-account-name", default=KSERVE["service_account_name"])
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
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(json.dumps(deploy(args), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
