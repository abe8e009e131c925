"""The epoch log of a training run: one row per epoch across phases and restarts, as
CSVLogger writes it, and what the run reports from it (history, best epoch, metrics)."""

from __future__ import annotations

import csv
import dataclasses
import io as stdio
import math

from components.common import io

METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

Rows = dict[int, dict[str, float]]
"""Epoch rows by epoch index (from 0): each a row's values by column name."""


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_history(path: str) -> Rows:
    """The rows of an epoch log (CSVLogger) by epoch index (from 0); empty if none.

    A restarted run logs again the epoch it was killed in: the last row of an epoch wins.
    """
    if not io.exists(path):
        return {}
    rows: Rows = {}
    for row in csv.DictReader(io.read_text(path).splitlines()):
        epoch = _to_float(row.pop("epoch", ""))
        if math.isfinite(epoch):
            rows[int(epoch)] = {key: _to_float(value) for key, value in row.items()}
    return rows


@dataclasses.dataclass(frozen=True)
class EpochLog:
    """This run's epoch log: the rows a preempted attempt left (read once, at the start)
    and the file this attempt's CSVLogger appends to.

    Attributes:
        path: This worker's CSVLogger file.
        prior_rows: The rows of earlier attempts of this run.
    """

    path: str
    prior_rows: Rows

    def rows(self) -> Rows:
        """This run's epochs so far: a preempted attempt's, then this attempt's."""
        return {**self.prior_rows, **read_history(self.path)}


def history_columns(rows: Rows) -> dict[str, list[float]]:
    """Epoch rows as per-key lists in epoch order, with ``epoch`` counted from 1."""
    epochs = sorted(rows)
    keys = sorted({key for row in rows.values() for key in row})
    columns: dict[str, list[float]] = {"epoch": [e + 1 for e in epochs]}
    for key in keys:
        columns[key] = [rows[e].get(key, math.nan) for e in epochs]
    if "phase" in columns:
        columns["phase"] = [int(p) if math.isfinite(p) else 1 for p in columns["phase"]]
    return columns


def history_rows(columns: dict[str, list[float]], count: int) -> Rows:
    """The first ``count`` epochs of a saved history (per-key lists) as epoch rows."""
    keys = [key for key in columns if key != "epoch"]
    length = min(count, *(len(columns[key]) for key in keys)) if keys else 0
    return {e: {key: float(columns[key][e]) for key in keys} for e in range(length)}


def write_history_csv(path: str, columns: dict[str, list[float]]) -> None:
    """Writes a history (per-key lists, as :func:`history_columns` makes) as CSV."""
    keys = ["epoch", *(key for key in columns if key != "epoch")]
    out = stdio.StringIO()
    writer = csv.writer(out)
    writer.writerow(keys)
    for i in range(len(columns["epoch"])):
        writer.writerow([columns[key][i] for key in keys])
    io.write_text(path, out.getvalue())


def best_epoch(rows: Rows) -> int:
    """The epoch index (from 0) of the lowest finite ``val_loss``; the first on a tie."""

    def val_loss_of(epoch: int) -> float:
        value = rows[epoch]["val_loss"]
        return value if math.isfinite(value) else math.inf

    return min(sorted(rows), key=val_loss_of)


def best_val_loss(rows: Rows) -> float | None:
    """The lowest finite ``val_loss`` of the rows; None if there is none."""
    values = [row["val_loss"] for row in rows.values() if math.isfinite(row["val_loss"])]
    return min(values) if values else None


def run_metrics(rows: Rows, steps_per_epoch: int, global_batch: int, replicas: int) -> dict:
    """The metrics ``training.train`` returns (see there) for this run's epoch rows."""
    best = best_epoch(rows)
    seconds = [rows[e].get("epoch_seconds", math.nan) for e in sorted(rows)]
    seconds = [s for s in seconds if math.isfinite(s)]
    images_per_epoch = steps_per_epoch * global_batch
    phases = [int(r.get("phase", 1)) for r in rows.values()]
    metrics = {key: rows[best][key] for key in METRIC_KEYS}
    metrics.update(
        epochs_run=len(rows),
        phase_one_epochs=phases.count(1),
        phase_two_epochs=phases.count(2),
        best_epoch=best + 1,
        train_seconds=sum(seconds),
        # The fastest epoch: the first of each phase also traces and compiles the steps.
        images_per_second=images_per_epoch / min(seconds) if seconds else 0.0,
        global_batch_size=global_batch,
        replicas=replicas,
    )
    return metrics
