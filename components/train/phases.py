"""One phase of training: compile the model, then ``fit`` it with the callbacks that
log each epoch, keep the best weights and back the phase up, from where a preempted
attempt stopped."""

from __future__ import annotations

import logging
import warnings

import keras

from components.common import io
from components.train import callbacks, distribution
from components.train.history import EpochLog, Rows, best_val_loss
from components.train.inputs import Datasets
from components.train.plan import Phase, TrainingPlan
from components.train.resume import RunDirs, backed_up_epoch

log = logging.getLogger(__name__)


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool,
    steps_per_execution: int,
) -> None:
    """Compiles ``model`` for sparse categorical labels, with Adam and an accuracy metric."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    # Built now rather than inside the first traced step, which TensorFlow would then
    # trace a second time (the first epoch's compile time halves).
    model.optimizer.build(model.trainable_variables)


def load_weights(model: keras.Model, path: str) -> None:
    """Loads layer weights saved from the other phase's model.

    The file may hold another optimizer's state (phase one's optimizer tracks the
    head only); the layers are what counts, so Keras' note that it skips the optimizer
    is left out.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def restore_best_weights(model: keras.Model, dirs: RunDirs) -> None:
    """Loads the weights of the run's best epoch so far, if one was checkpointed."""
    if io.exists(dirs.best_weights):
        load_weights(model, dirs.best_weights)


def _completed_epochs(
    rows: Rows, phase: int, first_epoch: int, end_epoch: int
) -> list[tuple[int, float]]:
    """``(epoch, val_loss)`` of the phase's epochs that the epoch log holds."""
    return [
        (e, rows[e]["val_loss"])
        for e in sorted(rows)
        if rows[e].get("phase") == phase and first_epoch <= e < end_epoch
    ]


def _phase_callbacks(
    phase: Phase,
    dirs: RunDirs,
    best_so_far: float | None,
    completed: list[tuple[int, float]],
    early_stopping_patience: int,
    first_epoch: int,
) -> list[keras.callbacks.Callback]:
    """The callbacks of one phase's ``fit``, in the order they must run."""
    phase_callbacks: list[keras.callbacks.Callback] = [
        callbacks.EpochFacts(phase.number),
        keras.callbacks.CSVLogger(dirs.epoch_log, append=True),
        keras.callbacks.ModelCheckpoint(
            dirs.best_weights,
            monitor="val_loss",
            mode="min",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.TensorBoard(io.join(dirs.own_model_dir, "logs")),
    ]
    if phase.schedule == "plateau":
        # Halved after half the early-stopping patience without progress: early stopping
        # then still sees the lower rate at work before it ends the phase.
        patience = max(1, early_stopping_patience // 2) if early_stopping_patience else 2
        phase_callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=0.5,
                patience=patience,
                min_lr=phase.peak_learning_rate / 64,
            )
        )
    if early_stopping_patience > 0:
        phase_callbacks.append(
            callbacks.ResumableEarlyStopping(
                early_stopping_patience, completed, first_epoch + phase.early_stopping_from
            )
        )
    # Last, so an epoch is backed up only once its log row and checkpoint exist.
    phase_callbacks.append(
        callbacks.SharedBackupAndRestore(
            dirs.phase_backup(phase.number), dirs.own_phase_backup(phase.number)
        )
    )
    return phase_callbacks


def run_phase(
    model: keras.Model,
    phase: Phase,
    first_epoch: int,
    plan: TrainingPlan,
    datasets: Datasets,
    dirs: RunDirs,
    epoch_log: EpochLog,
) -> None:
    """Compiles ``model`` for ``phase`` and fits its epochs from ``first_epoch``, from
    where a preempted attempt stopped; nothing if that attempt finished the phase.

    What trains is the caller's to set before (``trainable``): compiling builds the
    optimizer for the trainable weights of the moment.
    """
    end_epoch = first_epoch + phase.epochs
    rows = epoch_log.rows()
    completed = _completed_epochs(rows, phase.number, first_epoch, end_epoch)
    if completed and (
        completed[-1][0] + 1 >= end_epoch
        or callbacks.stopped_early(
            [v for _, v in completed], plan.early_stopping_patience, phase.early_stopping_from
        )
    ):
        log.info("phase %d already complete (epoch log): not training it again", phase.number)
        return
    resume_at = backed_up_epoch(dirs.phase_backup(phase.number))
    if resume_at is not None:
        log.info("phase %d: resuming from its backup at epoch %d", phase.number, resume_at + 1)
    with plan.strategy.scope():
        compile_model(model, phase.learning_rate, plan.jit_compile, plan.steps_per_execution)
    if plan.multi_worker:
        distribution.prepare_multi_worker_fit(model, plan.strategy, plan.image_size)
    phase_callbacks = _phase_callbacks(
        phase, dirs, best_val_loss(rows), completed, plan.early_stopping_patience, first_epoch
    )
    # Keras keeps the epoch a BackupAndRestore restored on the model (a private
    # attribute, with no public way to reset it), and a restore in phase one would
    # otherwise also move phase two's start.
    model._initial_epoch = None
    model.fit(
        datasets.train,
        validation_data=datasets.valid,
        validation_steps=datasets.validation_steps,
        class_weight=datasets.class_weight,
        initial_epoch=first_epoch,
        epochs=end_epoch,
        steps_per_epoch=plan.steps_per_epoch,
        callbacks=phase_callbacks,
        shuffle=False,  # the training stream shuffles itself
        verbose=2,
    )
