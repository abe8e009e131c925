"""The pixel-input SavedModel both edge converters start from.

It is the export's own classifier (its ``xai_model`` signature: resized float pixels ->
probabilities) behind the export's resize, rewritten with portable ops
(:mod:`components.export_edge.resize`), and its labels. Decoding stays outside: neither
TFLite's builtin ops nor TensorFlow.js graph models decode JPEG, and every platform has
its own decoder. Its signatures::

    serving_default: pixels uint8 [batch, height, width, 3] (RGB, any size)
                     -> probabilities float32 [batch, classes], class_index int64 [batch],
                        label string [batch], score float32 [batch]
    numeric:         the same without ``label`` (TensorFlow.js has no string gather;
                     its model carries the labels in model.json's metadata instead)
"""

from __future__ import annotations

import tensorflow as tf

from components.classification import signature
from components.common import serving
from components.export_edge.resize import resize_batch

PIXELS = "pixels"
NUMERIC_SIGNATURE = "numeric"
# Node names of the resize, kept in float by the int8 conversion.
RESIZE_SCOPE = "edge_resize"


def image_size(classifier) -> int:
    """The side of the pixels the export's ``xai_model`` signature takes."""
    (spec,) = classifier.structured_input_signature[1].values()
    return int(spec.shape[1])


class EdgeModel(tf.Module):
    """uint8 pixels of any size -> the serving outputs, on the export's classifier (``export``:
    the export already loaded, else it is loaded from ``export_dir``)."""

    task = "classification"
    input_description = "pixels: uint8 [batch, height, width, 3], RGB, any size (resized inside)"
    numeric_outputs = ("probabilities", "class_index", "score")
    outputs = (*numeric_outputs, "label")
    float_scopes = (RESIZE_SCOPE,)

    def __init__(self, export_dir: str, export=None):
        super().__init__()
        self.export = export or tf.saved_model.load(export_dir)  # tracked: variables saved
        if signature.XAI_MODEL_SIGNATURE not in self.export.signatures:
            raise ValueError(
                f"the SavedModel at {export_dir} has no {signature.XAI_MODEL_SIGNATURE!r} "
                f"signature (signatures: {sorted(self.export.signatures)}); edge exports "
                "start from the export stage's SavedModel, which has it"
            )
        self.classifier = self.export.signatures[signature.XAI_MODEL_SIGNATURE]
        self.labels = serving.read_export_labels(export_dir)
        self.size = image_size(self.classifier)
        self.label_table = tf.constant(self.labels)

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.name_scope(RESIZE_SCOPE):
            images = resize_batch(pixels, self.size)
        probabilities = self.classifier(**{signature.PIXELS_NAME: images})[
            signature.PROBABILITIES_NAME
        ]
        return {
            "probabilities": probabilities,
            "class_index": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "score": tf.reduce_max(probabilities, axis=-1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS)])
    def serve(self, pixels):
        outputs = self._outputs(pixels)
        return {**outputs, "label": tf.gather(self.label_table, outputs["class_index"])}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS)])
    def numeric(self, pixels):
        return self._outputs(pixels)


def write_edge_saved_model(model: tf.Module, edge_dir: str) -> None:
    """Writes an edge model (this module's ``EdgeModel``, or ``edge_detector``'s) as the
    pixel-input SavedModel both converters read, to ``edge_dir`` (a local folder)."""
    tf.saved_model.save(
        model,
        edge_dir,
        signatures={serving.SIGNATURE: model.serve, NUMERIC_SIGNATURE: model.numeric},
    )
