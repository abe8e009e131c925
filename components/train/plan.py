"""The plan of a training run, fixed before its first step: where it runs (strategy,
workers), how (precision, XLA, batch and epoch sizes) and its phases.

Nothing here trains or writes: :func:`make_plan` reads the dataset's split sizes and the
machine's GPUs, checks the settings, and returns a frozen :class:`TrainingPlan` that the
rest of the run only reads.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import keras
import tensorflow as tf

from components.common import schema
from components.train import backbones, data, distribution, hardware

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One ``fit`` of the run: how many epochs, at what learning rate, training what.

    Epochs are numbered across phases, and phase two starts where phase one stopped,
    which early stopping can bring forward: a phase holds how many epochs it runs at
    most, and is run from the epoch its caller gives.

    Attributes:
        number: 1 or 2, as each epoch's log row records it.
        epochs: Epochs to run at most; fewer with early stopping, none for a phase that
            has nothing to train.
        learning_rate: What the phase's Adam optimizer gets: a rate or a schedule.
        peak_learning_rate: The highest rate of ``learning_rate``.
        warmup_epochs: Epochs of linear warm-up at the start of ``learning_rate``.
        unfreeze_layers: Top backbone layers made trainable before the phase (-1 for
            all, as ``backbones.unfreeze_top_layers`` takes it); None keeps what the model
            was built with (phase one: the new head on the frozen backbone of a
            pretrained model, the whole network from random weights).
        schedule: How the rate changes: ``"cosine"`` (warm-up, then cosine decay to 0
            by the phase's last epoch), ``"constant"`` or ``"plateau"`` (halved when the
            validation loss stops improving).
    """

    number: int
    epochs: int
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
    peak_learning_rate: float
    warmup_epochs: int
    unfreeze_layers: int | None
    schedule: str = "cosine"

    @property
    def early_stopping_from(self) -> int:
        """Epochs of the phase before early stopping watches the validation loss: the
        first half under a cosine schedule, whose rate is still high there, so a stalling
        validation loss is noise at that rate rather than convergence; none else."""
        return self.epochs // 2 if self.schedule == "cosine" else 0


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How a run trains, decided once before its first step.

    Attributes:
        strategy: The tf.distribute strategy (see ``distribution``).
        chief: Whether this worker writes the shared outputs.
        workers: Training workers, chief included.
        multi_worker: Whether the strategy spans several workers.
        replicas: Replicas in sync (GPUs over all workers).
        batch_size: Images per batch on each replica.
        global_batch: Images per step, over all replicas.
        image_size: Side of the square input, in pixels.
        precision: The Keras dtype policy the model trains in.
        jit_compile: Whether the train step is compiled with XLA.
        steps_per_execution: Batches per compiled call.
        steps_per_epoch: Batches an epoch takes from the endless training stream.
        pretrained: Whether the backbone starts from pretrained weights.
        early_stopping_patience: Epochs without validation-loss improvement before a
            phase stops; 0 for no early stopping.
        first_epoch: The epoch the run starts at: ``initial_epoch``, or the length of
            the initial model's history.
        phase_one: The new head on the frozen backbone, or the whole network.
        phase_two: Fine-tuning of the backbone's top layers; None without.
    """

    strategy: tf.distribute.Strategy
    chief: bool
    workers: int
    multi_worker: bool
    replicas: int
    batch_size: int
    global_batch: int
    image_size: int
    precision: str
    jit_compile: bool
    steps_per_execution: int
    steps_per_epoch: int
    pretrained: bool
    early_stopping_patience: int
    first_epoch: int
    phase_one: Phase
    phase_two: Phase | None


def _check_settings(
    *,
    batch_size: int,
    image_size: int,
    epochs: int,
    fine_tune_epochs: int,
    warmup_epochs: int,
    initial_epoch: int,
    early_stopping_patience: int,
    fine_tune_layers: int,
) -> None:
    """Raises ValueError for a setting of ``training.train`` out of its range."""
    for name, value in (
        ("batch_size", batch_size),
        ("image_size", image_size),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {value}")
    for name, value in (
        ("epochs", epochs),
        ("fine_tune_epochs", fine_tune_epochs),
        ("warmup_epochs", warmup_epochs),
        ("initial_epoch", initial_epoch),
        ("early_stopping_patience", early_stopping_patience),
    ):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more; got {value}")
    if fine_tune_layers < -1:
        raise ValueError(f"fine_tune_layers must be -1 (all), 0 or more; got {fine_tune_layers}")


SCHEDULES = ("cosine", "constant", "plateau")


def warmup_cosine_schedule(
    learning_rate: float, epochs: int, warmup_epochs: int, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """A phase's learning rate: linear warm-up from 0 to ``learning_rate`` over
    ``warmup_epochs``, then cosine decay to 0 over the remaining epochs."""
    warmup_steps = min(warmup_epochs, epochs) * steps_per_epoch
    decay_steps = max(1, (epochs - min(warmup_epochs, epochs)) * steps_per_epoch)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, warmup_target=learning_rate, warmup_steps=warmup_steps
    )


def _phase_one(
    epochs: int,
    learning_rate: float,
    schedule: str,
    warmup_epochs: int,
    steps_per_epoch: int,
) -> Phase:
    """Phase one (the new head, or the whole network from random weights) of ``epochs``
    at ``learning_rate`` along ``schedule``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine" and epochs:
        rate = warmup_cosine_schedule(learning_rate, epochs, warmup_epochs, steps_per_epoch)
    else:
        rate = learning_rate
    return Phase(
        number=1,
        epochs=epochs,
        learning_rate=rate,
        peak_learning_rate=learning_rate,
        warmup_epochs=warmup_epochs if schedule == "cosine" else 0,
        unfreeze_layers=None,
        schedule=schedule,
    )


def _steps_per_execution(
    requested: int, steps_per_epoch: int, capabilities: list[tuple[int, int]], multi_worker: bool
) -> int:
    """``hardware.resolve_steps_per_execution``, and 1 under several workers."""
    steps = hardware.resolve_steps_per_execution(requested, steps_per_epoch, capabilities)
    if multi_worker and steps > 1:
        # Keras 3's multi-step loop fails under multi-worker collectives.
        log.info("steps_per_execution %d -> 1 with several workers", steps)
        return 1
    return steps


def make_plan(
    strategy: tf.distribute.Strategy,
    tf_config: dict,
    dataset_dir: str,
    *,
    weights: str,
    image_size: int,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    early_stopping_patience: int,
    fine_tune_layers: int,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    warmup_epochs: int,
    learning_rate_schedule: str,
    precision: str,
    jit_compile: str,
    steps_per_execution: int,
    first_epoch: int,
) -> TrainingPlan:
    """The plan of a run of ``training.train`` (see there for the settings).

    Args:
        strategy: The run's strategy, made from ``tf_config``.
        tf_config: The run's ``TF_CONFIG`` (empty for one machine).
        dataset_dir: The create_tfrecords dataset: its train split's size and files.
        first_epoch: The epoch the run starts at: ``initial_epoch``, or when that is 0
            the length of the initial model's history.

    Raises:
        ValueError: for a setting out of its range (``first_epoch`` is checked as
            ``initial_epoch``, which it equals whenever it could be negative), an
            unknown precision or jit_compile, a negative steps_per_execution, or no
            epoch to train.
    """
    _check_settings(
        batch_size=batch_size,
        image_size=image_size,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        warmup_epochs=warmup_epochs,
        initial_epoch=first_epoch,
        early_stopping_patience=early_stopping_patience,
        fine_tune_layers=fine_tune_layers,
    )
    capabilities = hardware.gpu_compute_capabilities()
    policy = hardware.resolve_precision(precision, capabilities)
    jit = hardware.resolve_jit_compile(jit_compile, capabilities)
    multi_worker = distribution.is_multi_worker(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = batch_size * replicas
    # The training stream is endless: Keras takes steps_per_epoch batches per epoch from
    # one iterator, so no epoch waits for the pipeline to restart, and every worker of
    # a multi-worker run takes the same number of steps.
    one_pass = data.steps_per_epoch(schema.split_size(dataset_dir, "train"), global_batch)
    spe = _steps_per_execution(steps_per_execution, one_pass, capabilities, multi_worker)
    # Keras runs whole calls of spe steps: the epoch is what they take from the stream.
    steps_per_epoch = spe * math.ceil(one_pass / spe)

    pretrained = backbones.is_pretrained(weights)
    fine_tune = pretrained and fine_tune_layers != 0 and fine_tune_epochs > 0
    if epochs <= first_epoch and not fine_tune:
        raise ValueError(
            f"nothing to train: epochs ({epochs}) must be above the initial epoch "
            f"({first_epoch}); like Keras fit, epochs is the epoch training ends at"
        )
    return TrainingPlan(
        strategy=strategy,
        chief=distribution.is_chief(tf_config),
        workers=distribution.num_workers(tf_config),
        multi_worker=multi_worker,
        replicas=replicas,
        batch_size=batch_size,
        global_batch=global_batch,
        image_size=image_size,
        precision=policy,
        jit_compile=jit,
        steps_per_execution=spe,
        steps_per_epoch=steps_per_epoch,
        pretrained=pretrained,
        early_stopping_patience=early_stopping_patience,
        first_epoch=first_epoch,
        phase_one=_phase_one(
            max(0, epochs - first_epoch),
            learning_rate,
            learning_rate_schedule,
            warmup_epochs,
            steps_per_epoch,
        ),
        phase_two=Phase(
            number=2,
            epochs=fine_tune_epochs,
            learning_rate=warmup_cosine_schedule(
                fine_tune_learning_rate, fine_tune_epochs, warmup_epochs, steps_per_epoch
            ),
            peak_learning_rate=fine_tune_learning_rate,
            warmup_epochs=warmup_epochs,
            unfreeze_layers=fine_tune_layers,
        )
        if fine_tune
        else None,
    )
