"""Deploys an export outside a pipeline; prints what serves it as JSON.

Usage::

    # local: a model repository, checked with a local server
    python -m components.deploy --export-dir EXPORT [--model-name image-classifier] \\
        [--model-repository DIR] [--port 8080]
    # Vertex AI: a Model version deployed to an endpoint (the export on gs://)
    python -m components.deploy --target vertex --export-dir gs://.../exported_model \\
        --project P --region us-central1 [--traffic-percent 10] [--machine-type ...]
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

from components.deploy import DEFAULT_HTTP_PORT
from components.deploy.local import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REPOSITORY

TARGETS = ("local", "vertex", "kserve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; checks each target's required arguments."""
    parser = argparse.ArgumentParser(prog="python -m components.deploy", description=__doc__)
    parser.add_argument("--export-dir", required=True, help="SavedModel of the export stage")
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        help="served name (local), Model display name (vertex), InferenceService (kserve)",
    )
    parser.add_argument(
        "--model-repository",
        default="",
        help=f"model repository (local: default {DEFAULT_MODEL_REPOSITORY}; kserve: required)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="port to advertise")
    parser.add_argument(
        "--timeout-s", type=float, default=0.0, help="wait for serving (default per target)"
    )
    parser.add_argument("--traffic-percent", type=int, default=100, help="vertex, kserve")
    parser.add_argument("--min-replicas", type=int, default=1, help="vertex, kserve")
    parser.add_argument("--max-replicas", type=int, default=1, help="vertex, kserve")
    vertex = parser.add_argument_group("vertex")
    vertex.add_argument("--project", default="")
    vertex.add_argument("--region", default="")
    vertex.add_argument("--endpoint-display-name", default="")
    vertex.add_argument("--serving-image", default="", help="default: prebuilt TensorFlow")
    vertex.add_argument("--machine-type", default="n1-standard-4")
    vertex.add_argument("--accelerator-type", default="")
    vertex.add_argument("--accelerator-count", type=int, default=0)
    vertex.add_argument("--keep-versions", type=int, default=1)
    vertex.add_argument("--service-account", default="")
    vertex.add_argument(
        "--explain", action="store_true", help="upload with the export's explanation spec"
    )
    kserve = parser.add_argument_group("kserve")
    kserve.add_argument("--namespace", default="")
    kserve.add_argument("--runtime-version", default="2.21.0", help="TensorFlow Serving version")
    kserve.add_argument("--cpu", default="1")
    kserve.add_argument("--memory", default="2Gi")
    kserve.add_argument("--gpu-count", type=int, default=0)
    kserve.add_argument("--service-account-name", default="")
    args = parser.parse_args(argv)
    if args.target == "vertex" and not (args.project and args.region):
        parser.error("--target vertex needs --project and --region")
    if args.target == "kserve" and not (args.namespace and args.model_repository):
        parser.error("--target kserve needs --namespace and --model-repository")
    return args


def deploy(args: argparse.Namespace) -> dict:
    """Deploys to the chosen target; returns what the target's deploy function returns."""
    if args.target == "vertex":
        from components.deploy import vertex

        explanation = (None, None)
        if args.explain:
            from components.export.explanation_metadata import read_explanation_spec

            explanation = vertex.explanation_spec_from_json(*read_explanation_spec(args.export_dir))
        return vertex.deploy_to_vertex(
            args.export_dir,
            args.project,
            args.region,
            args.model_name,
            endpoint_display_name=args.endpoint_display_name,
            serving_image=args.serving_image,
            tf_version="" if args.serving_image else vertex.saved_model_tf_version(args.export_dir),
            machine_type=args.machine_type,
            accelerator_type=args.accelerator_type,
            accelerator_count=args.accelerator_count,
            min_replica_count=args.min_replicas,
            max_replica_count=args.max_replicas,
            traffic_percent=args.traffic_percent,
            keep_versions=args.keep_versions,
            service_account=args.service_account,
            explanation_metadata=explanation[0],
            explanation_parameters=explanation[1],
            operation_timeout_s=args.timeout_s or vertex.DEFAULT_OPERATION_TIMEOUT_S,
        )
    if args.target == "kserve":
        from components.deploy.kserve import deploy_kserve

        return deploy_kserve(
            args.export_dir,
            args.model_repository,
            args.model_name,
            args.namespace,
            runtime_version=args.runtime_version,
            cpu=args.cpu,
            memory=args.memory,
            gpu_count=args.gpu_count,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            service_account_name=args.service_account_name,
            traffic_percent=args.traffic_percent,
            timeout_s=args.timeout_s or 600.0,
        )
    from components.deploy.local import deploy_local

    return deploy_local(
        args.export_dir,
        model_name=args.model_name,
        model_repository=args.model_repository or DEFAULT_MODEL_REPOSITORY,
        port=args.port,
        timeout_s=args.timeout_s or 120.0,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(json.dumps(deploy(args), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
