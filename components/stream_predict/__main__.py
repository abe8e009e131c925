"""Command line: ``python -m components.stream_predict --input-subscription S --output-topic T
--dead-letter-topic D (--model-repository DIR --model-name N | --model-dir DIR |
--endpoint URL --labels-uri FILE)
[--output-dir DIR] [--max-run-seconds 0] [Beam args...]``.

Arguments it does not know go to Beam (e.g. ``--runner=DataflowRunner --project=p
--region=r --temp_location=gs://...``). Prints the run's summary as JSON: on Dataflow once
the job is launched (with its id), here when the run stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from components.common import cli
from components.stream_predict import beam_pipeline

# The model to serve (one of three); and what is no flag: Beam's own arguments are the
# ones this command does not know.
MODELS = ("model_repository", "model_dir", "endpoint")
NOT_FLAGS = ("beam_args", "dataflow")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the stage's arguments; returns them and the remaining (Beam) arguments.

    The stage's arguments are a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m components.stream_predict",
        description="Streaming prediction from Pub/Sub with Apache Beam "
        "(arguments not listed here go to Beam).",
    )
    run = beam_pipeline.run
    model = parser.add_mutually_exclusive_group(required=True)
    cli.add_function_arguments(model, run, MODELS, fill_defaults=True)
    names = cli.parameter_names(run, leaving_out=(*MODELS, *NOT_FLAGS))
    cli.add_function_arguments(parser, run, names, fill_defaults=True)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs the stage from command-line arguments and prints its summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = beam_pipeline.run(**vars(args), beam_args=beam_args)
    print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
