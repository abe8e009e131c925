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

from components.common.cli import defaults
from components.stream_predict import beam_pipeline


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the stage's arguments; returns them and the remaining (Beam) arguments."""
    default = defaults(beam_pipeline.run)
    parser = argparse.ArgumentParser(
        prog="python -m components.stream_predict",
        description="Streaming prediction from Pub/Sub with Apache Beam "
        "(arguments not listed here go to Beam).",
    )
    parser.add_argument("--input-subscription", required=True, help="projects/P/subscriptions/S")
    parser.add_argument("--output-topic", required=True, help="projects/P/topics/T")
    parser.add_argument("--dead-letter-topic", required=True, help="projects/P/topics/T")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--model-repository", default=default["model_repository"], help="newest version serves"
    )
    model.add_argument("--model-dir", default=default["model_dir"], help="one SavedModel")
    model.add_argument(
        "--endpoint", default=default["endpoint"], help="TF Serving REST URL or Vertex endpoint"
    )
    parser.add_argument(
        "--labels-uri", default=default["labels_uri"], help="the endpoint's label file"
    )
    parser.add_argument("--model-name", default=default["model_name"])
    parser.add_argument("--top-k", type=int, default=default["top_k"])
    parser.add_argument("--batch-size", type=int, default=default["batch_size"])
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        default=default["refresh_seconds"],
        help="how often to look for a newer model version",
    )
    parser.add_argument("--request-timeout-s", type=float, default=default["request_timeout_s"])
    parser.add_argument("--max-retries", type=int, default=default["max_retries"])
    parser.add_argument("--runner", default=default["runner"], help="Beam runner")
    parser.add_argument(
        "--max-run-seconds",
        type=float,
        default=default["max_run_seconds"],
        help="DirectRunner: stop after this long (0: until interrupted)",
    )
    parser.add_argument(
        "--pubsub-emulator-host",
        default=default["pubsub_emulator_host"],
        help="host:port of a Pub/Sub emulator",
    )
    parser.add_argument(
        "--output-dir",
        default=default["output_dir"],
        help="also write the predictions to JSON-lines files here, one per window",
    )
    parser.add_argument("--file-window-seconds", type=int, default=default["file_window_seconds"])
    parser.add_argument(
        "--job-name",
        default=default["job_name"],
        help="Dataflow job name; a running job of this name is updated in place",
    )
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
