"""``python -m components.tune.trial``: one trial of a Vertex AI hyperparameter tuning job.

Trains with train's flags plus the values Vertex AI appends for the trial
(``--learning_rate=0.003 --dropout=0.21 ...``, the study's parameter ids), into
``--model-dir`` or else the trial's ``AIP_MODEL_DIR``, and reports the objective of the
kept epoch to Vertex AI with cloudml-hypertune, which the study's metric spec names::

    python -m components.tune.trial --objective=val_accuracy --dataset-dir=gs://b/data \\
        --backbone=EfficientNetB0 ... --learning_rate=0.003 --dropout=0.21
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from components.tune.space import OBJECTIVES, TUNED


def _dashed(arg: str) -> str:
    """``--learning_rate=x`` (a study parameter id) as train's ``--learning-rate=x``."""
    for name in TUNED:
        if arg == f"--{name}" or arg.startswith(f"--{name}="):
            return arg.replace(name, name.replace("_", "-"), 1)
    return arg


def parse_args(argv: list[str] | None = None) -> tuple[str, argparse.Namespace]:
    """The objective, and train's arguments (``components.train``'s command line)."""
    from components.train.__main__ import parse_args as parse_train_args

    p = argparse.ArgumentParser(
        prog="python -m components.tune.trial",
        description="One trial of a Vertex AI hyperparameter tuning job; the other "
        "options are python -m components.train's.",
    )
    p.add_argument("--objective", default="val_accuracy", choices=tuple(OBJECTIVES))
    p.add_argument(
        "--model-dir",
        default=os.environ.get("AIP_MODEL_DIR", ""),
        help="where the trial's model goes; default: $AIP_MODEL_DIR, which Vertex AI sets",
    )
    own, rest = p.parse_known_args(argv)
    if not own.model_dir:
        p.error("--model-dir is required where AIP_MODEL_DIR is not set")
    train_args = parse_train_args([_dashed(a) for a in rest] + ["--model-dir", own.model_dir])
    return own.objective, train_args


def report(objective: str, metrics: dict) -> None:
    """Reports the trial's objective to the Vertex AI study (cloudml-hypertune)."""
    import hypertune

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=objective,
        metric_value=metrics[objective],
        global_step=metrics["epochs_run"],
    )


def main(argv: list[str] | None = None) -> None:
    objective, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from components.train.training import train

    metrics = train(**vars(args))
    report(objective, metrics)
    print(json.dumps({"objective": objective, **metrics}, indent=2), flush=True)


if __name__ == "__main__":
    main()
