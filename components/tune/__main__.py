"""``python -m components.tune``: the tune stage from the command line.

Prints the summary (the values for train, each trial's values and scores) as JSON. The
training options are train's (``python -m components.train --help``), the same for
every trial; ``--trials 0`` (the default) turns tuning off.
"""

import argparse
import json
import logging

from components.common.cli import defaults
from components.tune.space import OBJECTIVES
from components.tune.tuning import tune

# train's options that every trial shares: (option dest, type). Booleans are flags.
_TRAINING_OPTIONS = (
    ("backbone", str),
    ("weights", str),
    ("image_size", int),
    ("batch_size", int),
    ("epochs", int),
    ("early_stopping_patience", int),
    ("fine_tune_epochs", int),
    ("fine_tune_learning_rate", float),
    ("warmup_epochs", int),
    ("learning_rate_schedule", str),
    ("class_weight", str),
    ("flip", str),
    ("crop_area_max", float),
    ("crop_aspect_ratio_max", float),
    ("rotation_degrees", float),
    ("brightness", float),
    ("contrast", float),
    ("precision", str),
    ("jit_compile", str),
    ("steps_per_execution", int),
    ("seed", int),
)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_search_arguments(p: argparse.ArgumentParser, default: dict) -> None:
    """What the search varies and how far: the values when it is off, and the ranges."""
    given = p.add_argument_group("the tuned settings: train's values when not searched")
    for name in ("learning_rate", "dropout", "crop_area_min"):
        given.add_argument(_option(name), type=float, default=default[name])
    given.add_argument(_option("fine_tune_layers"), type=int, default=default["fine_tune_layers"])
    ranges = p.add_argument_group("the ranges a trial draws from (low = high fixes a setting)")
    for name in ("learning_rate", "dropout", "crop_area_min"):
        for end in ("low", "high"):
            ranges.add_argument(
                _option(f"{name}_{end}"), type=float, default=default[f"{name}_{end}"]
            )
    ranges.add_argument(
        "--fine-tune-layers-choices",
        type=int,
        nargs="+",
        default=list(default["fine_tune_layers_choices"]),
        help="top backbone layer counts to pick from (-1 all); pretrained weights only",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; the defaults are those of the stage function."""
    default = defaults(tune)
    p = argparse.ArgumentParser(
        prog="python -m components.tune", description=tune.__doc__.split("\n")[0]
    )
    p.add_argument("--dataset-dir", required=True, help="directory written by create_tfrecords")
    p.add_argument(
        "--output-dir", required=True, help="where to write trials.json and each trial's run"
    )
    p.add_argument(
        "--trials", type=int, default=default["trials"], help="training runs at most; 0: off"
    )
    p.add_argument(
        "--objective",
        default=default["objective"],
        choices=tuple(OBJECTIVES),
        help="what scores a trial (of its kept epoch)",
    )
    _add_search_arguments(p, default)
    training = p.add_argument_group("training settings of every trial (see components.train)")
    for name, kind in _TRAINING_OPTIONS:
        training.add_argument(_option(name), type=kind, default=default[name])
    training.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no random variation"
    )
    training.add_argument("--right-angle-rotation", action="store_true")
    training.add_argument("--cache", action="store_true", help="keep decoded images in memory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(tune(**vars(args)), indent=2), flush=True)


if __name__ == "__main__":
    main()
