"""``python -m components.export``: the export stage from the command line."""

import argparse
import json

from components.export import explanation_metadata
from components.export.saved_model import export_saved_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m components.export", description="Export a serving SavedModel."
    )
    p.add_argument("--model-dir", required=True, help="model directory written by the train stage")
    p.add_argument("--export-dir", required=True, help="where to write the SavedModel")
    p.add_argument(
        "--explanation-method",
        default=explanation_metadata.INTEGRATED_GRADIENTS,
        choices=list(explanation_metadata.METHODS),
        help="attribution method of the Vertex AI explanation spec written with the model",
    )
    p.add_argument(
        "--explanation-steps",
        type=int,
        default=explanation_metadata.DEFAULT_STEPS,
        help="its step count (1 to 100)",
    )
    args = p.parse_args(argv)
    metadata = export_saved_model(
        args.model_dir, args.export_dir, args.explanation_method, args.explanation_steps
    )
    print(json.dumps(metadata, indent=2))


if __name__ == "__main__":
    main()
