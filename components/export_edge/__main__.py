"""``python -m components.export_edge``: the export_edge stage from the command line.

Prints the result (agreement per format, sizes, seconds) as JSON; exits with an error
when a model agrees with the SavedModel less than its minimum.
"""

import argparse
import json

from components.common import cli
from components.export_edge.edge import export_edge
from components.export_edge.tfjs import CHECKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line: a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``)."""
    p = argparse.ArgumentParser(
        prog="python -m components.export_edge",
        description="TFLite and TensorFlow.js models of an export, checked against it.",
    )
    cli.add_function_arguments(
        p,
        export_edge,
        cli.parameter_names(export_edge),
        choices={"tfjs_check": CHECKS},
        fill_defaults=True,
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Converts and checks from the command line; prints the result as JSON."""
    args = parse_args(argv)
    print(json.dumps(export_edge(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
