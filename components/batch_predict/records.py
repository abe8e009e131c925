"""batch_predict's per-element transforms: the listing's lines parsed, the images read,
and each prediction written as its task's record (a classifier's,
``components.classification.predictions``; a detector's,
``components.detection.predictions``); what goes wrong, as error records. And what the run
predicts (``resolve_task``), which picks the record. ``beam_pipeline`` puts them together.
"""

import csv
import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from components.classification.predictions import prediction_record
from components.common import beam as beam_utils, model_handler
from components.common.model_handler import UNDECODABLE_IMAGE, InferenceFailure
from components.detection import predictions as detection_predictions

STAGE = "batch_predict"
ERRORS = "errors"  # Tag of the error side outputs.
# Reasons an input gets no prediction (besides components.common.beam's beam_utils.MISSING_FILE and
# beam_utils.UNREADABLE_FILE, the reading ones).
MALFORMED_LINE = "malformed_line"
_PROGRESS_EVERY = 1000
# What the model predicts (``resolve_task``): it picks how predictions are written.
CLASSIFICATION = "classification"
DETECTION = "detection"
TASKS = (CLASSIFICATION, DETECTION)

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- records


class TaskMismatch(ValueError):
    """The model answered another task's outputs than the run writes (an endpoint serving
    a detector to a classification run, or the reverse)."""


def _error(uri: str, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(STAGE, "errors").inc()
    Metrics.counter(STAGE, f"errors_{reason}").inc()
    return beam.pvalue.TaggedOutput(ERRORS, beam_utils.error_record(STAGE, uri, reason, detail))


# --------------------------------------------------------------------------- DoFns


class ParseListingLine(beam.DoFn):
    """``(listing file, line)`` to ``(uri, true label or "")``; bad lines go to ``errors``."""

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        listing, line = element
        text = line.strip()
        try:
            fields = beam_utils.parse_csv_line(text)
        except csv.Error as e:
            yield _error(listing, MALFORMED_LINE, f"{e}: {text!r}")
            return
        if not fields:
            return
        if len(fields) > 2 or not fields[0]:
            detail = f"expected 'uri' or 'uri,label', got {len(fields)} field(s): {text!r}"
            yield _error(listing, MALFORMED_LINE, detail)
            return
        if beam_utils.is_header(fields):
            Metrics.counter(STAGE, "header_lines").inc()
            return
        Metrics.counter(STAGE, "images_listed").inc()
        yield (
            beam_utils.resolve_listed_uri(fields[0], listing),
            fields[1] if len(fields) == 2 else "",
        )


class ReadImage(beam.DoFn):
    """``(uri, true label)`` to ``((uri, true label), bytes)``; unreadable files to ``errors``."""

    def setup(self) -> None:
        self._read = Metrics.counter(STAGE, "images_read")
        self._bytes = Metrics.counter(STAGE, "image_bytes")

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        uri, _ = element
        try:
            data = beam_utils.read_image_file(uri)
        except beam_utils.UnreadableFile as e:
            yield _error(uri, e.reason, e.detail)
            return
        self._read.inc()
        self._bytes.inc(len(data))
        yield element, data


class _ToRecord(beam.DoFn):
    """``((uri, listed label), PredictionResult)`` to an output record, or to ``errors``;
    a subclass writes its task's ``record`` of the inference its ``task`` answers.

    An inference of the other task (an endpoint serving another model) raises
    ``TaskMismatch``: the run stops rather than record every image as failed."""

    task = ""

    def setup(self) -> None:
        self._predicted = Metrics.counter(STAGE, "predicted")
        self._seen = 0

    def record(
        self, uri: str, listed: str, result: PredictionResult
    ) -> dict[str, Any] | InferenceFailure:
        """The output record of one image, or why it has none (it goes to ``errors``)."""
        raise NotImplementedError

    def process(self, element: tuple[tuple[str, str], PredictionResult]) -> Iterator[Any]:
        (uri, listed), result = element
        record = result.inference
        if not isinstance(record, InferenceFailure):
            answered = DETECTION if isinstance(record, dict) else CLASSIFICATION
            if answered != self.task:
                raise TaskMismatch(
                    f"the model answered a {answered} model's outputs for {uri}, but this "
                    f"run writes {self.task} predictions: the endpoint serves another model "
                    f"(an endpoint named with labels_uri alone: give task={answered!r})"
                )
            record = self.record(uri, listed, result)
        if isinstance(record, InferenceFailure):
            yield _error(uri, record.reason, record.detail)
            return
        self._predicted.inc()
        self._seen += 1
        if self._seen % _PROGRESS_EVERY == 0:
            _log.info("batch_predict: this worker has predicted %d images", self._seen)
        yield record


class ToPredictionRecord(_ToRecord):
    """A classifier's result to its record: the top class, the ``top_k`` classes, the
    listed label (``components.classification.predictions``)."""

    task = CLASSIFICATION

    def __init__(self, labels: list[str], top_k: int):
        self._labels = list(labels)
        self._top_k = top_k

    def record(self, uri: str, listed: str, result: PredictionResult) -> dict[str, Any]:
        return prediction_record(uri, result.inference, self._labels, self._top_k, listed)


class ToDetectionRecord(_ToRecord):
    """A detector's result to its record: the detections with their boxes normalized and
    in the image's pixels, the listed classes (``components.detection.predictions``), in
    the Object Detection API's terms or Vertex AI's (``detection_format``)."""

    task = DETECTION

    def __init__(
        self,
        labels: list[str],
        manifest: bool = False,
        detection_format: str = detection_predictions.OBJECT_DETECTION_API,
    ):
        self._labels = list(labels)
        # In a create_tfrecords manifest every line lists its image's classes: none is
        # an image without objects, not an unlabelled one.
        self._manifest = manifest
        self._format = detection_format

    def record(
        self, uri: str, listed: str, result: PredictionResult
    ) -> dict[str, Any] | InferenceFailure:
        try:
            return detection_predictions.image_record(
                uri,
                result.inference,
                result.example,
                true_classes=listed.split() if listed or self._manifest else None,
                labels=self._labels,
                detection_format=self._format,
            )
        except ValueError as e:
            return InferenceFailure(UNDECODABLE_IMAGE, str(e))


def _stats(counts: dict[str, int]) -> dict[str, Any]:
    by_reason = {reason: n for reason, n in sorted(counts.items()) if reason != "predicted"}
    return {
        "rows": counts.get("predicted", 0),
        "errors": sum(by_reason.values()),
        "errors_by_reason": by_reason,
    }


def export_task(model_dir: str) -> str:
    """What an export predicts, by its serving signature's outputs (read from its
    ``saved_model.pb``, the model not loaded): ``DETECTION`` when it answers
    ``detection_boxes``, else ``CLASSIFICATION``; no ``model_dir`` (an endpoint with a
    label file): ``CLASSIFICATION``."""
    if model_dir and detection_predictions.is_detection_export(
        model_handler.signature_outputs(model_dir)
    ):
        return DETECTION
    return CLASSIFICATION


def resolve_task(model_dir: str, task: str = "", endpoint: str = "") -> str:
    """The run's task: the export's in ``model_dir`` (``export_task``), which ``task``
    must then agree with; without an export, ``task`` (``CLASSIFICATION`` when empty).

    Raises:
        ValueError: for a ``task`` that is not one of ``TASKS`` or that the export
            contradicts.
    """
    if task and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (or empty), got {task!r}")
    if not model_dir:
        return task or CLASSIFICATION
    exported = export_task(model_dir)
    if task and task != exported:
        served = f"the endpoint {endpoint} is given, but " if endpoint else ""
        raise ValueError(
            f"task={task!r}, but {served}the export {model_dir} is a {exported} model "
            f"(its serving signature's outputs): leave task empty, or give the {task} "
            "model's export"
        )
    return exported


def record_formatter(
    task: str,
    labels: list[str],
    top_k: int,
    manifest: bool = False,
    detection_format: str = detection_predictions.OBJECT_DETECTION_API,
) -> _ToRecord:
    """The DoFn writing each image's record for the task (``manifest``: the listing is a
    create_tfrecords manifest; ``detection_format``: a detector's lines' shape)."""
    if task == DETECTION:
        return ToDetectionRecord(labels, manifest, detection_format)
    return ToPredictionRecord(labels, top_k)
