"""``python -m components.evaluate``: the evaluate stage from the command line."""

import argparse
import json
import logging

from components.evaluate.evaluation import evaluate
from components.evaluate.explanations import write_explanations


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m components.evaluate", description="Evaluate an exported model."
    )
    p.add_argument("--export-dir", required=True, help="SavedModel written by the export stage")
    p.add_argument("--dataset-dir", required=True, help="dataset written by create_tfrecords")
    p.add_argument("--split", default="test")
    p.add_argument("--accuracy-threshold", type=float, default=0.8)
    p.add_argument(
        "--explanations-html",
        default="",
        help="write integrated-gradients explanations of sampled images to this HTML file",
    )
    p.add_argument(
        "--explain-examples", type=int, default=8, help="images to explain (0: explanations off)"
    )
    p.add_argument("--ig-steps", type=int, default=50, help="integrated-gradients steps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate(args.export_dir, args.dataset_dir, args.split, args.accuracy_threshold)
    if args.explanations_html:
        report["explanations"] = write_explanations(
            args.explanations_html,
            args.export_dir,
            args.dataset_dir,
            args.split,
            args.explain_examples,
            args.ig_steps,
        )
    print(json.dumps(report, indent=2))
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
