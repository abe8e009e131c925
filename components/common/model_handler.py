"""A Beam RunInference model handler over the suite's exported serving SavedModel (batch and
streaming prediction share it).

Beam's own ``apache_beam.ml.inference.tensorflow_inference`` imports ``tensorflow_hub``,
which is not usable in this environment, and it feeds tensors, not encoded images. This
handler speaks the exports' contract: a batch of encoded image bytes goes to the
``serving_default`` signature (its one string input, whatever its name) in one call, and
each element gets its own inference back:

* a classifier (``components.classification.signature``: the signature answers
  ``PROBABILITIES_NAME``): its row of class probabilities, a float32 array, which
  ``components.classification.predictions`` turns into a record;
* any other export, e.g. a detector (``components.detection.export``: ``detection_boxes``,
  ``detection_scores``, ...): a dict of that image's slice of every output, which the
  task's own code turns into a record (``components.detection.predictions``).

Bad bytes are data, not a crash: TensorFlow rejects a whole batch when one image in it
cannot be decoded (``tf.errors.InvalidArgumentError``). The handler then runs that
batch's images one by one, so the good ones still get their predictions and each bad
one comes back as an ``InferenceFailure`` (one extra pass over a batch at most).

Beam loads the model once per worker process and shares it across the process's
threads (``apache_beam.utils.shared``), since ``share_model_across_processes()`` is
False here: the suite's classifiers are small enough for one copy per process.

TensorFlow is imported where a model is loaded or run, not with this module: building the
pipeline (on the launcher, in the KFP pod) does not load it, nor Keras with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from components.classification import signature
from components.common import io, serving

# Reasons an image gets no prediction (``InferenceFailure.reason``, data in errors.jsonl).
# IMAGE_TOO_LARGE (a remote endpoint's 413) is also create_tfrecords' reason for an image
# over PIL's pixel limit; image_checks spells it itself so that its checks import PIL only.
UNDECODABLE_IMAGE = "undecodable_image"
IMAGE_TOO_LARGE = "image_too_large"

_ModelT = TypeVar("_ModelT")

_log = logging.getLogger(__name__)


class UndecodableImages(Exception):
    """The signature could not decode an image of the batch (TensorFlow's
    ``InvalidArgumentError``); ``detail`` is its useful line."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InferenceFailure(NamedTuple):
    """The inference of an element the model could not run on (instead of its outputs)."""

    reason: str
    detail: str


class LoadedModel:
    """A loaded serving SavedModel: its ``serving_default`` signature, the signature's input
    name, output names and class count.

    Holds the loaded object itself, not only the signature, so its variables live as long
    as the signature is used.
    """

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self.model_dir = model_dir
        self._loaded = tf.saved_model.load(model_dir)
        self.signature = self._loaded.signatures[serving.SIGNATURE]
        inputs = self.signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(
                f"the {serving.SIGNATURE} signature of {model_dir} takes {sorted(inputs)}: "
                "one input of encoded images is expected"
            )
        (self.input_name,) = inputs
        outputs = self.signature.structured_outputs
        self.output_names = tuple(sorted(outputs))
        self.num_classes = _class_count(outputs)

    def outputs(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Every output of the signature for a batch of encoded images, by name (each
        ``[len(images), ...]``).

        Raises:
            UndecodableImages: when an image in the batch cannot be decoded.
        """
        import tensorflow as tf

        tensor = tf.constant(list(images), dtype=tf.string)
        try:
            outputs = self.signature(**{self.input_name: tensor})
        except tf.errors.InvalidArgumentError as e:
            raise UndecodableImages(error_detail(e)) from None
        return {name: value.numpy() for name, value in outputs.items()}

    def predict(self, images: Sequence[bytes]) -> np.ndarray | list[dict[str, np.ndarray]]:
        """Each image's inference, in the batch's order: a classifier's class probabilities
        (the array ``[len(images), classes]``, a row per image); for an export without
        ``probabilities`` (a detector), a dict per image of its slice of every output.

        Raises:
            UndecodableImages: when an image in the batch cannot be decoded.
        """
        outputs = self.outputs(images)
        if signature.PROBABILITIES_NAME in outputs:
            return outputs[signature.PROBABILITIES_NAME]
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(images))]


# The output whose last axis is the classes: a classifier's probabilities, a detector's
# class scores of each detection (the Object Detection API's name).
CLASS_SCORE_OUTPUTS = (signature.PROBABILITIES_NAME, "detection_multiclass_scores")


def _class_count(outputs: dict[str, Any]) -> int | None:
    """The class count the signature's outputs say, or None when none of them does."""
    for name in CLASS_SCORE_OUTPUTS:
        if name in outputs and outputs[name].shape[-1] is not None:
            return int(outputs[name].shape[-1])
    return None


def load_saved_model(model_dir: str, num_classes: int | None = None) -> LoadedModel:
    """Loads an exported serving SavedModel and, with ``num_classes``, checks its class count
    (a classifier's probabilities, a detector's class scores; an export whose outputs say
    no class count is not checked).

    Raises:
        ValueError: when the model's class count is not ``num_classes`` (e.g. the length
            of its label file).
    """
    model = LoadedModel(model_dir)
    if num_classes is not None and model.num_classes not in (None, num_classes):
        raise ValueError(
            f"the SavedModel {model_dir} outputs scores of {model.num_classes} classes "
            f"but its label file lists {num_classes} labels"
        )
    return model


def signature_outputs(model_dir: str) -> list[str]:
    """The output names of an export's ``serving_default`` signature, read from its
    ``saved_model.pb`` without loading the model (no variables, no functions): what a
    pipeline launcher reads to pick how to write the predictions. Imports TensorFlow (its
    protocol buffers).

    Raises:
        ValueError: when the export has no ``serving_default`` signature.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(io.read_bytes(io.join(model_dir, "saved_model.pb")))
    signatures = saved_model.meta_graphs[0].signature_def
    if serving.SIGNATURE not in signatures:
        raise ValueError(f"the SavedModel {model_dir} has no {serving.SIGNATURE} signature")
    return sorted(signatures[serving.SIGNATURE].outputs)


def error_detail(error: Exception) -> str:
    """The useful line of a TensorFlow error (its message without the graph node dump)."""
    message = getattr(error, "message", None) or str(error)
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "<stack", "\t"))
        and not line.strip().startswith("[[")
    ]
    return lines[0] if lines else message.strip()


class EncodedImageHandler(ModelHandler[bytes, PredictionResult, _ModelT]):
    """What the suite's RunInference handlers of encoded images share (this module's and
    ``remote_handler.RemoteImageHandler``): Beam's metrics of their batches. A subclass
    sets ``_namespace``, its counters' namespace (the stage's name)."""

    _namespace: str

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        """Bytes of encoded images in a batch (for Beam's inference metrics)."""
        return sum(len(element) for element in batch)

    def get_metrics_namespace(self) -> str:
        """Namespace of Beam's RunInference metrics (batch sizes, latencies)."""
        return f"{self._namespace}_RunInference"


class SavedModelHandler(EncodedImageHandler[LoadedModel]):
    """RunInference handler: encoded image bytes in, ``PredictionResult`` out.

    A result's ``inference`` is what ``LoadedModel.predict`` gives the element (a
    classifier's float32 array of class probabilities, another export's dict of the
    element's outputs), or an ``InferenceFailure`` when the model could not decode that
    element's image.
    """

    def __init__(
        self,
        model_dir: str,
        batch_size: int = 32,
        min_batch_size: int | None = None,
        num_classes: int | None = None,
        metrics_namespace: str = "inference",
    ):
        """Configures the handler.

        Args:
            model_dir: The exported SavedModel directory (local path or ``gs://``).
            batch_size: Most images per signature call.
            min_batch_size: Fewest images Beam batches before a call (the last batch of a
                bundle may be smaller); defaults to ``batch_size``, i.e. fixed-size batches.
            num_classes: When given, loading fails unless the model has this many classes
                (e.g. the length of its label file).
            metrics_namespace: Namespace of the handler's Beam counters (the stage's name).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        min_batch_size = batch_size if min_batch_size is None else min_batch_size
        if not 1 <= min_batch_size <= batch_size:
            raise ValueError(
                f"min_batch_size must be in [1, batch_size={batch_size}], got {min_batch_size}"
            )
        super().__init__(min_batch_size=min_batch_size, max_batch_size=batch_size)
        self._model_dir = model_dir
        self._num_classes = num_classes
        self._namespace = metrics_namespace

    def load_model(self) -> LoadedModel:
        """Loads the SavedModel (once per worker process; Beam shares it across threads).

        Raises:
            ValueError: when the model's class count is not the expected ``num_classes``.
        """
        _log.info("%s: loading the SavedModel %s", self._namespace, self._model_dir)
        return load_saved_model(self._model_dir, self._num_classes)

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: LoadedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Runs the signature once on the batch; image by image if an image is bad.

        Args:
            batch: Encoded images (JPEG, PNG, GIF, BMP, WebP).
            model: The loaded model.
            inference_args: Unused (the signature takes no extra arguments).

        Returns:
            One ``PredictionResult`` per element, in order; its ``model_id`` is the
            SavedModel directory that made it.
        """
        model_id = model.model_dir
        try:
            inferences = model.predict(batch)
            return [
                PredictionResult(e, inference, model_id=model_id)
                for e, inference in zip(batch, inferences, strict=True)
            ]
        except UndecodableImages:
            Metrics.counter(self._namespace, "fallback_batches").inc()
            Metrics.counter(self._namespace, "fallback_images").inc(len(batch))
        return list(self._one_by_one(batch, model))

    @staticmethod
    def _one_by_one(batch: Sequence[bytes], model: LoadedModel) -> Iterator[PredictionResult]:
        for element in batch:
            try:
                inference = model.predict([element])[0]
            except UndecodableImages as e:
                inference = InferenceFailure(UNDECODABLE_IMAGE, e.detail)
            yield PredictionResult(element, inference, model_id=model.model_dir)

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Rejects inference args: the serving signature takes none."""
        if inference_args:
            raise ValueError(f"the serving signature takes no inference_args: {inference_args}")


def keyed_handler(
    model_dir: str,
    batch_size: int = 32,
    min_batch_size: int | None = None,
    num_classes: int | None = None,
    metrics_namespace: str = "inference",
) -> KeyedModelHandler:
    """A ``SavedModelHandler`` over ``(key, image bytes)`` elements that keeps the keys.

    Args:
        model_dir: The exported SavedModel directory (local path or ``gs://``).
        batch_size: Most images per signature call.
        min_batch_size: Fewest images batched before a call; defaults to ``batch_size``.
        num_classes: Expected class count, checked when the model is loaded.
        metrics_namespace: Namespace of the handler's Beam counters (the stage's name).

    Returns:
        A handler for ``RunInference`` yielding ``(key, PredictionResult)``.
    """
    return KeyedModelHandler(
        SavedModelHandler(
            model_dir,
            batch_size,
            min_batch_size,
            num_classes=num_classes,
            metrics_namespace=metrics_namespace,
        )
    )
