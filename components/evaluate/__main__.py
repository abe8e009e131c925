"""``python -m components.evaluate``: the evaluate stage from the command line.

Prints the report as JSON; exits with status 1 when the model fails the quality gate.
"""

import argparse
import json
import logging

from components.common import cli
from components.evaluate.evaluation import evaluate_export


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line: a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``)."""
    p = argparse.ArgumentParser(
        prog="python -m components.evaluate", description="Evaluate an exported model."
    )
    cli.add_function_arguments(
        p,
        evaluate_export,
        cli.parameter_names(evaluate_export),
        flags={"explanations_path": "--explanations-html"},
        fill_defaults=True,
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Evaluates from the command line; exits with status 1 when the gate fails."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate_export(**vars(args))
    print(json.dumps(report, indent=2))
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
