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


# --- champion and challenger ---------------------------------------------------------


@pytest.fixture(scope="module")
def constant_exports(tmp_path_factory) -> dict[str, str]:
    """Exports that answer one class whatever the image, one per class of the sample set:
    their test accuracy is that class's share of the test split, known in advance."""
    from components.common.model_dir import save_model_dir
    from components.export.saved_model import export_saved_model
    from components.train.backbones import build_classifier

    exports = {}
    for index, label in enumerate(CLASSES):
        base = tmp_path_factory.mktemp(f"constant-{label}")
        model, _ = build_classifier("MobileNetV3Small", len(CLASSES), 32, weights="none")
        dense = model.layers[-1]
        kernel, bias = dense.get_weights()
        bias[:] = 0.0
        bias[index] = 50.0
        dense.set_weights([np.zeros_like(kernel), bias])
        save_model_dir(
            model,
            str(base / "model"),
            list(CLASSES),
            {"backbone": "MobileNetV3Small", "image_size": 32},
        )
        export_saved_model(str(base / "model"), str(base / "export"))
        exports[label] = str(base / "export")
    return exports


def _test_shares(dataset_dir: str) -> dict[str, float]:
    counts = read_json(os.path.join(dataset_dir, "stats.json"))["classes"]["test"]
    return {label: n / sum(counts.values()) for label, n in counts.items()}


def _best_and_worst(dataset_dir: str) -> tuple[str, str, float]:
    shares = _test_shares(dataset_dir)
    best, worst = max(shares, key=shares.get), min(shares, key=shares.get)
    assert shares[best] > shares[worst], "the sample set's test split must be unbalanced"
    return best, worst, shares[best] - shares[worst]


def test_gate_refuses_a_challenger_worse_than_the_champion(constant_exports, tfrecord_dataset):
    best, worst, gap = _best_and_worst(tfrecord_dataset)
    report = evaluation.evaluate_export(
        constant_exports[worst],
        tfrecord_dataset,
        accuracy_threshold=0.0,
        champion_dir=constant_exports[best],
    )
    shares = _test_shares(tfrecord_dataset)
    assert report["accuracy"] == pytest.approx(shares[worst])
    assert report["champion"]["accuracy"] == pytest.approx(shares[best])
    assert report["champion"]["model_dir"] == constant_exports[best]
    assert report["passed"] is False, "the threshold alone would have passed it"
    # Within the margin it passes; just outside it does not.
    within = evaluation.evaluate_export(
        constant_exports[worst],
        tfrecord_dataset,
        accuracy_threshold=0.0,
        champion_dir=constant_exports[best],
        champion_margin=gap + 1e-6,
    )
    assert within["passed"] is True
    outside = evaluation.evaluate_export(
        constant_exports[worst],
        tfrecord_dataset,
        accuracy_threshold=0.0,
        champion_dir=constant_exports[best],
        champion_margin=gap - 1e-3,
    )
    assert outside["passed"] is False


def test_gate_passes_a_challenger_better_than_the_champion(constant_exports, tfrecord_dataset):
    best, worst, _ = _best_and_worst(tfrecord_dataset)
    report = evaluation.evaluate_export(
        constant_exports[best],
        tfrecord_dataset,
        accuracy_threshold=0.0,
        champion_dir=constant_exports[worst],
    )
    assert report["passed"] is True
    assert report["accuracy"] > report["champion"]["accuracy"]
    # Equal is not worse: the same model as its own champion passes.
    same = evaluation.evaluate_export(
        constant_exports[best],
        tfrecord_dataset,
        accuracy_threshold=0.0,
        champion_dir=constant_exports[best],
    )
    assert same["passed"] is True
    # The threshold still applies when the champion is worse.
    high_bar = evaluation.evaluate_export(
        constant_exports[best],
        tfrecord_dataset,
        accuracy_threshold=0.99,
        champion_dir=constant_exports[worst],
    )
    assert high_bar["passed"] is False


def test_a_champion_with_other_labels_is_not_compared(exported_model, tfrecord_dataset, tmp_path):
    other = tmp_path / "other_labels"
    shutil.copytree(exported_model, other)
    (other / "assets.extra" / "labels.txt").write_text("dog\ncat\nbird\nfish\n")
    report = evaluation.evaluate_export(
        exported_model, tfrecord_dataset, accuracy_threshold=0.0, champion_dir=str(other)
    )
    assert report["passed"] is True
    assert "differ from the dataset's" in report["champion"]["skipped"]
    assert "accuracy" not in report["champion"]


def test_champion_margin_out_of_range_is_a_clear_error(exported_model, tfrecord_dataset):
    with pytest.raises(ValueError, match="champion_margin"):
        evaluation.evaluate_export(
            exported_model, tfrecord_dataset, champion_dir=exported_model, champion_margin=-0.1
        )


@dsl.pipeline(name="evaluate-only")
def _evaluate_pipeline(
    model_dir: str,
    dataset_dir: str,
    threshold: float,
    explain_examples: int,
    champion_dir: str = "",
):
    model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model, reimport=False)
    dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset, reimport=False)
    evaluate_component(
        model=model.output,
        dataset=dataset.output,
        accuracy_threshold=threshold,
        champion_dir=champion_dir,
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


def test_evaluate_component_scores_the_champion(kfp_local, constant_exports, tfrecord_dataset):
    """Both scores in the Metrics artifact, and the gate closed on a worse challenger."""
    best, worst, _ = _best_and_worst(tfrecord_dataset)
    run_dir = run_pipeline(
        _evaluate_pipeline,
        str(kfp_local),
        model_dir=constant_exports[worst],
        dataset_dir=tfrecord_dataset,
        threshold=0.0,
        explain_examples=0,
        champion_dir=constant_exports[best],
    )
    outputs = task_outputs(run_dir, "evaluate")
    assert outputs["parameterValues"]["Output"] is False
    metrics = output_artifact(outputs, "metrics")["metadata"]
    shares = _test_shares(tfrecord_dataset)
    assert metrics["accuracy"] == pytest.approx(shares[worst])
    assert metrics["champion_accuracy"] == pytest.approx(shares[best])
    assert metrics["champion_loss"] < metrics["loss"]
    assert metrics["deploy"] == 0.0
    assert metrics["champion_dir"] == constant_exports[best]
