"""A classifier's prediction as both prediction stages write it (batch_predict's JSON
lines, stream_predict's messages): the top class and the top-k classes.

``check_answer`` is the deploy step's proof that a served classifier answers one image
well formed (its signature's outputs, ``components.classification.signature``),
``answer_summary`` what the deploy result says of that answer.

NumPy only: the prediction stages' workers and the deploy step import this without
TensorFlow or Keras.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.classification import signature


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


def check_answer(prediction: Mapping[str, Any], labels: Sequence[str]) -> Mapping[str, Any]:
    """Checks a served classifier's answer for one image (a row of TF Serving's REST
    ``predictions``): a label of the model's, one probability per label summing to 1, and
    the class index of that label.

    Returns:
        ``prediction``, checked.

    Raises:
        ValueError: when the answer is not a well-formed prediction of a model with these
            labels (the message says each problem).
    """
    labels = list(labels)
    problems = []
    label = prediction.get("label")
    probabilities = prediction.get(signature.PROBABILITIES_NAME)
    if label not in labels:
        problems.append(f"label {label!r} is not one of the model's labels {labels}")
    if not isinstance(probabilities, list) or len(probabilities) != len(labels):
        problems.append(f"expected {len(labels)} probabilities, got {probabilities!r:.200}")
    elif not math.isclose(sum(probabilities), 1.0, abs_tol=1e-3):
        problems.append(f"probabilities sum to {sum(probabilities)}, not 1")
    elif label in labels and prediction.get("class_index") != labels.index(label):
        problems.append(f"class_index {prediction.get('class_index')} does not match {label!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return prediction


def answer_summary(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """A checked answer's top class: ``{"label", "score"}``."""
    return {"label": prediction["label"], "score": float(prediction["score"])}
