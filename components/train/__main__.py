"""``python -m components.train``: the train stage from the command line.

Under several workers, start it on every machine with the same arguments and each
machine's ``TF_CONFIG`` (or, on Vertex AI, the ``CLUSTER_SPEC`` it sets).
"""

import argparse
import json
import logging

from components.common.cli import defaults
from components.train.augmentation import FLIPS
from components.train.hardware import JIT_COMPILE, PRECISIONS
from components.train.inputs import CLASS_WEIGHTS
from components.train.plan import SCHEDULES
from components.train.training import train


def _add_augmentation_arguments(p: argparse.ArgumentParser, default: dict) -> None:
    """The options of ``augmentation.Augmentation`` (training images only)."""
    augmentation = p.add_argument_group("augmentation (training images only)")
    augmentation.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no random variation"
    )
    augmentation.add_argument("--flip", default=default["flip"], choices=FLIPS)
    augmentation.add_argument(
        "--crop-area-min",
        type=float,
        default=default["crop_area_min"],
        help="smallest share of the image's area a random crop keeps (1: whole images)",
    )
    augmentation.add_argument("--crop-area-max", type=float, default=default["crop_area_max"])
    augmentation.add_argument(
        "--crop-aspect-ratio-max", type=float, default=default["crop_aspect_ratio_max"]
    )
    augmentation.add_argument(
        "--rotation-degrees",
        type=float,
        default=default["rotation_degrees"],
        help="random rotation within +/- this many degrees",
    )
    augmentation.add_argument(
        "--right-angle-rotation",
        action="store_true",
        help="also rotate by a random multiple of 90 degrees",
    )
    augmentation.add_argument("--brightness", type=float, default=default["brightness"])
    augmentation.add_argument("--contrast", type=float, default=default["contrast"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; the defaults are those of the stage function."""
    default = defaults(train)
    p = argparse.ArgumentParser(
        prog="python -m components.train", description=train.__doc__.split("\n")[0]
    )
    p.add_argument("--dataset-dir", required=True, help="directory written by create_tfrecords")
    p.add_argument("--model-dir", required=True, help="where to write the model directory")
    p.add_argument("--backbone", default=default["backbone"])
    p.add_argument(
        "--weights", default=default["weights"], help='"imagenet", "none" or a weights file'
    )
    p.add_argument("--image-size", type=int, default=default["image_size"])
    p.add_argument(
        "--batch-size",
        type=int,
        default=default["batch_size"],
        help="images per batch on each replica (GPU)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=default["epochs"],
        help="epoch phase one ends at (Keras fit semantics)",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=default["learning_rate"],
        help="phase one's learning rate",
    )
    p.add_argument("--dropout", type=float, default=default["dropout"])
    p.add_argument(
        "--early-stopping-patience",
        type=int,
        default=default["early_stopping_patience"],
        help="0 disables it",
    )
    p.add_argument(
        "--fine-tune-layers",
        type=int,
        default=default["fine_tune_layers"],
        help="top backbone layers phase two unfreezes (pretrained weights only); -1 all, 0 none",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=default["fine_tune_epochs"],
        help="epochs of phase two",
    )
    p.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=default["fine_tune_learning_rate"],
        help="phase two's peak rate",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=default["warmup_epochs"],
        help="phase two's linear warm-up",
    )
    p.add_argument(
        "--learning-rate-schedule",
        default=default["learning_rate_schedule"],
        choices=SCHEDULES,
        help="phase one's learning rate",
    )
    p.add_argument(
        "--class-weight",
        default=default["class_weight"],
        choices=CLASS_WEIGHTS,
        help="balanced: classes weigh by the inverse of their share of the train split",
    )
    _add_augmentation_arguments(p, default)
    p.add_argument("--precision", default=default["precision"], choices=PRECISIONS)
    p.add_argument("--jit-compile", default=default["jit_compile"], choices=JIT_COMPILE, help="XLA")
    p.add_argument(
        "--steps-per-execution",
        type=int,
        default=default["steps_per_execution"],
        help="0: 1 on CPU, 32 on a GPU",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="keep decoded images in memory after the first epoch (splits that fit in memory)",
    )
    p.add_argument(
        "--initial-model",
        default=default["initial_model"],
        help="model directory of a previous run to continue",
    )
    p.add_argument(
        "--initial-epoch",
        type=int,
        default=default["initial_epoch"],
        help="0: the initial model's epoch count",
    )
    p.add_argument(
        "--backup-dir",
        default=default["backup_dir"],
        help="durable resume state; default <model-dir>/backup",
    )
    p.add_argument(
        "--curves-path", default=default["curves_path"], help="also write the HTML curves there"
    )
    p.add_argument("--seed", type=int, default=default["seed"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(train(**vars(args)), indent=2), flush=True)


if __name__ == "__main__":
    main()
