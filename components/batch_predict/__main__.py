"""Command line: ``python -m components.batch_predict --model-dir DIR --output-dir DIR
(--input-uris FILE | --dataset-dir DIR) [--top-k 3] [--batch-size 32] [Beam args...]``.

With ``--endpoint`` the images go to a deployed model instead (one request per batch)::

    python -m components.batch_predict --endpoint http://127.0.0.1:8080/v1/models/image-classifier \
        (--labels-uri labels.txt | --model-dir EXPORT) --output-dir DIR --input-uris FILE \
        [--request-timeout-s 30] [--max-retries 5]
    python -m components.batch_predict --endpoint projects/P/locations/L/endpoints/ID ...

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

from components.batch_predict import beam_pipeline, vertex
from components.common.cli import defaults


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the stage's arguments; returns them and the remaining (Beam) arguments."""
    default = defaults(beam_pipeline.run)
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict",
        description="Batch prediction with an exported SavedModel on Apache Beam "
        "(arguments not listed here go to Beam).",
    )
    parser.add_argument(
        "--model-dir",
        default="",
        help="exported SavedModel directory (with --endpoint: only its labels are read)",
    )
    parser.add_argument("--output-dir", required=True, help="where to write the JSON Lines")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input-uris",
        default=default["input_uris"],
        help="file listing images: 'uri,label' CSV or one URI a line",
    )
    source.add_argument(
        "--dataset-dir",
        default=default["dataset_dir"],
        help="create_tfrecords dataset (its manifests/test.csv)",
    )
    parser.add_argument(
        "--top-k", type=int, default=default["top_k"], help="classes listed per image"
    )
    parser.add_argument(
        "--batch-size", type=int, default=default["batch_size"], help="images per model call"
    )
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        default=default["max_error_fraction"],
        help="largest tolerated share of inputs without a prediction",
    )
    parser.add_argument("--runner", default=default["runner"], help="Beam runner")
    parser.add_argument(
        "--endpoint",
        default=default["endpoint"],
        help="call this deployed model instead of loading --model-dir: a TF Serving REST URL "
        "(http://host:port/v1/models/NAME) or a Vertex AI endpoint "
        "(projects/P/locations/L/endpoints/ID)",
    )
    parser.add_argument(
        "--labels-uri",
        default=default["labels_uri"],
        help="with --endpoint: the model's label file (default: the export's, in --model-dir)",
    )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=default["request_timeout_s"],
        help="with --endpoint: longest wait for one answer",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=default["max_retries"],
        help="with --endpoint: retries of a request answered 429/502/503/504 or not at all",
    )
    args, beam_args = parser.parse_known_args(argv)
    if not args.model_dir and not args.endpoint:
        parser.error("--model-dir is required (or --endpoint)")
    return args, beam_args


def parse_vertex_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the arguments of ``--target vertex`` (a Vertex AI batch prediction job)."""
    default = defaults(vertex.run_batch_prediction)
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict --target vertex",
        description="Batch prediction with a Vertex AI BatchPredictionJob.",
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", dest="location", required=True)
    parser.add_argument("--gcs-destination-prefix", required=True, help="gs:// output prefix")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--model", dest="model_resource_name", default="", help="Model Registry resource name"
    )
    model.add_argument(
        "--model-dir", dest="export_uri", default="", help="exported SavedModel on gs://"
    )
    parser.add_argument(
        "--serving-image", default=default["serving_image"], help="default: prebuilt TensorFlow"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gcs-source-uris", nargs="+", default=[], help="gs:// input files")
    source.add_argument(
        "--dataset-dir", default=default["dataset_dir"], help="dataset on gs:// (test split)"
    )
    parser.add_argument(
        "--instances-format", default=default["instances_format"], choices=vertex.INSTANCES_FORMATS
    )
    parser.add_argument(
        "--display-name", dest="job_display_name", default=default["job_display_name"]
    )
    parser.add_argument("--machine-type", default=default["machine_type"])
    parser.add_argument("--accelerator-type", default=default["accelerator_type"])
    parser.add_argument("--accelerator-count", type=int, default=default["accelerator_count"])
    parser.add_argument(
        "--starting-replica-count", type=int, default=default["starting_replica_count"]
    )
    parser.add_argument("--max-replica-count", type=int, default=default["max_replica_count"])
    parser.add_argument("--batch-size", type=int, default=default["batch_size"])
    parser.add_argument("--service-account", default=default["service_account"])
    parser.add_argument("--max-error-fraction", type=float, default=default["max_error_fraction"])
    parser.add_argument("--timeout-s", type=float, default=default["timeout_s"])
    parser.add_argument(
        "--no-wait", dest="wait", action="store_false", help="return once the job is created"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs the stage from command-line arguments and prints its summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", choices=("beam", "vertex"), default="beam")
    chosen, argv = target.parse_known_args(sys.argv[1:] if argv is None else argv)
    if chosen.target == "vertex":
        summary = vertex.run_batch_prediction(**vars(parse_vertex_args(argv)))
    else:
        args, beam_args = parse_args(argv)
        summary = beam_pipeline.run(**vars(args), beam_args=beam_args)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
