"""TFLite conversions of the edge SavedModel: float32, float16 weights, and int8.

All three keep the edge model's ``serving_default`` signature (uint8 pixels of any size
in; a classifier's probabilities, class_index, label, score or a detector's Object
Detection API outputs) and run on TFLite's builtin ops only.

int8 is post-training full-integer quantization calibrated on a representative set of
training images, with exceptions that stay float. The resize: its tensors are pixel
coordinates and interpolation weights that depend on the input's size, so ranges
calibrated on some sizes would be wrong for others. A detector's decoding after its
network (peaks or anchors to boxes, top candidates, non-maximum suppression): box
coordinates and the score ranking would lose the precision the matching needs, and TFLite
suppresses in float only anyway. Their nodes (under the edge model's ``float_scopes``
name scopes) are kept out of quantization with TFLite's quantization debugger
(``denylisted_nodes``, the documented way to quantize selectively); the network runs in
int8 between quantize and dequantize ops. Ops that only move values (a reshape, top-k, a
gather of the network's int8 outputs) still take int8 there, losing nothing; the arithmetic
and the suppression stay float.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from components.common import serving
from components.export_edge.edge_model import PIXELS, RESIZE_SCOPE

FORMATS = ("float32", "float16", "int8")
_DEPRECATED = r"(?s).*tf\.lite\.Interpreter is deprecated"


def _converter(edge_dir: str) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_saved_model(edge_dir, [serving.SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def interpreter(model: bytes) -> tf.lite.Interpreter:
    """A TFLite interpreter of ``model``. TF 2.21's ``tf.lite.Interpreter`` warns that it
    is deprecated for ``ai_edge_litert``'s; it is the one installed beside the converter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        return tf.lite.Interpreter(model_content=model)


def tensor_names(model: bytes) -> list[str]:
    """The names of a TFLite model's tensors."""
    return [t["name"] for t in interpreter(model).get_tensor_details()]


def convert(
    edge_dir: str,
    kind: str,
    representative: Callable[[], Iterable[np.ndarray]] | None = None,
    float_model: bytes | None = None,
    float_scopes: Sequence[str] = (RESIZE_SCOPE,),
) -> bytes:
    """Converts the edge SavedModel in ``edge_dir`` to a TFLite flatbuffer.

    Args:
        edge_dir: The pixel-input SavedModel (``edge_model.write_edge_saved_model``).
        kind: ``float32``; ``float16`` (weights stored as float16, computed in float32
            where the device has no float16 kernels); ``int8`` (weights and activations).
        representative: For int8: a function returning an iterable of uint8
            ``[1, height, width, 3]`` images (the calibration set).
        float_model: For int8: the float32 conversion, whose tensor names say which
            nodes are in ``float_scopes`` (converted here when not given).
        float_scopes: For int8: the name scopes whose nodes stay float (the edge model's
            ``float_scopes``; a scope used twice in a graph is also ``<scope>_1``).
    """
    converter = _converter(edge_dir)
    if kind == "float32":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    if kind != "int8":
        raise ValueError(f"unknown TFLite format {kind!r}; expected one of {FORMATS}")
    if representative is None:
        raise ValueError("int8 needs a representative set of images")

    def dataset():
        for image in representative():
            yield {PIXELS: image}

    converter.representative_dataset = dataset
    scopes = re.compile(rf"(^|/)({'|'.join(map(re.escape, float_scopes))})(_\d+)?/")
    float_nodes = [
        name
        for name in tensor_names(float_model or convert(edge_dir, "float32"))
        if scopes.search(name)
    ]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes)
    with warnings.catch_warnings():  # it makes a tf.lite.Interpreter too
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


class Runner:
    """Runs one TFLite model's ``serving_default`` on one image at a time."""

    def __init__(self, model: bytes):
        self._interpreter = interpreter(model)
        self._run = self._interpreter.get_signature_runner(serving.SIGNATURE)

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """``pixels``: uint8 ``[1, height, width, 3]``; the outputs by name."""
        return self._run(**{PIXELS: pixels})
