"""Hyperparameter tuning before train: a small search over phase one's learning rate, the
dropout, the augmentation's strength (``crop_area_min``) and, with pretrained weights,
how many backbone layers fine-tuning unfreezes.

A trial is a whole run of ``training.train`` with every other setting fixed, scored by
its kept epoch (see ``tuner``); KerasTuner's random search draws the values. With
``trials=0`` (the default) tuning is off: :func:`tune` returns the values it was given
without training, importing neither KerasTuner nor the training code, so a pipeline can
always run this step and feed train from it.

The output directory holds::

    trials.json      the search: objective, ranges, each trial's values and scores, the best
    trials.html      the same as a table
    trials/<id>/     each trial's model directory without its weights (settings, history,
                     curves, TensorBoard logs)
    keras_tuner/     KerasTuner's own state
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from components.common import io
from components.tune import report
from components.tune.space import TUNED, SearchSpace, check_objective

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.json"
TRIALS_PAGE = "trials.html"


def _trial_summary(trial, objective: str) -> dict:
    """One KerasTuner trial as trials.json lists it."""
    metrics = {
        name: trial.metrics.get_last_value(name)
        for name in ("val_accuracy", "val_loss")
        if trial.metrics.exists(name)
    }
    summary = {
        "trial": trial.trial_id,
        "status": str(trial.status),
        "values": dict(trial.hyperparameters.values),
        "metrics": metrics,
        "score": metrics.get(objective),
    }
    if trial.message:  # a failed trial's traceback: its last line says why
        summary["error"] = trial.message.strip().splitlines()[-1]
    return summary


def _best(summaries: list[dict], direction: str) -> dict | None:
    """The completed trial with the best score; the earliest of equals."""
    scored = [s for s in summaries if s["score"] is not None]
    if not scored:
        return None
    sign = 1 if direction == "max" else -1
    return max(scored, key=lambda s: (sign * s["score"], -int(s["trial"])))


def tune(
    dataset_dir: str,
    output_dir: str,
    trials: int = 0,
    objective: str = "val_accuracy",
    learning_rate: float = 1e-3,
    dropout: float = 0.2,
    crop_area_min: float = 0.5,
    fine_tune_layers: int = 20,
    learning_rate_low: float = 1e-4,
    learning_rate_high: float = 1e-2,
    dropout_low: float = 0.0,
    dropout_high: float = 0.5,
    crop_area_min_low: float = 0.25,
    crop_area_min_high: float = 1.0,
    fine_tune_layers_choices: Sequence[int] = (0, 20, 50, -1),
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    early_stopping_patience: int = 3,
    fine_tune_epochs: int = 5,
    fine_tune_learning_rate: float = 1e-5,
    warmup_epochs: int = 1,
    learning_rate_schedule: str = "cosine",
    class_weight: str = "none",
    augment: bool = True,
    flip: str = "horizontal",
    crop_area_max: float = 1.0,
    crop_aspect_ratio_max: float = 1.33,
    rotation_degrees: float = 0.0,
    right_angle_rotation: bool = False,
    brightness: float = 0.08,
    contrast: float = 0.15,
    precision: str = "auto",
    jit_compile: str = "auto",
    steps_per_execution: int = 0,
    cache: bool = False,
    seed: int = 42,
) -> dict:
    """Searches the tuned settings of train by training with each trial's values, and
    returns the best; with ``trials=0`` returns the given values without training.

    Args:
        dataset_dir: Directory (or gs:// URI) written by create_tfrecords.
        output_dir: Where to write the search: trials.json, trials.html and each
            trial's run (see this module's doc).
        trials: Training runs the search makes at most; 0 turns tuning off.
        objective: What scores a trial, from its kept epoch (the one with the lowest
            validation loss, the model train keeps): ``"val_accuracy"`` (higher is
            better: the measure evaluate's gate applies) or ``"val_loss"`` (lower is
            better: smoother than accuracy on a small validation split).
        learning_rate: Phase one's learning rate when tuning is off or its range is
            not searched; likewise the three below. Train's defaults.
        dropout: Dropout rate before the classification layer.
        crop_area_min: Smallest share of an image's area a random training crop keeps
            (the augmentation's strength; 1: whole images).
        fine_tune_layers: Top backbone layers the fine-tuning phase unfreezes
            (pretrained weights only; -1 all, 0 no fine-tuning phase).
        learning_rate_low: Lowest learning rate a trial draws (log scale).
        learning_rate_high: Highest learning rate a trial draws; equal to
            ``learning_rate_low`` fixes it at that value.
        dropout_low: Lowest dropout a trial draws.
        dropout_high: Highest dropout a trial draws.
        crop_area_min_low: Lowest ``crop_area_min`` a trial draws (strongest crops).
        crop_area_min_high: Highest ``crop_area_min`` a trial draws (1: whole images),
            at most ``crop_area_max``. Not searched when ``augment`` is false.
        fine_tune_layers_choices: Top backbone layer counts a trial picks from (-1:
            all, 0: no fine-tuning phase). Searched only with pretrained weights: from
            random initialisation there is no fine-tuning phase.
        backbone: What every trial trains with, as ``training.train`` takes it; so are
            the settings from here on. Fewer ``epochs`` (and ``fine_tune_epochs``)
            make a cheaper search whose ranking may differ from full-length runs.
        weights: See ``training.train``.
        image_size: See ``training.train``.
        batch_size: See ``training.train``.
        epochs: See ``training.train``.
        early_stopping_patience: See ``training.train``.
        fine_tune_epochs: See ``training.train``.
        fine_tune_learning_rate: See ``training.train``.
        warmup_epochs: See ``training.train``.
        learning_rate_schedule: See ``training.train``.
        class_weight: See ``training.train``.
        augment: See ``training.train``.
        flip: See ``training.train``.
        crop_area_max: See ``training.train``.
        crop_aspect_ratio_max: See ``training.train``.
        rotation_degrees: See ``training.train``.
        right_angle_rotation: See ``training.train``.
        brightness: See ``training.train``.
        contrast: See ``training.train``.
        precision: See ``training.train``.
        jit_compile: See ``training.train``.
        steps_per_execution: See ``training.train``.
        cache: See ``training.train``.
        seed: Every trial's seed (so trials differ only by their values) and the
            search's.

    Returns:
        ``learning_rate``, ``dropout``, ``crop_area_min``, ``fine_tune_layers``: the
        best trial's values (the given ones for settings not searched, and all of them
        with tuning off); ``objective``; ``best_trial`` and ``best_score`` (None with
        tuning off); ``searched``: each searched setting's range; ``trials``: each
        trial's ``trial`` id, ``status``, ``values``, ``metrics`` (val_accuracy,
        val_loss) and ``score``. The same is written to ``trials.json``.

    Raises:
        ValueError: for a negative ``trials``, an unknown objective, or (when
            searching) an empty or invalid range, or nothing to search.
        RuntimeError: when no trial completed.
    """
    if trials < 0:
        raise ValueError(f"trials must be 0 (tuning off) or more; got {trials}")
    check_objective(objective)
    given = {
        "learning_rate": learning_rate,
        "dropout": dropout,
        "crop_area_min": crop_area_min,
        "fine_tune_layers": fine_tune_layers,
    }
    summary = {
        **given,
        "objective": objective,
        "trials_requested": trials,
        "best_trial": None,
        "best_score": None,
        "searched": {},
        "trials": [],
    }
    if trials:
        space = SearchSpace(
            learning_rate_low=learning_rate_low,
            learning_rate_high=learning_rate_high,
            dropout_low=dropout_low,
            dropout_high=dropout_high,
            crop_area_min_low=crop_area_min_low,
            crop_area_min_high=crop_area_min_high,
            fine_tune_layers_choices=tuple(fine_tune_layers_choices),
        )
        settings = dict(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            batch_size=batch_size,
            epochs=epochs,
            early_stopping_patience=early_stopping_patience,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate,
            warmup_epochs=warmup_epochs,
            learning_rate_schedule=learning_rate_schedule,
            class_weight=class_weight,
            augment=augment,
            flip=flip,
            crop_area_max=crop_area_max,
            crop_aspect_ratio_max=crop_aspect_ratio_max,
            rotation_degrees=rotation_degrees,
            right_angle_rotation=right_angle_rotation,
            brightness=brightness,
            contrast=contrast,
            precision=precision,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
            cache=cache,
            seed=seed,
        )
        summary |= _search(dataset_dir, output_dir, space, given, settings, objective, trials)
    else:
        log.info("tuning off (trials=0): train gets %s", given)
    io.write_json(io.join(output_dir, TRIALS_FILE), summary)
    io.write_text(io.join(output_dir, TRIALS_PAGE), report.render_html(summary))
    return summary


def _search(
    dataset_dir: str,
    output_dir: str,
    space: SearchSpace,
    given: dict,
    settings: dict,
    objective: str,
    trials: int,
) -> dict:
    """Runs the search (``tune`` with trials); returns what it adds to the summary."""
    from components.train.backbones import is_pretrained
    from components.tune import tuner

    pretrained, augment = is_pretrained(settings["weights"]), settings["augment"]
    space.check(settings["crop_area_max"])
    ranges = space.ranges(pretrained, augment)
    if not ranges:
        raise ValueError(
            "nothing to search: every range is a single value (or does not apply, as "
            "fine_tune_layers without pretrained weights); widen one or set trials=0"
        )
    fixed = space.fixed(given, pretrained, augment)
    log.info("searching %s over %d trial(s) by %s; fixed: %s", ranges, trials, objective, fixed)
    direction = check_objective(objective)
    ran = tuner.run_search(
        dataset_dir, output_dir, ranges, objective, direction, trials, {**settings, **fixed}
    )
    summaries = [_trial_summary(t, objective) for t in ran]
    for trial in summaries:
        drawn = {**fixed, **trial["values"]}
        trial["values"] = {name: drawn[name] for name in TUNED}
    best = _best(summaries, direction)
    if best is None:
        raise RuntimeError(
            f"no trial completed; their status: {[t['status'] for t in summaries]} "
            f"(the trials' logs are above, their directories under {output_dir})"
        )
    log.info(
        "best trial %s: %s=%s with %s", best["trial"], objective, best["score"], best["values"]
    )
    return {
        **{name: best["values"][name] for name in TUNED},
        "best_trial": best["trial"],
        "best_score": best["score"],
        "searched": {name: list(values) for name, values in ranges.items()},
        "trials": summaries,
    }
