"""KFP component of the evaluate stage."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("evaluate"), install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    explanations: Output[HTML],
    accuracy_threshold: float = 0.8,
    champion_dir: str = "",
    champion_margin: float = 0.0,
    split: str = "test",
    explain_examples: int = 8,
    ig_steps: int = 50,
) -> bool:
    """Evaluates the exported model on the test split against the model serving now;
    its result gates deployment.

    Runs the serving SavedModel on the split's encoded images (so preprocessing is
    evaluated too) and reports accuracy, log loss and per-class precision, recall and F1.
    It also explains the predictions on a sample of the split with integrated gradients,
    computed on the same SavedModel (its xai_preprocess / xai_model signatures).

    Args:
        model: Serving SavedModel written by the export stage.
        dataset: TFRecord dataset written by create_tfrecords.
        accuracy_threshold: The quality gate: deployment runs only when accuracy
            reaches it.
        champion_dir: The SavedModel serving now (the champion), scored on the same
            images; empty: none, the threshold alone decides.
        champion_margin: How much lower than the champion's accuracy the new model's
            may be and still be deployed (0: not lower).
        split: Which dataset split to evaluate.
        explain_examples: How many of the split's images to explain, spread over the
            classes; 0 turns explanations off.
        ig_steps: Integrated-gradients steps per image (more: a more exact integral,
            linearly slower).

    Returns:
        metrics: accuracy, loss, examples, champion_accuracy and champion_loss (the
            model serving now, on the same images, when there is one), deploy (the
            gate, 1 or 0), and precision_<label>, recall_<label>, f1_<label> per class.
        confusion_matrix: The confusion matrix, rendered by the KFP and Vertex UIs.
        explanations: An HTML page: per sampled image, its integrated-gradients heatmap
            and overlay, true and predicted labels, score and completeness gap; its
            metadata holds the gap's maximum and mean.
        Output: True when accuracy reaches accuracy_threshold and the champion's less
            champion_margin (the deploy gate).
    """
    from components.common.io import artifact_location
    from components.evaluate.evaluation import evaluate_export

    report = evaluate_export(
        artifact_location(model),
        artifact_location(dataset),
        split=split,
        accuracy_threshold=accuracy_threshold,
        champion_dir=champion_dir,
        champion_margin=champion_margin,
        explanations_path=explanations.path,
        explain_examples=explain_examples,
        ig_steps=ig_steps,
    )
    for name in ("accuracy", "loss", "examples"):
        metrics.log_metric(name, report[name])
    champion = report.get("champion", {})
    for name in ("accuracy", "loss"):
        if name in champion:
            metrics.log_metric(f"champion_{name}", champion[name])
    metrics.log_metric("deploy", float(report["passed"]))
    metrics.metadata["champion_dir"] = champion_dir
    for label, scores in report["per_class"].items():
        for name in ("precision", "recall", "f1"):
            metrics.log_metric(f"{name}_{label}", scores[name])
    confusion_matrix.log_confusion_matrix(report["labels"], report["confusion_matrix"])
    explanations.metadata.update(report["explanations"])
    return report["passed"]
