"""``python -m components.evaluate``: the evaluate stage from the command line."""

import argparse
import json
import logging

from components.evaluate.evaluation import evaluate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m components.evaluate", description="Evaluate an exported model."
    )
    p.add_argument("--export-dir", required=True, help="SavedModel written by the export stage")
    p.add_argument("--dataset-dir", required=True, help="dataset written by create_tfrecords")
    p.add_argument("--split", default="test")
    p.add_argument("--accuracy-threshold", type=float, default=0.8)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate(args.export_dir, args.dataset_dir, args.split, args.accuracy_threshold)
    print(json.dumps(report, indent=2))
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
