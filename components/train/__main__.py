"""``python -m components.train``: the train stage from the command line.

Under several workers, start it on every machine with the same arguments and each
machine's ``TF_CONFIG`` (or, on Vertex AI, the ``CLUSTER_SPEC`` it sets).
"""

import argparse
import dataclasses
import json
import logging

from components.common import cli
from components.train.augmentation import Augmentation
from components.train.training import CHOICES, train

# The switch and the options of ``augmentation.Augmentation`` (training images only).
AUGMENTATION = ("augment", *(field.name for field in dataclasses.fields(Augmentation)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line: a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``)."""
    p = argparse.ArgumentParser(
        prog="python -m components.train", description=train.__doc__.split("\n")[0]
    )
    augmentation = p.add_argument_group("augmentation (training images only)")
    for parser, names in (
        (p, cli.parameter_names(train, leaving_out=AUGMENTATION)),
        (augmentation, AUGMENTATION),
    ):
        cli.add_function_arguments(parser, train, names, choices=CHOICES, fill_defaults=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Trains from the command line; prints the kept epoch's metrics as JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(train(**vars(args)), indent=2), flush=True)


if __name__ == "__main__":
    main()
