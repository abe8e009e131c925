"""``python -m components.export``: the export stage from the command line."""

import argparse
import json

from components.common.cli import defaults
from components.export import explanation_metadata
from components.export.saved_model import export_saved_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; the defaults are those of the stage function."""
    default = defaults(export_saved_model)
    p = argparse.ArgumentParser(
        prog="python -m components.export", description="Export a serving SavedModel."
    )
    p.add_argument("--model-dir", required=True, help="model directory written by the train stage")
    p.add_argument("--export-dir", required=True, help="where to write the SavedModel")
    p.add_argument(
        "--explanation-method",
        default=default["explanation_method"],
        choices=list(explanation_metadata.METHODS),
        help="attribution method of the Vertex AI explanation spec written with the model",
    )
    p.add_argument(
        "--explanation-steps",
        type=int,
        default=default["explanation_steps"],
        help="its step count (1 to 100)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(export_saved_model(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
