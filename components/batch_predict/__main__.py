"""Command line: ``python -m components.batch_predict --model-dir DIR --output-dir DIR
(--input-uris FILE | --dataset-dir DIR) [--top-k 3] [--batch-size 32] [Beam args...]``.

Arguments it does not know go to Beam (e.g. ``--runner=DataflowRunner --project=p``).
Prints the run's summary as JSON.

``--target vertex`` runs a Vertex AI batch prediction job instead (``vertex.py``)::

    python -m components.batch_predict --target vertex --project P --region us-central1 \\
        (--model projects/.../models/ID@V | --model-dir gs://.../exported_model) \\
        (--gcs-source-uris gs://.../file-list.txt ... | --dataset-dir gs://.../dataset) \\
        --gcs-destination-prefix gs://bucket/predictions [--instances-format file-list]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from components.batch_predict import beam_pipeline


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the stage's arguments; returns them and the remaining (Beam) arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict",
        description="Batch prediction with an exported SavedModel on Apache Beam "
        "(arguments not listed here go to Beam).",
    )
    parser.add_argument("--model-dir", required=True, help="exported SavedModel directory")
    parser.add_argument("--output-dir", required=True, help="where to write the JSON Lines")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input-uris", default="", help="file listing images: 'uri,label' CSV or one URI a line"
    )
    source.add_argument(
        "--dataset-dir", default="", help="create_tfrecords dataset (its manifests/test.csv)"
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per image")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call")
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        default=0.1,
        help="largest tolerated share of inputs without a prediction",
    )
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner")
    return parser.parse_known_args(argv)


def parse_vertex_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the arguments of ``--target vertex`` (a Vertex AI batch prediction job)."""
    from components.batch_predict import vertex

    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict --target vertex",
        description="Batch prediction with a Vertex AI BatchPredictionJob.",
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--gcs-destination-prefix", required=True, help="gs:// output prefix")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", default="", help="Model Registry resource name")
    model.add_argument("--model-dir", default="", help="exported SavedModel on gs://")
    parser.add_argument("--serving-image", default="", help="default: prebuilt TensorFlow")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gcs-source-uris", nargs="+", default=[], help="gs:// input files")
    source.add_argument(
        "--dataset-dir", default="", help="create_tfrecords dataset on gs:// (test split)"
    )
    parser.add_argument("--instances-format", default="file-list", choices=vertex.INSTANCES_FORMATS)
    parser.add_argument("--display-name", default="image-classifier-batch-predict")
    parser.add_argument("--machine-type", default=vertex.DEFAULT_MACHINE_TYPE)
    parser.add_argument("--accelerator-type", default="")
    parser.add_argument("--accelerator-count", type=int, default=0)
    parser.add_argument("--starting-replica-count", type=int, default=1)
    parser.add_argument("--max-replica-count", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--max-error-fraction", type=float, default=0.1)
    parser.add_argument("--timeout-s", type=float, default=24 * 3600.0)
    parser.add_argument("--no-wait", action="store_true", help="return once the job is created")
    return parser.parse_args(argv)


def run_vertex(args: argparse.Namespace) -> dict:
    """Runs a Vertex AI batch prediction job from ``parse_vertex_args``'s arguments."""
    from components.batch_predict import vertex
    from components.common import schema
    from components.deploy.vertex import (
        is_accelerated,
        prebuilt_serving_image,
        saved_model_tf_version,
    )

    serving_image = args.serving_image
    if args.model_dir and not serving_image:
        serving_image = prebuilt_serving_image(
            args.region,
            saved_model_tf_version(args.model_dir),
            is_accelerated(args.accelerator_type, args.accelerator_count),
        )
    sources, instances_format = args.gcs_source_uris, args.instances_format
    if args.dataset_dir:
        file_list = f"{args.gcs_destination_prefix.rstrip('/')}/inputs/{args.display_name}.txt"
        vertex.write_file_list(schema.manifest_path(args.dataset_dir, "test"), file_list)
        sources, instances_format = [file_list], "file-list"
    return vertex.run_batch_prediction(
        project=args.project,
        region=args.region,
        display_name=args.display_name,
        gcs_source_uris=sources,
        gcs_destination_prefix=args.gcs_destination_prefix,
        instances_format=instances_format,
        model=args.model,
        artifact_uri=args.model_dir,
        serving_image=serving_image,
        machine_type=args.machine_type,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        starting_replica_count=args.starting_replica_count,
        max_replica_count=args.max_replica_count,
        batch_size=args.batch_size,
        wait=not args.no_wait,
        timeout_s=args.timeout_s,
        max_error_fraction=args.max_error_fraction,
    )


def main(argv: list[str] | None = None) -> dict:
    """Runs the stage from command-line arguments and prints its summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", choices=("beam", "vertex"), default="beam")
    chosen, argv = target.parse_known_args(sys.argv[1:] if argv is None else argv)
    if chosen.target == "vertex":
        summary = run_vertex(parse_vertex_args(argv))
        print(json.dumps(summary, indent=2, sort_keys=True))
        return summary
    args, beam_args = parse_args(argv)
    summary = beam_pipeline.run(
        model_dir=args.model_dir,
        output_dir=args.output_dir,
        input_uris=args.input_uris,
        dataset_dir=args.dataset_dir,
        top_k=args.top_k,
        batch_size=args.batch_size,
        runner=args.runner,
        beam_args=beam_args,
        max_error_fraction=args.max_error_fraction,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
