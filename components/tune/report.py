"""The search as a self-contained HTML page: what was searched, each trial's values and
scores, the best trial marked (the tune step's HTML artifact in the KFP and Vertex UIs)."""

from __future__ import annotations

import html

from components.tune.space import TUNED

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; }
tr.best td { background: #e6f4ea; font-weight: bold; }
"""


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _trial_rows(summary: dict) -> list[str]:
    rows = []
    for trial in summary["trials"]:
        metrics = trial["metrics"]
        cells = [trial["trial"], trial["status"]]
        cells += [trial["values"].get(name) for name in TUNED]
        cells += [metrics.get("val_accuracy"), metrics.get("val_loss")]
        css = ' class="best"' if trial["trial"] == summary["best_trial"] else ""
        tds = "".join(f"<td>{html.escape(_format(c))}</td>" for c in cells)
        rows.append(f"<tr{css}>{tds}</tr>")
    return rows


def render_html(summary: dict) -> str:
    """The page of a ``tuning.tune`` summary."""
    if not summary["trials"]:
        lead = (
            "Tuning is off (trials = 0): train gets the values below unchanged."
            if not summary["trials_requested"]
            else "No trial ran."
        )
    else:
        lead = (
            f"{len(summary['trials'])} trial(s) by {summary['objective']}; the best, "
            f"trial {summary['best_trial']} ({summary['objective']} "
            f"{_format(summary['best_score'])}), is marked and its values go to train."
        )
    searched = "".join(
        f"<li>{html.escape(name)}: {html.escape(', '.join(_format(v) for v in values))}</li>"
        for name, values in summary["searched"].items()
    )
    chosen = "".join(
        f"<tr><th>{name}</th><td>{html.escape(_format(summary[name]))}</td></tr>" for name in TUNED
    )
    header = "".join(
        f"<th>{name}</th>" for name in ("trial", "status", *TUNED, "val_accuracy", "val_loss")
    )
    trials_table = (
        f"<table><tr>{header}</tr>{''.join(_trial_rows(summary))}</table>"
        if summary["trials"]
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Hyperparameter '
        f"search</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>Hyperparameter search</h1>\n<p>{html.escape(lead)}</p>\n"
        + (f"<p>Searched (low, high or the choices):</p><ul>{searched}</ul>\n" if searched else "")
        + f"<h2>Values train gets</h2><table>{chosen}</table>\n"
        + (f"<h2>Trials</h2>{trials_table}\n" if trials_table else "")
        + "</body></html>\n"
    )
