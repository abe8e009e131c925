"""The batch_predict Beam pipeline: an exported SavedModel, or a deployed model, over many
images, to JSON Lines. The model is a classifier (``components.export``) or a detector
(``components.detection.export``); which one, the export's serving signature's outputs say
(``detection_boxes``: a detector), or ``task`` for an endpoint named without its export
(``labels_uri``), and that picks how each image's line is written (``resolve_task``).

Input, one of:

* ``input_uris``: a file (local or ``gs://``; a glob matches several) listing images,
  either as a CSV ``uri,label`` (the manifests create_tfrecords writes, the book's format;
  for a detector ``uri,classes``, the image's classes space-separated, as detection's
  create_tfrecords writes its manifests) or one URI per line. A header line (e.g.
  ``uri,label``), blank lines and surrounding whitespace are tolerated; a relative URI is
  relative to the listing's folder.
* ``dataset_dir``: a dataset directory written by create_tfrecords, whose test manifest
  ``<dataset_dir>/manifests/test.csv`` is the listing.

Each image's bytes are read (``FileSystems``: local, ``gs://``, ...), batched and run
through the SavedModel's ``serving_default`` signature by Beam's ``RunInference`` with
``model_handler.SavedModelHandler``, loaded in the workers; or, with an ``endpoint``, sent
to a model already serving, one request per batch (``remote_handler``): a TF Serving REST
URL (``http(s)://host:port/v1/models/<name>``: the local model server, KServe, TF Serving)
or a Vertex AI endpoint (``projects/<p>/locations/<l>/endpoints/<id>``), with retries and
backoff on 429/502/503/504, connection errors and timeouts. The labels then come from
``labels_uri`` or, when that is empty, from the export in ``model_dir`` (neither API
answers a label list). Output, under ``output_dir``::

    predictions-SSSSS-of-NNNNN.jsonl   one JSON object per image; a classifier's
      (components/classification/predictions.py):
        {"uri", "label", "probability", "top_k": [{"label", "probability"}, ...],
         "true_label" (when the listing gave a label)}
      a detector's (components/detection/predictions.py), its num_detections real
      detections, highest score first:
        {"uri", "detections": [{"label", "class" (from 1), "score",
                                "box": [ymin, xmin, ymax, xmax] (normalized, in [0, 1]),
                                "bbox": [x, y, width, height] (COCO, in the image's
                                         pixels: box times the size in its header)}, ...],
         "true_classes": [...] (when the listing gave classes)}
      or, with ``detection_format="vertex"``, the same detections as a Vertex AI batch
      prediction job of an AutoML image object detection model writes them:
        {"instance": {"content": uri, "mimeType"},
         "prediction": {"ids", "displayNames", "confidences",
                        "bboxes": [[xMin, xMax, yMin, yMax], ...] (normalized)},
         "true_classes": [...] (when the listing gave classes)}
    errors.jsonl                       one JSON object per input that got no prediction:
        {"uri", "reason", "detail", "stage": "batch_predict"}; always written
    stats.json                         {"rows", "errors", "errors_by_reason"}

Each listing line gets one output line (a URI listed twice is predicted twice), in no
particular order.

Bad input is data, not a crash: a missing, unreadable or empty file, a malformed listing
line and an image the model cannot decode (or, for a detector, whose size Pillow cannot
read from its header) are each counted (Beam counters) and written to ``errors.jsonl``
with their reason, and no good image is lost with them. So are the images a remote
endpoint gave no answer for (``remote_unavailable`` once the retries are spent,
``remote_error`` for another error answer). The run fails, after writing everything, only
when the share of errors passes ``max_error_fraction``.

An endpoint answers what its model predicts (``remote_handler.inference_of``: the
answer's ``detection_boxes`` make it a detector's), and each answer must be of the run's
task: an endpoint serving a classifier to a detection run, or the reverse, stops the run
(``records.TaskMismatch``) rather than write every image to ``errors.jsonl``. Not every endpoint
says its model's outputs before it answers (a Vertex AI endpoint never does), and the
lines' shape is fixed before the first one, so the task is the export's (``model_dir``) or
``task``'s.

On Dataflow, pass ``runner="DataflowRunner"`` and ``dataflow`` settings (project, region,
temp_location on gs://, the workers' image: the batch_predict stage's dataflow-worker
image) with ``gs://`` model, listing, images and output.
"""

import json
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.runners.runner import PipelineState

from components.batch_predict.records import (
    CLASSIFICATION,
    ERRORS,
    STAGE,
    ParseListingLine,
    ReadImage,
    _stats,
    record_formatter,
    resolve_task,
)
from components.common import (
    beam as beam_utils,
    io,
    labels as labels_lib,
    model_handler,
    remote_handler,
    schema,
    serving,
)
from components.detection import predictions as detection_predictions

PREDICTIONS_PREFIX = "predictions"
PREDICTIONS_SUFFIX = ".jsonl"
SHARD_NAME_TEMPLATE = "-SSSSS-of-NNNNN"
# Beam's adaptive throttling delay for an endpoint (RemoteModelHandler's default).
THROTTLE_DELAY_S = remote_handler.DEFAULT_THROTTLE_DELAY_S

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pipeline


def _write_single_file(pcoll: beam.PCollection, path: str, step: str) -> None:
    """Writes the lines of a PCollection to exactly ``path`` (written even when empty)."""
    _ = pcoll | step >> beam.io.WriteToText(path, shard_name_template="")


def predictions_pattern(output_dir: str) -> str:
    """The glob matching the prediction shards under ``output_dir``."""
    return io.join(output_dir, f"{PREDICTIONS_PREFIX}-*-of-*{PREDICTIONS_SUFFIX}")


def inference_handler(
    model_dir: str,
    labels: list[str],
    batch_size: int = 32,
    endpoint: str = "",
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
) -> KeyedModelHandler:
    """The keyed RunInference handler: the SavedModel in the workers, or the endpoint."""
    if endpoint:
        return remote_handler.keyed_remote_handler(
            endpoint,
            labels,
            batch_size,
            timeout_s=request_timeout_s,
            num_retries=max_retries,
            throttle_delay_s=THROTTLE_DELAY_S,
            metrics_namespace=STAGE,
        )
    return model_handler.keyed_handler(
        model_dir, batch_size, num_classes=len(labels), metrics_namespace=STAGE
    )


def build_pipeline(
    pipeline: beam.Pipeline,
    model_dir: str,
    output_dir: str,
    listing: str,
    labels: list[str],
    *,
    top_k: int = 3,
    batch_size: int = 32,
    endpoint: str = "",
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    task: str = CLASSIFICATION,
    manifest: bool = False,
    detection_format: str = detection_predictions.OBJECT_DETECTION_API,
) -> None:
    """Adds the stage's transforms to a Beam pipeline (``run`` builds and runs one).

    Args:
        pipeline: The pipeline to add to.
        model_dir: The exported SavedModel directory (unused with an ``endpoint``).
        output_dir: Where to write predictions, errors and stats.
        listing: The file (or glob) listing the images: ``uri,label`` CSV or one URI a line.
        labels: The model's labels, in class-index order.
        top_k: Classes listed per image (a classifier's).
        batch_size: Images per model call (per request, with an endpoint).
        endpoint: A deployed model to call instead of loading ``model_dir`` (see ``run``).
        request_timeout_s: Longest wait for one answer of the endpoint.
        max_retries: Retries of a request the endpoint did not answer.
        task: What the model predicts (``resolve_task``): how its records are written.
        manifest: ``listing`` is a dataset's manifest (create_tfrecords'), whose every
            line lists its image's labels: a detection image listed without classes has
            none (``true_classes: []``).
        detection_format: A detector's lines: ``"object_detection_api"`` or
            ``"vertex"`` (see the module's docstring).
    """
    listed = (
        pipeline
        | "ReadListing" >> beam.io.ReadFromTextWithFilename(listing)
        | "ParseListing" >> beam.ParDo(ParseListingLine()).with_outputs(ERRORS, main="ok")
    )
    # A fusion break: spreads the reads and inference of a listing over the workers.
    images = (
        listed.ok
        | "Redistribute" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(ReadImage()).with_outputs(ERRORS, main="ok")
    )
    handler = inference_handler(
        model_dir, labels, batch_size, endpoint, request_timeout_s, max_retries
    )
    formatted = (
        images.ok
        | "RunInference" >> RunInference(handler)
        | "ToRecords"
        >> beam.ParDo(
            record_formatter(task, labels, top_k, manifest, detection_format)
        ).with_outputs(ERRORS, main="ok")
    )
    predictions = formatted.ok
    _ = (
        predictions
        | "PredictionLines" >> beam.Map(json.dumps)
        | "WritePredictions"
        >> beam.io.WriteToText(
            io.join(output_dir, PREDICTIONS_PREFIX),
            file_name_suffix=PREDICTIONS_SUFFIX,
            shard_name_template=SHARD_NAME_TEMPLATE,
        )
    )
    errors = (listed[ERRORS], images[ERRORS], formatted[ERRORS]) | "AllErrors" >> beam.Flatten()
    _write_single_file(
        errors | "ErrorLines" >> beam.Map(json.dumps, sort_keys=True),
        io.join(output_dir, schema.ERRORS_FILE),
        "WriteErrors",
    )
    events = (
        predictions | "PredictedEvents" >> beam.Map(lambda _: "predicted"),
        errors | "ErrorEvents" >> beam.Map(lambda error: error["reason"]),
    ) | "AllEvents" >> beam.Flatten()
    _write_single_file(
        events
        | "CountEvents" >> beam.combiners.Count.PerElement()
        | "ToDict" >> beam.combiners.ToDict()
        | "Stats" >> beam.Map(lambda counts: json.dumps(_stats(counts), indent=2, sort_keys=True)),
        io.join(output_dir, schema.STATS_FILE),
        "WriteStats",
    )


# --------------------------------------------------------------------------- driver


def resolve_listing(input_uris: str, dataset_dir: str) -> str:
    """The file listing the images: ``input_uris``, or the dataset's test manifest.

    Raises:
        ValueError: unless exactly one of ``input_uris`` and ``dataset_dir`` is given.
        FileNotFoundError: when the listing does not exist.
    """
    if bool(input_uris) == bool(dataset_dir):
        raise ValueError(
            "give exactly one input: input_uris (a file listing images: 'uri,label' CSV or "
            "one URI per line) or dataset_dir (a create_tfrecords dataset directory, whose "
            f"manifests/test.csv is used); got input_uris={input_uris!r}, "
            f"dataset_dir={dataset_dir!r}"
        )
    listing = input_uris or schema.manifest_path(dataset_dir, "test")
    if not FileSystems.match([listing])[0].metadata_list:
        what = "input_uris" if input_uris else "the dataset's test manifest"
        raise FileNotFoundError(f"no file matches {what}: {listing}")
    return listing


def resolve_labels(model_dir: str, labels_uri: str, endpoint: str) -> tuple[list[str], str]:
    """The model's labels and where they were read: ``labels_uri`` (for an endpoint only),
    else the export's ``assets.extra/labels.txt`` in ``model_dir``.

    Raises:
        ValueError: without ``model_dir`` and an endpoint, with an endpoint and neither
            ``labels_uri`` nor ``model_dir``, or with ``labels_uri`` but no endpoint (the
            export carries its own labels).
        FileNotFoundError: when the label file does not exist.
    """
    if not endpoint:
        if not model_dir:
            raise ValueError("model_dir is required (or an endpoint to call instead)")
        if labels_uri:
            raise ValueError(
                "labels_uri is for an endpoint: a model loaded from model_dir has its own "
                "labels (assets.extra/labels.txt)"
            )
    if labels_uri:
        return labels_lib.read_labels(labels_uri), labels_uri
    if not model_dir:
        raise ValueError(
            f"the endpoint {endpoint} does not say its labels: give labels_uri (a label "
            "file, one label a line in class-index order) or model_dir (the exported model "
            "it serves, whose assets.extra/labels.txt is read)"
        )
    return serving.read_export_labels(model_dir), serving.extra_path(
        model_dir, labels_lib.LABELS_FILE
    )


def _remove_stale_shards(output_dir: str) -> None:
    beam_utils.delete_matching([predictions_pattern(output_dir)])


def run(
    model_dir: str,
    output_dir: str,
    input_uris: str = "",
    dataset_dir: str = "",
    top_k: int = 3,
    batch_size: int = 32,
    runner: str = "DirectRunner",
    beam_args: Sequence[str] = (),
    max_error_fraction: float = 0.1,
    dataflow: beam_utils.DataflowSettings | None = None,
    endpoint: str = "",
    labels_uri: str = "",
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    task: str = "",
    detection_format: str = detection_predictions.OBJECT_DETECTION_API,
) -> dict[str, Any]:
    """Runs batch prediction with an exported SavedModel, or a deployed one, and waits for it.

    Args:
        model_dir: The exported SavedModel directory (local path or ``gs://``), with its
            labels in ``assets.extra/labels.txt``: a classifier's or a detector's (see the
            module's docstring for each one's output lines). With an ``endpoint`` it is not
            loaded, only its labels are read (unless ``labels_uri`` is given; then it may
            be "").
        output_dir: Where to write ``predictions-SSSSS-of-NNNNN.jsonl``, ``errors.jsonl``
            and ``stats.json`` (local path or ``gs://``); shards of an earlier run there
            are replaced.
        input_uris: A file listing the images (a ``uri,label`` CSV or one URI per line;
            local or ``gs://``; a glob matches several). Exclusive with ``dataset_dir``.
        dataset_dir: A create_tfrecords dataset directory: its ``manifests/test.csv`` is
            the listing. Exclusive with ``input_uris``.
        top_k: A classifier's classes listed per image, most probable first (capped at the
            class count); a detector lists all its detections.
        batch_size: Images per model call.
        runner: Beam runner, e.g. ``"DirectRunner"`` or ``"DataflowRunner"``. Beam's
            DirectRunner first tries the Prism runner, whose binary it downloads from
            GitHub, and falls back to the in-process ``"FnApiRunner"``; name that one
            directly on a machine without internet access.
        beam_args: Other Beam pipeline arguments, e.g. ``["--job_name=j"]``; one also set
            by a named parameter below must agree with it.
        max_error_fraction: Largest tolerated share of inputs without a prediction; above
            it the run fails (after writing every output).
        dataflow: The named Dataflow settings (project, region, machines, the workers'
            image: the stage's ``dataflow-worker`` image); None: none.
        endpoint: A deployed model to call instead of loading ``model_dir`` in the
            workers: a TF Serving REST model URL (``http(s)://host:port/v1/models/<name>``:
            the local model server, KServe, TF Serving) or a Vertex AI endpoint
            (``projects/<p>/locations/<l>/endpoints/<id>``); one request per
            ``batch_size`` images. Empty: load the model.
        labels_uri: With an endpoint, a label file (one label a line, in class-index
            order) naming the endpoint model's classes; empty: the labels of the export in
            ``model_dir``.
        request_timeout_s: With an endpoint, the longest wait for one answer.
        max_retries: With an endpoint, how often a request is sent again after a 429,
            502, 503 or 504, a connection error or a timeout (Beam's exponential backoff,
            from 5 s); past them its images go to ``errors.jsonl`` as
            ``remote_unavailable``.
        task: What the model predicts, ``"classification"`` or ``"detection"``, for an
            endpoint named with ``labels_uri`` and no ``model_dir``; empty: the export's
            (its serving signature's outputs), or classification without one. An endpoint
            that answers the other task's outputs stops the run.
        detection_format: How a detector's lines are written: ``"object_detection_api"``
            (the Object Detection API's terms: ``detections`` with ``box`` and ``bbox``)
            or ``"vertex"`` (a Vertex AI AutoML image object detection batch prediction
            line: ``instance``, ``prediction`` with ``ids``, ``displayNames``,
            ``confidences``, ``bboxes`` as ``[xMin, xMax, yMin, yMax]``). Only
            ``"object_detection_api"`` for a classifier.

    Returns:
        ``rows`` (images predicted), ``errors`` (inputs without a prediction),
        ``errors_by_reason``, ``predictions`` (glob of the prediction shards),
        ``prediction_files`` (their paths), ``errors_path``, ``labels``,
        ``labels_source`` (the file they were read from), ``endpoint`` (empty: the model
        ran in the workers), ``task`` (``classification`` or ``detection``: what the
        model predicts), ``top_k`` (effective; a classifier's only),
        ``detection_format`` (a detector's only), ``input`` (the listing read) and
        ``counters`` (the stage's Beam counters, when the runner reports them; with an
        endpoint ``remote_requests``, ``remote_retries``, ``remote_failures``, ...).

    Raises:
        ValueError: on invalid arguments (a ``task`` the export contradicts, the Vertex
            format for a classifier among them), or an error share above
            ``max_error_fraction``.
        records.TaskMismatch: when the endpoint answers another task's outputs than the run's
            (raised by the pipeline, which stops).
        FileNotFoundError: when the listing or the model's label file does not exist.
    """
    listing = resolve_listing(input_uris, dataset_dir)
    if not output_dir:
        raise ValueError("output_dir is required")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= max_error_fraction <= 1:
        raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
    if endpoint:
        remote_handler.endpoint_kind(endpoint)
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if detection_format not in detection_predictions.DETECTION_FORMATS:
        raise ValueError(
            f"detection_format must be one of {detection_predictions.DETECTION_FORMATS}, "
            f"got {detection_format!r}"
        )
    labels, labels_source = resolve_labels(model_dir, labels_uri, endpoint)
    task = resolve_task(model_dir, task, endpoint)
    if task == CLASSIFICATION and detection_format != detection_predictions.OBJECT_DETECTION_API:
        raise ValueError(
            f"detection_format={detection_format!r} is a detector's output; the model "
            f"({endpoint or model_dir}) is a classifier"
        )

    io.makedirs(output_dir)
    _remove_stale_shards(output_dir)
    _log.info(
        "batch_predict: %s with %s (%s) -> %s (%s)",
        listing,
        endpoint or model_dir,
        task,
        output_dir,
        runner,
    )
    pipeline = beam_utils.make_pipeline(runner, beam_args, dataflow=dataflow)
    build_pipeline(
        pipeline,
        model_dir,
        output_dir,
        listing,
        labels,
        top_k=top_k,
        batch_size=batch_size,
        endpoint=endpoint,
        request_timeout_s=request_timeout_s,
        max_retries=max_retries,
        task=task,
        manifest=not input_uris,
        detection_format=detection_format,
    )
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, PipelineState.DONE):
        raise RuntimeError(f"the batch_predict pipeline ended in state {state}")

    stats = io.read_json(io.join(output_dir, schema.STATS_FILE))
    errors_path = io.join(output_dir, schema.ERRORS_FILE)
    summary = {
        **stats,
        "predictions": predictions_pattern(output_dir),
        "prediction_files": io.glob(predictions_pattern(output_dir)),
        "errors_path": errors_path,
        "labels": labels,
        "labels_source": labels_source,
        "endpoint": endpoint,
        "task": task,
        **(
            {"top_k": min(top_k, len(labels))}
            if task == CLASSIFICATION
            else {"detection_format": detection_format}
        ),
        "input": listing,
        "counters": beam_utils.stage_counters(result, STAGE),
    }
    rows, errors = stats["rows"], stats["errors"]
    _log.info("batch_predict: %d prediction(s) in %s", rows, output_dir)
    if errors:
        _log.warning(
            "batch_predict: %d input(s) got no prediction (%s); see %s",
            errors,
            beam_utils.reasons_summary(stats["errors_by_reason"]),
            errors_path,
        )
    total = rows + errors
    if total == 0:
        _log.warning("batch_predict: the listing %s names no image", listing)
    elif errors / total > max_error_fraction:
        raise ValueError(
            f"batch_predict got no prediction for {errors} of {total} inputs "
            f"({errors / total:.1%}), more than max_error_fraction={max_error_fraction} "
            f"allows: {beam_utils.reasons_summary(stats['errors_by_reason'])}. Each one and its reason is "
            f"listed in {errors_path}"
        )
    return summary
