"""A classifier's prediction as both prediction stages write it (batch_predict's JSON
lines, stream_predict's messages): the top class and the top-k classes.

NumPy only: the prediction stages' workers import this without TensorFlow or Keras.
"""

from typing import Any

import numpy as np


def prediction_record(
    uri: str, probabilities: np.ndarray, labels: list[str], top_k: int, true_label: str = ""
) -> dict[str, Any]:
    """One line of the predictions: the top class, the ``top_k`` classes, the true label.

    Args:
        uri: The image's URI.
        probabilities: The model's class probabilities, in label order.
        labels: The model's labels.
        top_k: How many classes to list (capped at the number of classes).
        true_label: The label the listing gave, if any.

    Returns:
        ``{"uri", "label", "probability", "top_k": [{"label", "probability"}, ...]}``, plus
        ``"true_label"`` when given; ``top_k`` is sorted by descending probability (ties
        in label order).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(labels),):
        raise ValueError(
            f"the model gave {probabilities.shape} probabilities for {len(labels)} labels"
        )
    order = np.argsort(-probabilities, kind="stable")[: max(1, min(top_k, len(labels)))]
    top = [{"label": labels[i], "probability": float(probabilities[i])} for i in order]
    record: dict[str, Any] = {
        "uri": uri,
        "label": top[0]["label"],
        "probability": top[0]["probability"],
        "top_k": top,
    }
    if true_label:
        record["true_label"] = true_label
    return record
