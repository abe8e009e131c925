"""``python -m components.export``: the export stage from the command line."""

import argparse
import json

from components.common import cli
from components.export import explanation_metadata
from components.export.saved_model import export_saved_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line: a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``)."""
    p = argparse.ArgumentParser(
        prog="python -m components.export", description="Export a serving SavedModel."
    )
    cli.add_function_arguments(
        p,
        export_saved_model,
        cli.parameter_names(export_saved_model),
        choices={"explanation_method": list(explanation_metadata.METHODS)},
        fill_defaults=True,
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Exports from the command line; prints the export's metadata as JSON."""
    args = parse_args(argv)
    print(json.dumps(export_saved_model(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
