"""Learning curves of a training run as one self-contained HTML page.

Inline SVG drawn from the run's history: no JavaScript, no network, no plotting
library, so the page renders as the KFP / Vertex AI HTML artifact viewer shows it.
"""

from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 30, 44
TRAIN_COLOR, VALID_COLOR, PHASE_COLOR, BEST_COLOR = "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.facts { color: #555; margin: 0 0 16px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
svg text { font-size: 11px; fill: #333; }
svg .title { font-size: 13px; font-weight: 600; }
table { border-collapse: collapse; margin-top: 20px; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; }
tr.best td { background: #eaf6ea; font-weight: 600; }
"""


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    span = high - low
    raw = span / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _format(value: float) -> str:
    return f"{value:.4g}"


def line_chart(
    title: str,
    epochs: list[int],
    series: list[tuple[str, list[float], str]],
    phase_boundary: int | None = None,
    best_epoch: int | None = None,
    y_range: tuple[float, float] | None = None,
) -> str:
    """One SVG line chart of per-epoch values.

    Args:
        title: Chart title.
        epochs: The x values, epoch numbers counted from 1.
        series: ``(name, values, color)`` per line; ``values`` align with ``epochs``,
            non-finite values leave a gap.
        phase_boundary: Last epoch of the first phase: a dashed line is drawn after it.
        best_epoch: Epoch to mark as the kept one.
        y_range: Fixed y range (e.g. ``(0, 1)`` for accuracy); default: the data's.
    """
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x_low, x_high = min(epochs), max(epochs)
    if x_low == x_high:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_range is None:
        values = _finite([v for _, vs, _ in series for v in vs]) or [0.0, 1.0]
        y_low, y_high = min(values), max(values)
        pad = (y_high - y_low) * 0.05 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    else:
        y_low, y_high = y_range

    def x_of(epoch: float) -> float:
        return LEFT + (epoch - x_low) / (x_high - x_low) * plot_w

    def y_of(value: float) -> float:
        return TOP + (1 - (value - y_low) / (y_high - y_low)) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">',
        f'<text class="title" x="{LEFT}" y="18">{html.escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    for tick in _ticks(y_low, y_high):
        y = y_of(tick)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_format(tick)}</text>'
        )
    x_step = max(1, math.ceil(len(epochs) / 10))
    for epoch in epochs[::x_step]:
        x = x_of(epoch)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" '
            f'stroke="#999"/><text x="{x:.1f}" y="{TOP + plot_h + 16}" '
            f'text-anchor="middle">{epoch}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">epoch</text>'
    )
    if phase_boundary is not None and x_low < phase_boundary + 0.5 < x_high:
        x = x_of(phase_boundary + 0.5)
        parts.append(
            f'<line class="phase-boundary" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
            f'y2="{TOP + plot_h}" stroke="{PHASE_COLOR}" stroke-dasharray="5,4"/>'
            f'<text x="{x + 4:.1f}" y="{TOP + 12}">fine-tuning</text>'
        )
    for name, values, color in series:
        segments, current = [], []
        for epoch, value in zip(epochs, values, strict=True):
            if value is None or not math.isfinite(value):
                if current:
                    segments.append(current)
                current = []
                continue
            current.append(f"{x_of(epoch):.1f},{y_of(value):.1f}")
        if current:
            segments.append(current)
        for points in segments:
            parts.append(
                f'<polyline class="series" data-name="{html.escape(name)}" fill="none" '
                f'stroke="{color}" stroke-width="2" points="{" ".join(points)}"/>'
            )
            for point in points:
                x, y = point.split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
    if best_epoch is not None and best_epoch in epochs:
        x = x_of(best_epoch)
        parts.append(
            f'<line class="best-epoch" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
            f'y2="{TOP + plot_h}" stroke="{BEST_COLOR}" stroke-width="1"/>'
        )
    for i, (name, _, color) in enumerate(series):
        x = LEFT + plot_w - 110
        y = TOP + 14 + i * 16
        parts.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color}" '
            f'stroke-width="2"/><text x="{x + 24}" y="{y}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(
    history: dict[str, list[float]],
    title: str = "Training curves",
    phase_boundary: int | None = None,
    best_epoch: int | None = None,
    facts: dict[str, object] | None = None,
) -> str:
    """The page: loss and accuracy charts (train and validation) and a table per epoch.

    Args:
        history: Per-epoch lists: ``loss``, ``val_loss``, ``accuracy``,
            ``val_accuracy``, optionally ``epoch`` (numbers counted from 1; default
            1..n), ``phase``, ``learning_rate`` and ``epoch_seconds``.
        title: Page heading.
        phase_boundary: Last epoch of the first phase, when fine-tuning followed.
        best_epoch: The epoch whose weights were kept.
        facts: Name/value pairs shown under the heading (backbone, batch size, ...).
    """
    count = len(history.get("loss", []))
    epochs = [int(e) for e in history.get("epoch", range(1, count + 1))]
    column = {key: [float(v) for v in history.get(key, [math.nan] * count)] for key in history}

    def values(key: str) -> list[float]:
        return column.get(key, [math.nan] * count)

    charts = [
        line_chart(
            "Loss",
            epochs,
            [
                ("train", values("loss"), TRAIN_COLOR),
                ("validation", values("val_loss"), VALID_COLOR),
            ],
            phase_boundary,
            best_epoch,
        ),
        line_chart(
            "Accuracy",
            epochs,
            [
                ("train", values("accuracy"), TRAIN_COLOR),
                ("validation", values("val_accuracy"), VALID_COLOR),
            ],
            phase_boundary,
            best_epoch,
            y_range=(0.0, 1.0),
        ),
    ]
    table_keys = [
        key
        for key in (
            "phase",
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "learning_rate",
            "epoch_seconds",
        )
        if key in column
    ]
    rows = []
    for i, epoch in enumerate(epochs):
        cells = "".join(
            f"<td>{int(column[k][i]) if k == 'phase' else _format(column[k][i])}</td>"
            if math.isfinite(column[k][i])
            else "<td></td>"
            for k in table_keys
        )
        css = ' class="best"' if epoch == best_epoch else ""
        rows.append(f"<tr{css}><td>{epoch}</td>{cells}</tr>")
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ["epoch", *table_keys])
    fact_line = " · ".join(
        f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in (facts or {}).items()
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="facts">{fact_line}</p>' if fact_line else "",
            '<div class="charts">',
            *charts,
            "</div>",
            f"<table><thead><tr>{header}</tr></thead><tbody>",
            *rows,
            "</tbody></table>",
            "</body></html>",
            "",
        ]
    )
