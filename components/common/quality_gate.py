"""The deploy gate every task's evaluate stage applies (TFX's "blessing").

A new model (the challenger) passes when its gate metric (classification: accuracy;
detection: COCO AP50) reaches a threshold and, when a model serves already (the
champion), is not lower than the champion's on the same images by more than a margin. A
champion that cannot be scored on these images (other labels, another task) is not
compared: the threshold alone decides, and the report says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


def apply_threshold(report: dict, metric: str, threshold: float) -> dict:
    """Sets ``report``'s ``gate_metric``, ``threshold`` and ``passed`` (its ``metric``
    reaches ``threshold``); returns it."""
    report.update(gate_metric=metric, threshold=threshold, passed=bool(report[metric] >= threshold))
    return report


def compare_with_champion(
    report: dict,
    champion_dir: str,
    score_champion: Callable[[str], dict],
    margin: float,
    kept: Sequence[str],
) -> dict:
    """Scores the champion and narrows the gate: the challenger passes only if its gate
    metric is at least the champion's less ``margin``.

    Args:
        report: The challenger's report, through :func:`apply_threshold`.
        champion_dir: The SavedModel serving now.
        score_champion: Scores a SavedModel on the challenger's split (the task's own
            evaluation); raises ValueError when it cannot be scored there.
        margin: How much lower than the champion's metric the challenger's may be.
        kept: The champion's figures the report keeps (the gate metric among them).

    Returns:
        ``report`` with ``champion`` (``model_dir`` and the ``kept`` figures, or
        ``skipped``: why it was not compared) and ``passed`` updated.
    """
    if not 0 <= margin <= 1:
        raise ValueError(f"champion_margin must be in [0, 1], got {margin}")
    metric = report["gate_metric"]
    try:
        champion = score_champion(champion_dir)
    except ValueError as e:  # other labels or another task: not comparable here
        log.warning("champion %s not compared: %s", champion_dir, e)
        report["champion"] = {"model_dir": champion_dir, "skipped": str(e)}
        return report
    report["champion"] = {"model_dir": champion_dir, **{k: champion[k] for k in kept}}
    beats = report[metric] >= champion[metric] - margin
    log.info(
        "challenger %s %.4f against champion %.4f (margin %.3f): %s",
        metric,
        report[metric],
        champion[metric],
        margin,
        "not worse" if beats else "worse: not deployed",
    )
    report["passed"] = report["passed"] and beats
    return report
