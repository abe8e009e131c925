"""Evaluates the exported SavedModel on a split of the TFRecord dataset, and decides
whether it may be deployed.

It runs the very model that will be served, through its serving signature on the
records' encoded bytes, so preprocessing is evaluated too. The gate (TFX's "blessing")
passes when the accuracy reaches a threshold and, when a model serves already (the
champion), the new one (the challenger) is not worse than it on the same images by more
than a margin.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from components.classification import schema, signature
from components.common import io, labels as label_io, quality_gate, schema as common_schema, serving
from components.evaluate import explanations

log = logging.getLogger(__name__)


def _encoded_batches(dataset_dir: str, split: str, batch_size: int) -> tf.data.Dataset:
    files = common_schema.shard_files(dataset_dir, split)
    ds = common_schema.read_records(files)
    ds = ds.batch(batch_size).map(schema.parse_examples, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def classification_report(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, log loss, confusion matrix and per-class precision/recall/F1.

    Args:
        y_true: True class indices, shape ``[n]``.
        probabilities: Predicted probabilities, shape ``[n, classes]``.
        labels: Class labels in index order.
    """
    n, k = probabilities.shape
    y_pred = probabilities.argmax(axis=1)
    matrix = np.zeros((k, k), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(matrix, (y_true, y_pred), 1)
    p_true = np.clip(probabilities[np.arange(n), y_true], 1e-7, 1.0)
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(matrix[i, i])
        predicted, support = int(matrix[:, i].sum()), int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "examples": int(n),
        "accuracy": float((y_pred == y_true).mean()),
        "loss": float(-np.log(p_true).mean()),
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
        "per_class": per_class,
    }


def evaluate(
    export_dir: str,
    dataset_dir: str,
    split: str = "test",
    accuracy_threshold: float = 0.8,
    batch_size: int = 64,
) -> dict:
    """Evaluates an exported SavedModel on one split and applies the quality gate.

    Args:
        export_dir: SavedModel written by the export stage.
        dataset_dir: Dataset written by create_tfrecords.
        split: Which split to evaluate (``test`` by default).
        accuracy_threshold: The gate: ``passed`` is true when accuracy reaches it.
        batch_size: Images per signature call.

    Returns:
        The :func:`classification_report` plus ``split`` and the gate's
        ``gate_metric``, ``threshold`` and ``passed`` (``quality_gate.apply_threshold``).
    """
    model_labels = serving.read_export_labels(export_dir)
    data_labels = label_io.read_labels(io.join(dataset_dir, label_io.LABELS_FILE))
    if model_labels != data_labels:
        raise ValueError(
            f"the model's labels {model_labels} differ from the dataset's {data_labels}: "
            "evaluate a model on the dataset (or label file) it was trained with"
        )
    serve = serving.load_signature(export_dir)
    if signature.PROBABILITIES_NAME not in serve.structured_outputs:
        raise ValueError(f"{export_dir} is not an image classifier's export (no probabilities)")
    y_true, probabilities = [], []
    for batch in _encoded_batches(dataset_dir, split, batch_size):
        out = serve(**{signature.INPUT_NAME: batch[schema.ENCODED]})
        probabilities.append(out["probabilities"].numpy())
        y_true.append(batch[schema.LABEL].numpy())
    if not y_true:
        raise ValueError(
            f"the {split} split of {dataset_dir} holds no image: nothing to evaluate "
            "(add images or raise the split's fraction)"
        )
    report = classification_report(
        np.concatenate(y_true), np.concatenate(probabilities), model_labels
    )
    report["split"] = split
    passed = quality_gate.apply_threshold(report, "accuracy", accuracy_threshold)["passed"]
    log.info(
        "%s accuracy %.4f on %d images (gate %.2f: %s)",
        split,
        report["accuracy"],
        report["examples"],
        accuracy_threshold,
        "passed" if passed else "failed",
    )
    return report


def evaluate_export(
    export_dir: str,
    dataset_dir: str,
    split: str = "test",
    accuracy_threshold: float = 0.8,
    champion_dir: str = "",
    champion_margin: float = 0.0,
    explanations_path: str = "",
    explain_examples: int = explanations.DEFAULT_EXAMPLES,
    ig_steps: int = explanations.DEFAULT_STEPS,
) -> dict:
    """The evaluate stage: :func:`evaluate` (metrics and the quality gate), the
    comparison with the model serving now, and, with ``explanations_path``,
    integrated-gradients explanations of a sample of the split.

    Args:
        export_dir: SavedModel written by the export stage (the challenger).
        dataset_dir: Dataset written by create_tfrecords.
        split: Which split to evaluate.
        accuracy_threshold: The gate: ``passed`` only when accuracy reaches it.
        champion_dir: The SavedModel serving now (the champion); empty: none, the
            threshold alone decides.
        champion_margin: How much lower than the champion's accuracy the challenger's
            may be and still pass (0: not lower).
        explanations_path: Where to write the explanations' HTML page; empty: none.
        explain_examples: Images to explain, spread over the classes; 0 writes a page
            saying explanations are off.
        ig_steps: Integrated-gradients steps per image.

    Returns:
        :func:`evaluate`'s report, with ``champion`` (see
        :func:`quality_gate.compare_with_champion`) when there is one, and ``explanations`` (the
        summary of ``explanations.write_explanations``) when a page was written.
    """
    report = evaluate(export_dir, dataset_dir, split, accuracy_threshold)
    if champion_dir:
        report = quality_gate.compare_with_champion(
            report,
            champion_dir,
            lambda champion: evaluate(champion, dataset_dir, split, accuracy_threshold),
            champion_margin,
            kept=("accuracy", "loss", "examples"),
        )
    if explanations_path:
        report["explanations"] = explanations.write_explanations(
            explanations_path, export_dir, dataset_dir, split, explain_examples, ig_steps
        )
    return report
