"""Where a training run starts from, and the directories it writes and resumes from.

A run continues either a previous run's model (``initial_model``: its weights and its
history up to ``initial_epoch``) or, after preemption, its own earlier attempt, from the
durable ``backup_dir``: a BackupAndRestore directory per phase, the epoch log
(``history.csv``), and once phase one is done its weights and a marker, so a restart
goes straight to phase two. Each worker writes its own copies (the chief the shared
directories, the others temporary ones) and every worker resumes from the chief's.
"""

from __future__ import annotations

import dataclasses

import keras

from components.common import io
from components.common.model_dir import HISTORY_FILE, read_config
from components.train import distribution
from components.train.history import Rows, history_rows, read_history

BEST_WEIGHTS = "best.weights.h5"
PHASE_ONE_WEIGHTS = "phase1.weights.h5"
PHASE_ONE_MARKER = "phase1.json"


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """Where a run's epochs start.

    Attributes:
        epoch: The first epoch of the run (Keras ``fit``'s ``initial_epoch``).
        rows: The initial model's epoch rows before it, which head this run's history.
    """

    epoch: int
    rows: Rows


def _check_initial_model(config: dict, backbone: str, labels: list[str], image_size: int) -> None:
    """Raises ValueError unless a previous run's model has this run's network."""
    expected = {"backbone": backbone, "image_size": image_size, "labels": labels}
    found = {key: config.get(key) for key in expected}
    if found != expected:
        differences = ", ".join(
            f"{key}: {found[key]!r} there, {expected[key]!r} here"
            for key in expected
            if found[key] != expected[key]
        )
        raise ValueError(f"initial_model does not match this run ({differences})")


def read_starting_point(
    initial_model: str, initial_epoch: int, backbone: str, labels: list[str], image_size: int
) -> StartingPoint:
    """The first epoch of a run and the history before it.

    Without ``initial_model`` the run starts at ``initial_epoch`` with no history; with
    one, at ``initial_epoch`` or, when that is 0, at the end of the model's history.

    Raises:
        ValueError: if ``initial_model`` has another backbone, image size or labels.
    """
    if not initial_model:
        return StartingPoint(initial_epoch, {})
    previous = read_config(initial_model)
    _check_initial_model(previous, backbone, labels, image_size)
    previous_history = previous.get("history", {})
    epoch = initial_epoch or len(previous_history.get("loss", []))
    return StartingPoint(epoch, history_rows(previous_history, epoch))


@dataclasses.dataclass(frozen=True)
class RunDirs:
    """The directories of a run, shared and this worker's own.

    Attributes:
        model_dir: The model directory the chief writes.
        backup_dir: The durable directory the chief backs the run up to.
        own_model_dir: Where this worker writes its model directory: ``model_dir`` on
            the chief, a temporary directory elsewhere.
        own_backup_dir: Where this worker writes its backups, likewise.
    """

    model_dir: str
    backup_dir: str
    own_model_dir: str
    own_backup_dir: str

    @property
    def best_weights(self) -> str:
        """This worker's weights of the best epoch so far (ModelCheckpoint's file)."""
        return io.join(self.own_model_dir, "checkpoints", BEST_WEIGHTS)

    @property
    def epoch_log(self) -> str:
        """This worker's epoch log (CSVLogger's file)."""
        return io.join(self.own_backup_dir, HISTORY_FILE)

    @property
    def phase_one_weights(self) -> str:
        """The chief's backup of the weights phase two starts from."""
        return io.join(self.backup_dir, PHASE_ONE_WEIGHTS)

    def phase_backup(self, phase: int) -> str:
        """The chief's BackupAndRestore directory of a phase: what every worker resumes."""
        return io.join(self.backup_dir, f"phase{phase}")

    def own_phase_backup(self, phase: int) -> str:
        """This worker's BackupAndRestore directory of a phase: where it backs up to."""
        return io.join(self.own_backup_dir, f"phase{phase}")


def make_run_dirs(model_dir: str, backup_dir: str, chief: bool) -> RunDirs:
    """Creates this worker's directories; a worker other than the chief starts from the
    chief's best weights so far, if a preempted attempt left some."""
    # This worker's own directories: the shared ones on the chief, scratch elsewhere.
    dirs = RunDirs(
        model_dir=model_dir,
        backup_dir=backup_dir,
        own_model_dir=distribution.worker_dir(model_dir, chief, "train-model"),
        own_backup_dir=distribution.worker_dir(backup_dir, chief, "train-backup"),
    )
    io.makedirs(io.join(dirs.own_model_dir, "checkpoints"))
    io.makedirs(dirs.own_backup_dir)
    shared_best = io.join(model_dir, "checkpoints", BEST_WEIGHTS)
    if not chief and io.exists(shared_best):
        io.write_bytes(dirs.best_weights, io.read_bytes(shared_best))
    return dirs


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """What a preempted attempt of this run left in ``backup_dir``.

    Attributes:
        prior_rows: Its epoch rows (both phases).
        phase_one_end: The epoch phase one ended at, if the attempt finished phase one
            of a run that fine-tunes; its weights are then in ``PHASE_ONE_WEIGHTS``.
    """

    prior_rows: Rows
    phase_one_end: int | None


def read_resume_state(backup_dir: str, fine_tune: bool) -> ResumeState:
    """What a preempted attempt left in ``backup_dir``; nothing for a new run.

    Every worker reads it before any collective step: the chief cannot write again
    before all workers have joined the next epoch.
    """
    marker_path = io.join(backup_dir, PHASE_ONE_MARKER)
    marker = io.read_json(marker_path) if fine_tune and io.exists(marker_path) else None
    return ResumeState(
        prior_rows=read_history(io.join(backup_dir, HISTORY_FILE)),
        phase_one_end=int(marker["end_epoch"]) if marker is not None else None,
    )


def backed_up_epoch(phase_backup: str) -> int | None:
    """The epoch a phase's BackupAndRestore directory resumes at, if it holds a backup."""
    path = io.join(phase_backup, "training_metadata.json")
    return int(io.read_json(path)["epoch"]) if io.exists(path) else None


def save_phase_one(model: keras.Model, dirs: RunDirs, chief: bool, end_epoch: int) -> None:
    """Backs up the weights phase two starts from and, on the chief, marks phase one done
    (at ``end_epoch``), so that a restart goes straight to phase two."""
    model.save_weights(io.join(dirs.own_backup_dir, PHASE_ONE_WEIGHTS))
    if chief:
        io.write_json(io.join(dirs.backup_dir, PHASE_ONE_MARKER), {"end_epoch": end_epoch})


def remove_backups(dirs: RunDirs, chief: bool) -> None:
    """Removes what the run no longer needs once its model directory is written: the
    chief's backups (and ``backup_dir`` if nothing else is left there), or another
    worker's temporary directories."""
    if chief:
        for name in ("phase1", "phase2", PHASE_ONE_MARKER, PHASE_ONE_WEIGHTS, HISTORY_FILE):
            io.remove(io.join(dirs.backup_dir, name))
        if io.isdir(dirs.backup_dir) and not io.listdir(dirs.backup_dir):
            io.remove(dirs.backup_dir)
    else:
        io.remove(dirs.own_model_dir)
        io.remove(dirs.own_backup_dir)
