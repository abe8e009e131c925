"""Records with a Vertex AI Model version the evaluation it was deployed with: an alias that
names the version that passed the gate last, and the evaluation imported to the Model
Registry (``ModelService.ImportModelEvaluation``, in the schema the console renders for
the task: a classifier's log loss, precision and recall at 1 and confusion matrix; a
detector's bounding-box mean average precision, overall and at IoU 0.5 and 0.75).

Both are idempotent: a version that carries the alias and an evaluation of this display
name already is left as it is, so a re-run after a failure completes what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from google.cloud import aiplatform_v1
from google.protobuf import json_format, struct_pb2

log = logging.getLogger(__name__)

CLASSIFICATION_METRICS_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
)
DETECTION_METRICS_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/image_object_detection_metrics_1.0.0.yaml"
)
EVALUATION_DISPLAY_NAME = "test-split-evaluation"


def classification_metrics(
    evaluation: Mapping[str, Any], confusion_matrix: Mapping[str, Any] | None = None
) -> dict:
    """Evaluate's metrics in the Model Registry's classification schema.

    Single-label top-1 predictions: precision and recall at 1 are both the accuracy.

    Args:
        evaluation: Evaluate's Metrics artifact metadata (``accuracy``, ``loss``, ...).
        confusion_matrix: Evaluate's ClassificationMetrics artifact metadata
            (``confusionMatrix`` with ``annotationSpecs`` and ``rows`` of ``row``).
    """
    metrics: dict[str, Any] = {}
    if "loss" in evaluation:
        metrics["logLoss"] = float(evaluation["loss"])
    if "accuracy" in evaluation:
        accuracy = float(evaluation["accuracy"])
        metrics["confidenceMetrics"] = [
            {
                "confidenceThreshold": 0.0,
                "maxPredictions": 1,
                "precisionAt1": accuracy,
                "recallAt1": accuracy,
            }
        ]
    matrix = (confusion_matrix or {}).get("confusionMatrix")
    if matrix:
        metrics["confusionMatrix"] = {
            "annotationSpecs": [
                {"displayName": spec["displayName"]} for spec in matrix["annotationSpecs"]
            ],
            "rows": [[float(n) for n in row["row"]] for row in matrix["rows"]],
        }
    return metrics


def detection_metrics(evaluation: Mapping[str, Any]) -> dict:
    """Evaluate's COCO metrics (``map``, ``map_50``, ``map_75``, ``objects``) in the Model
    Registry's image object detection schema: ``boundingBoxMeanAveragePrecision`` is
    COCO's AP@[.5:.95], with one ``boundingBoxMetrics`` entry per IoU threshold measured."""
    metrics: dict[str, Any] = {}
    if "map" in evaluation:
        metrics["boundingBoxMeanAveragePrecision"] = float(evaluation["map"])
    entries = [
        {"iouThreshold": iou, "meanAveragePrecision": float(evaluation[key])}
        for iou, key in ((0.5, "map_50"), (0.75, "map_75"))
        if key in evaluation
    ]
    if entries:
        metrics["boundingBoxMetrics"] = entries
    if "objects" in evaluation:
        metrics["evaluatedBoundingBoxCount"] = int(evaluation["objects"])
    return metrics


def metrics_in_schema(
    evaluation: Mapping[str, Any], confusion_matrix: Mapping[str, Any] | None = None
) -> tuple[str, dict]:
    """The Model Registry schema of the task evaluate measured (a detector's metrics hold
    ``map_50``) and the metrics in it."""
    if "map_50" in evaluation:
        return DETECTION_METRICS_SCHEMA, detection_metrics(evaluation)
    return CLASSIFICATION_METRICS_SCHEMA, classification_metrics(evaluation, confusion_matrix)


def _value(obj: Any) -> struct_pb2.Value:
    return json_format.ParseDict(obj, struct_pb2.Value())


def import_evaluation(
    model_client: aiplatform_v1.ModelServiceClient,
    model_version_name: str,
    evaluation: Mapping[str, Any],
    confusion_matrix: Mapping[str, Any] | None = None,
    display_name: str = EVALUATION_DISPLAY_NAME,
) -> str:
    """Imports the evaluation to the Model version, unless it has one of ``display_name``;
    returns the ModelEvaluation's resource name."""
    request = aiplatform_v1.ListModelEvaluationsRequest(parent=model_version_name)
    for existing in model_client.list_model_evaluations(request=request):
        if existing.display_name == display_name:
            log.info("%s already has evaluation %s", model_version_name, existing.name)
            return existing.name
    schema, metrics = metrics_in_schema(evaluation, confusion_matrix)
    imported = model_client.import_model_evaluation(
        request=aiplatform_v1.ImportModelEvaluationRequest(
            parent=model_version_name,
            model_evaluation=aiplatform_v1.ModelEvaluation(
                display_name=display_name,
                metrics_schema_uri=schema,
                metrics=_value(metrics),
                metadata=_value({k: v for k, v in evaluation.items() if _is_json(v)}),
            ),
        )
    )
    log.info("imported evaluation %s to %s", imported.name, model_version_name)
    return imported.name


def add_aliases(
    model_client: aiplatform_v1.ModelServiceClient,
    version: aiplatform_v1.Model,
    aliases: Sequence[str],
) -> list[str]:
    """Moves ``aliases`` to the Model version (from whichever version had them); returns
    its aliases then."""
    missing = [alias for alias in aliases if alias not in version.version_aliases]
    if not missing:
        return list(version.version_aliases)
    name = f"{version.name.split('@', 1)[0]}@{version.version_id}"
    updated = model_client.merge_version_aliases(
        request=aiplatform_v1.MergeVersionAliasesRequest(name=name, version_aliases=missing)
    )
    log.info("%s now has aliases %s", name, list(updated.version_aliases))
    return list(updated.version_aliases)


def _is_json(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
