"""The image classifier's serving contract: what its export answers.

The export stage writes it; evaluation, explanations, the edge exports and batch
prediction read it.

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
"""

INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probabilities", "class_index", "label", "score")
XAI_PREPROCESS_SIGNATURE = "xai_preprocess"
XAI_MODEL_SIGNATURE = "xai_model"
PIXELS_NAME = "pixels"
PROBABILITIES_NAME = "probabilities"
