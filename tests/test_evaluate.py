"""The evaluate stage: metrics, confusion matrix and the deploy gate."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.common.io import read_json
from components.evaluate import evaluation
from components.evaluate.component import evaluate as evaluate_component
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.sample_data import CLASSES


def test_classification_report_on_known_predictions():
    labels = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), y_pred] = 0.8
    report = evaluation.classification_report(y_true, probs, labels)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["per_class"]["c"]["recall"] == pytest.approx(1.0)
    expected_loss = -np.mean(np.log(probs[np.arange(6), y_true]))
    assert report["loss"] == pytest.approx(expected_loss)


def test_evaluate_counts_every_test_image_and_applies_the_gate(exported_model, tfrecord_dataset):
    stats = read_json(os.path.join(tfrecord_dataset, "stats.json"))
    report = evaluation.evaluate(exported_model, tfrecord_dataset, accuracy_threshold=0.0)
    assert report["examples"] == stats["splits"]["test"]
    assert np.sum(report["confusion_matrix"]) == report["examples"]
    assert report["labels"] == list(CLASSES) and report["passed"] is True
    failed = evaluation.evaluate(exported_model, tfrecord_dataset, accuracy_threshold=1.01)
    assert failed["passed"] is False and failed["accuracy"] == report["accuracy"]


def test_label_mismatch_is_a_clear_error(exported_model, tfrecord_dataset, tmp_path):
    other = tmp_path / "dataset"
    shutil.copytree(tfrecord_dataset, other)
    (other / "labels.txt").write_text("dog\ncat\nbird\nfish\n")
    with pytest.raises(ValueError, match="differ from the dataset's"):
        evaluation.evaluate(exported_model, str(other))


@dsl.pipeline(name="evaluate-only")
def _evaluate_pipeline(model_dir: str, dataset_dir: str, threshold: float, explain_examples: int):
    model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model, reimport=False)
    dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset, reimport=False)
    evaluate_component(
        model=model.output,
        dataset=dataset.output,
        accuracy_threshold=threshold,
        explain_examples=explain_examples,
        ig_steps=4,
    )


@pytest.mark.parametrize("threshold, passed, explain_examples", [(0.0, True, 2), (1.01, False, 0)])
def test_evaluate_component_under_kfp_local(
    kfp_local, exported_model, tfrecord_dataset, threshold, passed, explain_examples
):
    """The gate, metrics and confusion matrix, and the explanations page (on or off)."""
    run_dir = run_pipeline(
        _evaluate_pipeline,
        str(kfp_local),
        model_dir=exported_model,
        dataset_dir=tfrecord_dataset,
        threshold=threshold,
        explain_examples=explain_examples,
    )
    outputs = task_outputs(run_dir, "evaluate")
    assert outputs["parameterValues"]["Output"] is passed
    metrics = output_artifact(outputs, "metrics")["metadata"]
    assert {"accuracy", "loss", "examples"} <= set(metrics)
    assert {f"recall_{label}" for label in CLASSES} <= set(metrics)
    matrix = output_artifact(outputs, "confusion_matrix")["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == list(CLASSES)
    assert sum(sum(row["row"]) for row in matrix["rows"]) == metrics["examples"]
    page = output_artifact(outputs, "explanations")
    assert page["metadata"]["examples"] == explain_examples
    assert page["metadata"]["ig_steps"] == 4
    html = Path(page["uri"]).read_text()
    assert html.count("<img ") == 3 * explain_examples
    if explain_examples:
        assert "max_abs_completeness_gap" in page["metadata"]
        assert len(re.findall(r'class="true-label">', html)) == explain_examples
    else:
        assert "Explanations are off" in html
