"""Keras callbacks of the train stage that Keras does not ship: per-epoch facts in the
logs, early stopping that survives a restart, backups shared by several workers."""

from __future__ import annotations

import time

import keras
import numpy as np


class EpochFacts(keras.callbacks.Callback):
    """Adds ``phase``, ``learning_rate`` and ``epoch_seconds`` to each epoch's logs.

    Place it first among the callbacks: those after it (CSVLogger, TensorBoard, the
    History) then record these values with the metrics.
    """

    def __init__(self, phase: int):
        super().__init__()
        self.phase = phase
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["phase"] = self.phase
        logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = time.monotonic() - self._start


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on ``val_loss`` that counts the epochs of this phase that a
    preempted run already completed, so a restart keeps its patience and best value."""

    def __init__(
        self, patience: int, completed: list[tuple[int, float]], start_from_epoch: int = 0
    ):
        """
        Args:
            patience: Epochs without improvement before stopping.
            completed: ``(epoch, val_loss)`` of the phase's epochs already run.
            start_from_epoch: The first epoch (counted across phases, as ``fit`` counts)
                whose validation loss early stopping watches.
        """
        super().__init__(monitor="val_loss", patience=patience, start_from_epoch=start_from_epoch)
        self.completed = completed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for epoch, val_loss in self.completed:
            super().on_epoch_end(epoch, {"val_loss": val_loss})
        # Any stop found here was already acted on by the run that logged these epochs.
        self.model.stop_training = False
        self.stopped_epoch = 0


def stopped_early(val_losses: list[float], patience: int, skip: int = 0) -> bool:
    """Whether EarlyStopping(patience) on these epochs' ``val_loss`` stopped training: the
    same rule as Keras (no improvement on the best value for ``patience`` epochs), the
    first ``skip`` epochs unwatched (its ``start_from_epoch``)."""
    if patience <= 0:
        return False
    best, wait = np.inf, 0
    for value in val_losses[skip:]:
        wait += 1
        if value < best:
            best, wait = value, 0
        elif wait >= patience:
            return True
    return False


class SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for one of several workers: every worker restores the chief's
    backup in ``backup_dir``, and writes its own backups to ``write_dir`` (the same
    directory on the chief, a temporary one on the others). Backups are not deleted at
    the end: the caller removes them once the run's outputs are safe."""

    def __init__(self, backup_dir: str, write_dir: str):
        super().__init__(write_dir, delete_checkpoint=False)
        self._chief_backup = keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False)

    def set_model(self, model):
        super().set_model(model)
        self._chief_backup.set_model(model)

    def on_train_begin(self, logs=None):
        self._chief_backup.on_train_begin(logs)
