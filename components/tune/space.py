"""What a search may vary: the ranges of the four tuned settings of ``training.train``,
checked, and which of them a given run really searches.

Plain Python (no TensorFlow, no KerasTuner): the local search (``tuning``) and the Vertex
AI study spec (``vertex``) are both built from a :class:`SearchSpace`.
"""

from __future__ import annotations

import dataclasses

# The settings of ``training.train`` a search varies, in the order they are reported.
TUNED = ("learning_rate", "dropout", "crop_area_min", "fine_tune_layers")
# The metric a trial is scored by (that of its kept epoch) and which way is better.
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}


def check_objective(objective: str) -> str:
    """``"max"`` or ``"min"``: the direction of ``objective``.

    Raises:
        ValueError: for a metric train does not report per run.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    return OBJECTIVES[objective]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The ranges a search draws the tuned settings from.

    A range whose low and high ends are equal (or a single choice) fixes that setting
    for every trial.

    Attributes:
        learning_rate_low, learning_rate_high: Phase one's learning rate, drawn on a log
            scale (a rate's effect is multiplicative).
        dropout_low, dropout_high: Dropout before the classification layer.
        crop_area_min_low, crop_area_min_high: The augmentation's strength, the smallest
            share of an image's area a random crop keeps (lower is stronger).
        fine_tune_layers_choices: Top backbone layers phase two unfreezes (-1 for all,
            0 for no phase two); searched only with pretrained weights.
    """

    learning_rate_low: float = 1e-4
    learning_rate_high: float = 1e-2
    dropout_low: float = 0.0
    dropout_high: float = 0.5
    crop_area_min_low: float = 0.25
    crop_area_min_high: float = 1.0
    fine_tune_layers_choices: tuple[int, ...] = (0, 20, 50, -1)

    def __post_init__(self):
        object.__setattr__(
            self, "fine_tune_layers_choices", tuple(int(c) for c in self.fine_tune_layers_choices)
        )

    def check(self, crop_area_max: float = 1.0) -> None:
        """Raises ValueError for a range train could not take or that is empty.

        Args:
            crop_area_max: Train's largest crop share: the crop range must stay below it.
        """
        if not 0 < self.learning_rate_low <= self.learning_rate_high:
            raise ValueError(
                "the learning rate range must satisfy 0 < learning_rate_low <= "
                f"learning_rate_high; got {self.learning_rate_low}, {self.learning_rate_high}"
            )
        if not 0 <= self.dropout_low <= self.dropout_high < 1:
            raise ValueError(
                "the dropout range must satisfy 0 <= dropout_low <= dropout_high < 1; "
                f"got {self.dropout_low}, {self.dropout_high}"
            )
        if not 0 < self.crop_area_min_low <= self.crop_area_min_high <= crop_area_max:
            raise ValueError(
                "the crop_area_min range must satisfy 0 < crop_area_min_low <= "
                f"crop_area_min_high <= crop_area_max ({crop_area_max}); got "
                f"{self.crop_area_min_low}, {self.crop_area_min_high}"
            )
        choices = self.fine_tune_layers_choices
        if not choices or any(c < -1 for c in choices) or len(set(choices)) < len(choices):
            raise ValueError(
                "fine_tune_layers_choices must be distinct layer counts, each -1 (all), 0 "
                f"or more; got {list(choices)}"
            )

    def ranges(self, pretrained: bool, augment: bool) -> dict[str, tuple]:
        """The settings a search varies and their ranges: ``(low, high)`` or, for
        fine_tune_layers, the choices. Left out: a setting fixed by its range, and those
        that would not change training (fine_tune_layers without pretrained weights, the
        crop without augmentation)."""
        ranges: dict[str, tuple] = {}
        if self.learning_rate_low < self.learning_rate_high:
            ranges["learning_rate"] = (self.learning_rate_low, self.learning_rate_high)
        if self.dropout_low < self.dropout_high:
            ranges["dropout"] = (self.dropout_low, self.dropout_high)
        if augment and self.crop_area_min_low < self.crop_area_min_high:
            ranges["crop_area_min"] = (self.crop_area_min_low, self.crop_area_min_high)
        if pretrained and len(self.fine_tune_layers_choices) > 1:
            ranges["fine_tune_layers"] = self.fine_tune_layers_choices
        return ranges

    def fixed(self, defaults: dict, pretrained: bool, augment: bool) -> dict:
        """The tuned settings a search leaves alone, and their values for every trial:
        a range's single value, or the default (``defaults``, by name) of a setting that
        does not change training here."""
        searched = self.ranges(pretrained, augment)
        single = {
            "learning_rate": self.learning_rate_low,
            "dropout": self.dropout_low,
            "crop_area_min": self.crop_area_min_low if augment else defaults["crop_area_min"],
            "fine_tune_layers": self.fine_tune_layers_choices[0]
            if pretrained
            else defaults["fine_tune_layers"],
        }
        return {name: single[name] for name in TUNED if name not in searched}
