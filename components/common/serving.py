"""What every task's export shares: the serving signature's name, and where its labels lie.

The export stage writes it; evaluation, the model server, batch prediction and the cloud
deploy components read it. Nothing here imports TensorFlow until a signature is loaded,
so the serving path does not pull in the training stack.

Every export serves encoded images through ``serving_default``; what it answers is the
task's own contract: ``components.classification.signature`` (probabilities, class_index,
label, score) and ``components.detection.export`` (the Object Detection API's outputs).
The model server, batch prediction and deploy read an export's input and output names
from the loaded signature itself.

An export also holds ``assets.extra/labels.txt`` (the labels, one per line, in class-index
order) and, for a classifier, the Vertex explanation spec
(``assets.extra/explanation_*.json``), next to the graph rather than in it.
"""

from __future__ import annotations

from components.common import io, labels as label_io

SIGNATURE = "serving_default"
# Files for clients, beside the graph (TF Serving and Vertex AI ignore the folder).
EXTRA_DIR = "assets.extra"


def extra_path(export_dir: str, name: str) -> str:
    """The path of a file in an export's ``assets.extra`` folder."""
    return io.join(export_dir, EXTRA_DIR, name)


def read_export_labels(export_dir: str) -> list[str]:
    """The labels an export carries, in class-index order."""
    return label_io.read_labels(extra_path(export_dir, label_io.LABELS_FILE))


def write_export_labels(export_dir: str, labels: list[str]) -> None:
    label_io.write_labels(extra_path(export_dir, label_io.LABELS_FILE), labels)


def load_signature(export_dir: str, name: str = SIGNATURE):
    """Loads one signature of an exported SavedModel (``serving_default`` by default:
    encoded images -> outputs). Keep the returned function's SavedModel alive through it."""
    import tensorflow as tf

    return tf.saved_model.load(export_dir).signatures[name]
