"""``python -m components.export_edge``: the export_edge stage from the command line.

Prints the result (agreement per format, sizes, seconds) as JSON; exits with an error
when a model agrees with the SavedModel less than its minimum.
"""

import argparse
import json

from components.common.cli import defaults
from components.export_edge.edge import export_edge
from components.export_edge.tfjs import CHECKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; the defaults are those of the stage function."""
    default = defaults(export_edge)
    p = argparse.ArgumentParser(
        prog="python -m components.export_edge",
        description="TFLite and TensorFlow.js models of an export, checked against it.",
    )
    p.add_argument("--export-dir", required=True, help="SavedModel written by the export stage")
    p.add_argument("--dataset-dir", required=True, help="dataset written by create_tfrecords")
    p.add_argument("--tflite-dir", required=True, help="where to write the .tflite models")
    p.add_argument("--tfjs-dir", required=True, help="where to write the TF.js graph model")
    p.add_argument(
        "--representative-images",
        type=int,
        default=default["representative_images"],
        help="training images that calibrate the int8 model",
    )
    p.add_argument(
        "--float-min-agreement",
        type=float,
        default=default["float_min_agreement"],
        help="share of images on which float32, float16 and TF.js must agree with the SavedModel",
    )
    p.add_argument(
        "--int8-min-agreement",
        type=float,
        default=default["int8_min_agreement"],
        help="the same for int8",
    )
    p.add_argument("--split", default=default["split"], help="split the models are checked on")
    p.add_argument(
        "--max-examples",
        type=int,
        default=default["max_examples"],
        help="check on at most this many images (0: all of the split)",
    )
    p.add_argument(
        "--tfjs-check",
        choices=CHECKS,
        default=default["tfjs_check"],
        help="node: TensorFlow.js in Node.js; python: its graph in TensorFlow; auto: node if there",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(export_edge(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
