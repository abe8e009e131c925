"""``python -m components.train``: the train stage from the command line."""

import argparse
import json
import logging

from components.train.training import train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m components.train", description=train.__doc__.split("\n")[0]
    )
    p.add_argument("--dataset-dir", required=True, help="directory written by create_tfrecords")
    p.add_argument("--model-dir", required=True, help="where to write the model directory")
    p.add_argument("--backbone", default="EfficientNetB0")
    p.add_argument("--weights", default="imagenet", help='"imagenet", "none" or a weights file')
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--early-stopping-patience", type=int, default=3)
    p.add_argument("--backup-dir", default="")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(train(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
