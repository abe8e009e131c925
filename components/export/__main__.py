"""``python -m components.export``: the export stage from the command line."""

import argparse
import json

from components.export.saved_model import export_saved_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m components.export", description="Export a serving SavedModel."
    )
    p.add_argument("--model-dir", required=True, help="model directory written by the train stage")
    p.add_argument("--export-dir", required=True, help="where to write the SavedModel")
    args = p.parse_args(argv)
    print(json.dumps(export_saved_model(args.model_dir, args.export_dir), indent=2))


if __name__ == "__main__":
    main()
