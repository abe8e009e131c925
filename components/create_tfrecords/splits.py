"""The train/valid/test split: a pure function of an image's URI, so re-runs never move it."""

from __future__ import annotations

import hashlib
import math


def validate_fractions(train_fraction: float, valid_fraction: float) -> None:
    """Checks the split fractions; the test fraction is what they leave.

    Raises:
        ValueError: when a fraction is negative or not a number, or they sum to more than 1.
    """
    for name, value in (("train_fraction", train_fraction), ("valid_fraction", valid_fraction)):
        if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if train_fraction + valid_fraction > 1 + 1e-9:
        raise ValueError(
            f"train_fraction + valid_fraction must be <= 1 (the rest is the test split), "
            f"got {train_fraction} + {valid_fraction} = {train_fraction + valid_fraction}"
        )


def split_fractions(train_fraction: float, valid_fraction: float) -> dict[str, float]:
    """The share of each split, ``test`` being what the others leave."""
    validate_fractions(train_fraction, valid_fraction)
    test = max(0.0, 1.0 - train_fraction - valid_fraction)
    return {"train": train_fraction, "valid": valid_fraction, "test": test}


def _hash64(uri: str) -> int:
    return int.from_bytes(hashlib.sha256(uri.encode("utf-8")).digest()[:8], "big")


def split_point(uri: str) -> float:
    """Where a URI falls in [0, 1]: the first 8 bytes of its SHA-256 as a fraction of 2**64
    (the float may round up to 1.0; ``assign_split`` compares the exact integers)."""
    return _hash64(uri) / 2**64


def assign_split(uri: str, train_fraction: float, valid_fraction: float) -> str:
    """The split of one image: a pure function of its URI, so re-runs never move it.

    Args:
        uri: The image's URI, exactly as stored in ``image/filename``.
        train_fraction: Share of images in ``train``.
        valid_fraction: Share of images in ``valid``; the rest go to ``test``.

    Returns:
        ``"train"``, ``"valid"`` or ``"test"``.

    Raises:
        ValueError: when the fractions are invalid (see ``validate_fractions``).
    """
    validate_fractions(train_fraction, valid_fraction)
    # u = h / 2**64 < fraction, compared exactly (Python compares int and float exactly).
    h = _hash64(uri)
    if h < train_fraction * 2**64:
        return "train"
    if h < (train_fraction + valid_fraction) * 2**64:
        return "valid"
    return "test"
