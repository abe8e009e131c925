"""The local search with KerasTuner: an oracle draws the tuned settings, and a trial is a
whole run of ``training.train`` with them.

Imported only when a search runs (it loads KerasTuner and TensorFlow); ``tuning.tune``
with no trials never gets here.
"""

from __future__ import annotations

import logging

import keras
import keras_tuner

from components.common import io
from components.common.model_dir import MODEL_FILE
from components.train.training import train

log = logging.getLogger(__name__)

# What a scored trial's model directory no longer needs: the pipeline trains the chosen
# values again in train, so the trial's settings, history, curves and TensorBoard logs
# stay and its weights go.
DROPPED_AFTER_SCORING = (MODEL_FILE, "checkpoints")


def hyperparameters(ranges: dict[str, tuple]) -> keras_tuner.HyperParameters:
    """KerasTuner's search space for ``SearchSpace.ranges``."""
    hp = keras_tuner.HyperParameters()
    for name, values in ranges.items():
        if name == "fine_tune_layers":
            # Not ordered: -1 (the whole backbone) is the largest choice, not the smallest.
            hp.Choice(name, list(values), ordered=False)
        else:
            # A learning rate acts by orders of magnitude: drawn on a log scale.
            sampling = "log" if name == "learning_rate" else "linear"
            hp.Float(name, values[0], values[1], sampling=sampling)
    return hp


def random_search_oracle(
    ranges: dict[str, tuple], objective: str, direction: str, trials: int, seed: int
) -> keras_tuner.Oracle:
    """The oracle of a local search: random search over ``ranges``.

    Random rather than Bayesian optimisation: a trial is a whole training run, so a
    search affords a handful of them, and KerasTuner's Bayesian oracle draws its first
    3 x (number of settings) trials at random anyway (12 for the four settings here);
    it also needs scikit-learn and SciPy, which the train image does not carry.
    """
    return keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective(objective, direction),
        max_trials=trials,
        seed=seed,
        hyperparameters=hyperparameters(ranges),
        allow_new_entries=False,
        tune_new_entries=False,
    )


class TrainingTuner(keras_tuner.Tuner):
    """A KerasTuner ``Tuner`` whose trial is one ``training.train`` run.

    Each trial trains with the fixed settings and its drawn values into
    ``<trials_dir>/<trial id>`` and is scored by the metrics of its kept epoch (the best
    by validation loss), which is the model train would keep with those values.

    Args:
        oracle: The oracle that draws each trial's values.
        dataset_dir: The create_tfrecords dataset every trial trains on.
        trials_dir: Where each trial's model directory goes.
        settings: ``training.train``'s other arguments, the same for every trial.
        **kwargs: ``keras_tuner.Tuner``'s (``directory``, ``project_name``, ...).
    """

    def __init__(self, oracle, dataset_dir: str, trials_dir: str, settings: dict, **kwargs):
        super().__init__(oracle, **kwargs)
        self.dataset_dir = dataset_dir
        self.trials_dir = trials_dir
        self.settings = settings

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        """Trains with the trial's values; returns its kept epoch's val_accuracy and
        val_loss, the objective among them."""
        values = trial.hyperparameters.values
        model_dir = io.join(self.trials_dir, trial.trial_id)
        log.info("trial %s: %s", trial.trial_id, values)
        try:
            metrics = train(self.dataset_dir, model_dir, **{**self.settings, **values})
        except ValueError as e:
            # A setting train refuses fails every trial alike: stop the search now
            # rather than after KerasTuner's consecutive failures.
            raise keras_tuner.errors.FatalValueError(f"trial {trial.trial_id}: {e}") from e
        except Exception:
            # KerasTuner records the failed trial and goes on, printing nothing.
            log.exception("trial %s failed", trial.trial_id)
            raise
        finally:
            # Each trial builds a new model; without this Keras keeps every earlier one.
            keras.backend.clear_session()
        for name in DROPPED_AFTER_SCORING:
            io.remove(io.join(model_dir, name))
        return {"val_accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"]}


def run_search(
    dataset_dir: str,
    output_dir: str,
    ranges: dict[str, tuple],
    objective: str,
    direction: str,
    trials: int,
    settings: dict,
) -> list:
    """Runs the search; returns KerasTuner's trials in the order they ran.

    Args:
        dataset_dir: The create_tfrecords dataset.
        output_dir: Gets ``keras_tuner/`` (KerasTuner's own state) and ``trials/`` (each
            trial's model directory, without its weights).
        ranges: ``SearchSpace.ranges``: what the oracle draws.
        objective: The metric that scores a trial; ``direction``: ``"max"`` or ``"min"``.
        trials: Trials at most (fewer if the oracle runs out of new values).
        settings: ``training.train``'s other arguments, ``seed`` among them (the oracle's
            seed too), the same for every trial so that only the drawn values differ.
    """
    tuner = TrainingTuner(
        random_search_oracle(ranges, objective, direction, trials, settings["seed"]),
        dataset_dir=dataset_dir,
        trials_dir=io.join(output_dir, "trials"),
        settings=settings,
        directory=output_dir,
        project_name="keras_tuner",
        # A search starts afresh: KerasTuner would otherwise resume the trials of an
        # earlier search it finds there, whatever that one's settings were.
        overwrite=True,
    )
    tuner.search()
    return sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
