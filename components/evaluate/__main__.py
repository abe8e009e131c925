"""``python -m components.evaluate``: the evaluate stage from the command line.

Prints the report as JSON; exits with status 1 when the model fails the quality gate.
"""

import argparse
import json
import logging

from components.common.cli import defaults
from components.evaluate.evaluation import evaluate_export


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; the defaults are those of the stage function."""
    default = defaults(evaluate_export)
    p = argparse.ArgumentParser(
        prog="python -m components.evaluate", description="Evaluate an exported model."
    )
    p.add_argument("--export-dir", required=True, help="SavedModel written by the export stage")
    p.add_argument("--dataset-dir", required=True, help="dataset written by create_tfrecords")
    p.add_argument("--split", default=default["split"])
    p.add_argument("--accuracy-threshold", type=float, default=default["accuracy_threshold"])
    p.add_argument(
        "--champion-dir",
        default=default["champion_dir"],
        help="the SavedModel serving now: the new model must not be worse than it",
    )
    p.add_argument(
        "--champion-margin",
        type=float,
        default=default["champion_margin"],
        help="how much lower than the champion's accuracy the new model's may be",
    )
    p.add_argument(
        "--explanations-html",
        dest="explanations_path",
        default=default["explanations_path"],
        help="write integrated-gradients explanations of sampled images to this HTML file",
    )
    p.add_argument(
        "--explain-examples",
        type=int,
        default=default["explain_examples"],
        help="images to explain (0: explanations off)",
    )
    p.add_argument(
        "--ig-steps", type=int, default=default["ig_steps"], help="integrated-gradients steps"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate_export(**vars(args))
    print(json.dumps(report, indent=2))
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
