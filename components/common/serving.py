"""The serving contract: what an exported SavedModel answers, and where its labels lie.

The export stage writes it; evaluation, the model server, batch prediction and the cloud
deploy components read it. Nothing here imports TensorFlow until a signature is loaded,
so the serving path does not pull in the training stack.

Signature ``serving_default``::

    inputs:  image_bytes  string [batch]   encoded JPEG/PNG/GIF/BMP; in JSON requests
                                           the TF Serving convention {"b64": "..."}
    outputs: probabilities float32 [batch, classes]
             class_index   int64   [batch]
             label         string  [batch]
             score         float32 [batch]   probability of the top class

The input name ends in ``_bytes`` because TensorFlow Serving's REST API base64-decodes
``{"b64": ...}`` values for such inputs. Two more signatures split it at its one
non-differentiable step (decoding), as Vertex Explainable AI expects::

    xai_preprocess: image_bytes string [batch] -> pixels float32 [batch, size, size, 3]
    xai_model:      pixels float32 [batch, size, size, 3] (0-255) -> probabilities

An export also holds ``assets.extra/labels.txt`` (the labels, one per line, in class-index
order) and the Vertex explanation spec (``assets.extra/explanation_*.json``), next to the
graph rather than in it.
"""

from __future__ import annotations

from components.common import io, labels as label_io

SIGNATURE = "serving_default"
INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probabilities", "class_index", "label", "score")
XAI_PREPROCESS_SIGNATURE = "xai_preprocess"
XAI_MODEL_SIGNATURE = "xai_model"
PIXELS_NAME = "pixels"
PROBABILITIES_NAME = "probabilities"
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
    ``image_bytes`` -> outputs). Keep the returned function's SavedModel alive through it."""
    import tensorflow as tf

    return tf.saved_model.load(export_dir).signatures[name]
