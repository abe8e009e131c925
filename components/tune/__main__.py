"""``python -m components.tune``: the tune stage from the command line.

Prints the summary (the values for train, each trial's values and scores) as JSON. The
training options are train's (``python -m components.train --help``), the same for
every trial; ``--trials 0`` (the default) turns tuning off. Like ``tune`` with tuning
off, the command line loads no training code.
"""

import argparse
import json
import logging

from components.common import cli
from components.tune.space import OBJECTIVES, TUNED
from components.tune.tuning import tune


def _groups() -> dict[str, list[str]]:
    """``tune``'s parameters by what they set: the search's own, the tuned settings, the
    ranges the search draws from, and train's other settings (from ``backbone`` on)."""
    names = cli.parameter_names(tune)
    training = [name for name in names[names.index("backbone") :] if name != "seed"]
    ranges = [name for name in names if name.endswith(("_low", "_high", "_choices"))]
    own = [name for name in names if name not in (*TUNED, *ranges, *training)]
    return {"own": own, "tuned": list(TUNED), "ranges": ranges, "training": training}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line: a flag for each parameter of the stage function, which
    types, documents and defaults it (``common.cli``)."""
    p = argparse.ArgumentParser(
        prog="python -m components.tune", description=tune.__doc__.split("\n")[0]
    )
    groups = _groups()
    cli.add_function_arguments(
        p, tune, groups["own"], choices={"objective": tuple(OBJECTIVES)}, fill_defaults=True
    )
    for name, description in (
        ("tuned", "the tuned settings: train's values when not searched"),
        ("ranges", "the ranges a trial draws from (low = high fixes a setting)"),
        ("training", "training settings of every trial (python -m components.train --help)"),
    ):
        group = p.add_argument_group(description)
        cli.add_function_arguments(group, tune, groups[name], fill_defaults=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Tunes from the command line; prints the summary as JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(tune(**vars(args)), indent=2), flush=True)


if __name__ == "__main__":
    main()
