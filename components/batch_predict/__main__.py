"""Command line: ``python -m components.batch_predict --model-dir DIR --output-dir DIR
(--input-uris FILE | --dataset-dir DIR) [--top-k 3] [--batch-size 32] [Beam args...]``.

With ``--endpoint`` the images go to a deployed model instead (one request per batch)::

    python -m components.batch_predict --endpoint http://127.0.0.1:8080/v1/models/image-classifier \
        (--labels-uri labels.txt | --model-dir EXPORT) --output-dir DIR --input-uris FILE \
        [--request-timeout-s 30] [--max-retries 5]
    python -m components.batch_predict --endpoint projects/P/locations/L/endpoints/ID ...

A detector's endpoint named without its export says so: ``--task detection``; its lines
in Vertex AI's AutoML object detection shape: ``--detection-format vertex``.

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

from components.batch_predict import beam_pipeline, records, vertex
from components.common import cli
from components.detection import predictions as detection_predictions

# The images to predict (one of two sources); and what is no derived flag: --model-dir
# (optional here), Beam's own arguments (the ones this command does not know).
SOURCES = ("input_uris", "dataset_dir")
NOT_FLAGS = ("model_dir", "beam_args", "dataflow")
# ``--target vertex``: the model (one of two), the images (one of two), its flags' names,
# and the parameters that are no flag (objects, and the clock tests pass).
VERTEX_MODELS = ("model_resource_name", "export_uri")
VERTEX_SOURCES = ("gcs_source_uris", "dataset_dir")
VERTEX_FLAGS = {
    "location": "--region",
    "model_resource_name": "--model",
    "export_uri": "--model-dir",
    "job_display_name": "--display-name",
}
VERTEX_NOT_FLAGS = ("export_metadata", "labels", "job_client", "sleep", "clock")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the stage's arguments; returns them and the remaining (Beam) arguments.

    The stage's arguments are a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``).
    """
    run = beam_pipeline.run
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict",
        description="Batch prediction with an exported SavedModel on Apache Beam "
        "(arguments not listed here go to Beam).",
    )
    # Hand-written: optional here, as --endpoint may stand for it.
    model_dir = cli.parameter_help([run])["model_dir"]
    parser.add_argument("--model-dir", default="", help=f"{model_dir} Needed without --endpoint.")
    source = parser.add_mutually_exclusive_group(required=True)
    cli.add_function_arguments(source, run, SOURCES, fill_defaults=True)
    names = cli.parameter_names(run, leaving_out=(*SOURCES, *NOT_FLAGS))
    choices = {
        "task": ("", *records.TASKS),
        "detection_format": detection_predictions.DETECTION_FORMATS,
    }
    cli.add_function_arguments(parser, run, names, choices=choices, fill_defaults=True)
    args, beam_args = parser.parse_known_args(argv)
    if not args.model_dir and not args.endpoint:
        parser.error("--model-dir is required (or --endpoint)")
    return args, beam_args


def parse_vertex_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the arguments of ``--target vertex`` (a Vertex AI batch prediction job): a
    flag for each parameter of ``vertex.run_batch_prediction``, which types, documents
    and defaults it."""
    run = vertex.run_batch_prediction
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict --target vertex",
        description="Batch prediction with a Vertex AI BatchPredictionJob.",
    )
    groups = (VERTEX_MODELS, VERTEX_SOURCES)
    for names in groups:
        group = parser.add_mutually_exclusive_group(required=True)
        cli.add_function_arguments(group, run, names, flags=VERTEX_FLAGS, fill_defaults=True)
    cli.add_function_arguments(
        parser,
        run,
        cli.parameter_names(run, leaving_out=(*VERTEX_MODELS, *VERTEX_SOURCES, *VERTEX_NOT_FLAGS)),
        flags=VERTEX_FLAGS,
        choices={"instances_format": vertex.INSTANCES_FORMATS},
        fill_defaults=True,
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
