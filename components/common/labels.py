"""Label files: one label per line, the line number is the class index."""

from __future__ import annotations

from components.common import io

LABELS_FILE = "labels.txt"


def parse_labels(text: str) -> list[str]:
    """Parses a label file's text: blank lines and surrounding whitespace are dropped,
    a repeated label keeps its first position.

    Raises:
        ValueError: when the file holds no label.
    """
    labels: list[str] = []
    for line in text.splitlines():
        label = line.strip()
        if label and label not in labels:
            labels.append(label)
    if not labels:
        raise ValueError("the label file holds no label (expected one label per line)")
    return labels


def read_labels(path: str) -> list[str]:
    """Reads a label file (local path or gs:// URI)."""
    if not io.exists(path):
        raise FileNotFoundError(f"label file not found: {path}")
    return parse_labels(io.read_text(path))


def write_labels(path: str, labels: list[str]) -> None:
    io.write_text(path, "".join(f"{label}\n" for label in labels))
