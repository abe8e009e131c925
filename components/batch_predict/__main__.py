"""Command line: ``python -m components.batch_predict --model-dir DIR --output-dir DIR
(--input-uris FILE | --dataset-dir DIR) [--top-k 3] [--batch-size 32] [Beam args...]``.

Arguments it does not know go to Beam (e.g. ``--runner=DataflowRunner --project=p``).
Prints the run's summary as JSON.
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


def main(argv: list[str] | None = None) -> dict:
    """Runs the stage from command-line arguments and prints its summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
