"""The stream_predict Beam pipeline: Pub/Sub messages in, a prediction message per image out.

    input subscription ──► parse ──► read URI ──► RunInference ──► prediction ──► output topic
                             └───────────┴─────────────┴──► dead-letter topic (with the reason)

The message contract is in ``messages.py``. The model is a classifier or a detector; each
prediction's outputs say which (a detector's have ``detection_boxes``: the in-worker
handler's by the export's signature, an endpoint's by its answer, as batch prediction
reads them), and that picks the message: the classifier's top classes, or the detector's
detections as batch prediction writes them. The model is, one of:

* a model repository and model name (what deploy publishes locally): the newest version
  serves, and a version published while the stream runs is picked up without a restart
  (``model_refresh.py``);
* one exported SavedModel directory (``model_dir``), fixed for the job's life;
* a deployed model (``endpoint``: a TF Serving REST model URL such as the local server's or
  KServe's, or a Vertex AI endpoint), called with batches of images, retried with backoff
  on 429/503 (``components/common/remote_handler.py``), with its labels from ``labels_uri``.

Runs with ``--streaming`` on the DirectRunner (against the Pub/Sub emulator when
``PUBSUB_EMULATOR_HOST`` names one) or on Dataflow, where ``run`` launches the job and
returns its id without waiting.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.transforms import trigger, window

from components.classification.predictions import prediction_record
from components.common import (
    beam as beam_utils,
    io,
    labels as labels_lib,
    model_repository as model_repository_lib,
    remote_handler,
    serving,
)
from components.common.model_handler import UNDECODABLE_IMAGE, InferenceFailure
from components.detection import predictions as detection_predictions
from components.stream_predict import messages, model_refresh
from components.stream_predict.messages import STAGE, Request

DEAD = "dead"  # Tag of the dead-letter side outputs.
# How late a line may reach its file window and still be written: a safety net, lines are
# stamped when predicted, which the watermark (the oldest unread publish time) trails.
LATE_PREDICTIONS_S = 24 * 3600
_PROGRESS_EVERY = 1000

_log = logging.getLogger(__name__)


def _dead(request: Request, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(STAGE, "dead_letters").inc()
    Metrics.counter(STAGE, f"dead_{reason}").inc()
    return beam.pvalue.TaggedOutput(DEAD, messages.dead_letter(request, reason, detail))


class ParseMessage(beam.DoFn):
    """A ``PubsubMessage`` to ``(Request, image bytes)``; a URI is read first."""

    def setup(self) -> None:
        self._received = Metrics.counter(STAGE, "messages")

    def process(self, message: PubsubMessage) -> Iterator[Any]:
        self._received.inc()
        message_id = message.message_id or ""
        try:
            request, kind = messages.parse_message(message.data, message.attributes, message_id)
        except messages.BadMessage as e:
            yield _dead(
                Request(message_id, dict(message.attributes or {}), "", b""), e.reason, e.detail
            )
            return
        if kind == "bytes":
            yield request, request.data
            return
        try:
            data = beam_utils.read_image_file(request.uri)
        except beam_utils.UnreadableFile as e:
            yield _dead(request, e.reason, e.detail)
            return
        yield request, data


class ToPredictionMessage(beam.DoFn):
    """``(Request, PredictionResult)`` to a prediction message, or to a dead letter: the
    classifier's record (``components.classification.predictions``) for class
    probabilities, the detector's (``components.detection.predictions``, its boxes in the
    pixels of the image's header) for a detector's outputs.

    Labels are read from the SavedModel that made each prediction (its ``model_id``), so
    a new version with other labels is reported with its own.
    """

    def __init__(self, top_k: int, endpoint: str = "", endpoint_labels: Sequence[str] = ()):
        self._top_k = top_k
        self._endpoint = endpoint
        self._endpoint_labels = list(endpoint_labels)

    def setup(self) -> None:
        self._predicted = Metrics.counter(STAGE, "predicted")

    def process(self, element: tuple[Request, PredictionResult]) -> Iterator[Any]:
        request, result = element
        if isinstance(result.inference, InferenceFailure):
            yield _dead(request, result.inference.reason, result.inference.detail)
            return
        if self._endpoint:
            labels, version = self._endpoint_labels, self._endpoint
        else:
            model_dir = result.model_id or ""
            labels, version = _export_labels(model_dir), model_version(model_dir)
        outputs = result.inference
        if not isinstance(outputs, dict):
            record = prediction_record(request.uri, outputs, labels, self._top_k)
        elif not detection_predictions.is_detection_export(list(outputs)):
            detail = f"the model answers {sorted(outputs)}: neither probabilities nor detections"
            yield _dead(request, messages.UNKNOWN_OUTPUTS, detail)
            return
        else:
            try:
                record = detection_predictions.image_record(
                    request.uri, outputs, result.example, labels=labels
                )
            except ValueError as e:
                yield _dead(request, UNDECODABLE_IMAGE, str(e))
                return
        self._predicted.inc()
        seen = next(_PREDICTED_HERE)
        if seen % _PROGRESS_EVERY == 0:
            _log.info("stream_predict: this worker has predicted %d images", seen)
        yield messages.prediction_message(request, record, version)


# Per worker process, not per DoFn: the DirectRunner's streaming engine sets a DoFn up
# again for every bundle. A version's directory never changes, so its labels are kept.
_PREDICTED_HERE = itertools.count(1)


@functools.lru_cache(maxsize=16)
def _export_labels(model_dir: str) -> list[str]:
    return serving.read_export_labels(model_dir)


def model_version(model_dir: str) -> str:
    """The version a model directory serves: its repository version number, or its path."""
    version = model_repository_lib.version_of(model_dir)
    return model_dir if version is None else str(version)


def _stamped_line(message: tuple[bytes, dict[str, str]]) -> window.TimestampedValue:
    """A prediction message's JSON as a file line, timestamped with the time of prediction:
    the windows the files cover. RunInference's batching leaves its outputs with the
    earliest timestamp there is, whose window the watermark has long passed: windowed
    by that, every line would be dropped as late."""
    return window.TimestampedValue(message[0].decode("utf-8"), time.time())


def prediction_file_name(window, pane, shard_index, total_shards, compression, destination) -> str:
    """``predictions-<window start>-<window end>-<firing>.jsonl``: a window's files, one per
    firing of its trigger (early, on time, late). Beam's default naming leaves the firing
    out (apache/beam#18721), so a later firing would overwrite an earlier one's file."""
    del shard_index, total_shards, compression, destination  # one shard, uncompressed
    start = window.start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
    end = window.end.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
    return f"predictions-{start}-{end}-{getattr(pane, 'index', 0):04d}.jsonl"


def _to_pubsub(message: tuple[bytes, dict[str, str]]) -> PubsubMessage:
    data, attributes = message
    return PubsubMessage(data, attributes)


def _handler(
    model_repository: str,
    model_name: str,
    model_dir: str,
    endpoint: str,
    labels: Sequence[str],
    batch_size: int,
    refresh_seconds: float,
    request_timeout_s: float,
    max_retries: int,
) -> Any:
    if endpoint:
        return remote_handler.keyed_remote_handler(
            endpoint,
            labels,
            batch_size,
            timeout_s=request_timeout_s,
            num_retries=max_retries,
            metrics_namespace=STAGE,
        )
    if model_repository:
        return model_refresh.keyed_repository_handler(
            model_repository, model_name, batch_size, refresh_seconds, metrics_namespace=STAGE
        )
    return model_refresh.keyed_fixed_handler(model_dir, batch_size, metrics_namespace=STAGE)


def build_pipeline(
    pipeline: beam.Pipeline,
    input_subscription: str,
    output_topic: str,
    dead_letter_topic: str,
    *,
    model_repository: str = "",
    model_name: str = "",
    model_dir: str = "",
    endpoint: str = "",
    endpoint_labels: Sequence[str] = (),
    top_k: int = 3,
    batch_size: int = 16,
    refresh_seconds: float = 60,
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    output_dir: str = "",
    file_window_seconds: int = 60,
) -> None:
    """Adds the stage's transforms to a streaming Beam pipeline (``run`` builds and runs one).

    Args:
        pipeline: The pipeline to add to (streaming).
        input_subscription: ``projects/<p>/subscriptions/<s>`` to read images from.
        output_topic: ``projects/<p>/topics/<t>`` for the prediction messages.
        dead_letter_topic: ``projects/<p>/topics/<t>`` for messages without a prediction.
        model_repository: A model repository (with ``model_name``): the newest version
            serves and newer ones are picked up. Exclusive with ``model_dir``.
        model_name: The model's name in the repository.
        model_dir: One exported SavedModel, fixed. Exclusive with ``model_repository``.
        endpoint: A deployed model to call instead (TF Serving REST URL or Vertex AI
            endpoint); exclusive with the two above.
        endpoint_labels: The endpoint's model's labels, in class-index order.
        top_k: A classifier's classes listed per image.
        batch_size: Most images per model call (per request to an endpoint).
        refresh_seconds: How often a worker looks for a newer model version.
        request_timeout_s: Longest wait for one answer of the endpoint.
        max_retries: Retries of a request the endpoint did not answer (429, 503, ...).
        output_dir: Also write the predictions (the messages' JSON, one a line) to files
            here, per window of ``file_window_seconds`` (``prediction_file_name``); empty:
            the topic only.
        file_window_seconds: The files' windows (by time of prediction); a window's file
            is written when the window closes and, while it is open, every this many
            seconds.
    """
    parsed = (
        pipeline
        | "ReadMessages"
        >> beam.io.ReadFromPubSub(subscription=input_subscription, with_attributes=True)
        | "Parse" >> beam.ParDo(ParseMessage()).with_outputs(DEAD, main="ok")
    )
    handler = _handler(
        model_repository,
        model_name,
        model_dir,
        endpoint,
        endpoint_labels,
        batch_size,
        refresh_seconds,
        request_timeout_s,
        max_retries,
    )
    predicted = (
        parsed.ok
        | "RunInference" >> RunInference(handler)
        | "ToMessages"
        >> beam.ParDo(ToPredictionMessage(top_k, endpoint, endpoint_labels)).with_outputs(
            DEAD, main="ok"
        )
    )
    _ = (
        predicted.ok
        | "PredictionMessages" >> beam.Map(_to_pubsub)
        | "WritePredictions" >> beam.io.WriteToPubSub(output_topic, with_attributes=True)
    )
    if output_dir:
        _ = (
            predicted.ok
            | "PredictionLines" >> beam.Map(_stamped_line)
            | "FileWindows"
            >> beam.WindowInto(
                window.FixedWindows(file_window_seconds),
                trigger=trigger.AfterWatermark(
                    early=trigger.AfterProcessingTime(file_window_seconds),
                    late=trigger.AfterCount(1),
                ),
                allowed_lateness=LATE_PREDICTIONS_S,
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
            )
            | "WritePredictionFiles"
            >> fileio.WriteToFiles(
                output_dir,
                shards=1,
                max_writers_per_bundle=0,  # one file per window and firing, not per bundle
                file_naming=prediction_file_name,
            )
        )
    _ = (
        (parsed[DEAD], predicted[DEAD])
        | "AllDeadLetters" >> beam.Flatten()
        | "DeadLetterMessages" >> beam.Map(_to_pubsub)
        | "WriteDeadLetters" >> beam.io.WriteToPubSub(dead_letter_topic, with_attributes=True)
    )


def _check(
    input_subscription: str,
    output_topic: str,
    dead_letter_topic: str,
    model_repository: str,
    model_name: str,
    model_dir: str,
    endpoint: str,
    labels_uri: str,
    top_k: int,
    batch_size: int,
    refresh_seconds: float,
    max_run_seconds: float,
    file_window_seconds: int,
) -> None:
    for name, value, kind in (
        ("input_subscription", input_subscription, "subscriptions"),
        ("output_topic", output_topic, "topics"),
        ("dead_letter_topic", dead_letter_topic, "topics"),
    ):
        parts = value.split("/")
        if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind or not all(parts):
            raise ValueError(f"{name} must be projects/<project>/{kind}/<name>, got {value!r}")
    if sum(map(bool, (model_repository, model_dir, endpoint))) != 1:
        raise ValueError(
            "give exactly one model: model_repository (with model_name; newer versions are "
            "picked up), model_dir (one exported SavedModel) or endpoint (a deployed model, "
            f"with labels_uri); got model_repository={model_repository!r}, "
            f"model_dir={model_dir!r}, endpoint={endpoint!r}"
        )
    if bool(endpoint) != bool(labels_uri):
        raise ValueError(
            "labels_uri (a label file, one label a line in class-index order) goes with an "
            "endpoint, and an endpoint needs it; a SavedModel carries its own labels"
        )
    if model_repository and not model_name:
        raise ValueError("model_name is required with model_repository")
    for name, value, low in (("top_k", top_k, 1), ("batch_size", batch_size, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if refresh_seconds < 0 or max_run_seconds < 0:
        raise ValueError("refresh_seconds and max_run_seconds must be >= 0")
    if file_window_seconds < 1:
        raise ValueError(f"file_window_seconds must be >= 1, got {file_window_seconds}")


def run(
    input_subscription: str,
    output_topic: str,
    dead_letter_topic: str,
    model_repository: str = "",
    model_name: str = "",
    model_dir: str = "",
    endpoint: str = "",
    labels_uri: str = "",
    top_k: int = 3,
    batch_size: int = 16,
    refresh_seconds: float = 60,
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    runner: str = "DirectRunner",
    beam_args: Sequence[str] = (),
    max_run_seconds: float = 0,
    pubsub_emulator_host: str = "",
    job_name: str = "image-classifier-stream",
    output_dir: str = "",
    file_window_seconds: int = 60,
    dataflow: beam_utils.DataflowSettings | None = None,
) -> dict[str, Any]:
    """Runs streaming prediction: launches it on Dataflow, or runs it here.

    Args:
        input_subscription: ``projects/<p>/subscriptions/<s>``: the images to predict
            (see ``messages.py`` for the message contract).
        output_topic: ``projects/<p>/topics/<t>``: one prediction message per image.
        dead_letter_topic: ``projects/<p>/topics/<t>``: each message that got no
            prediction, unchanged, with ``error_reason`` and ``error_detail`` attributes.
        model_repository: A model repository (local path or ``gs://``), with
            ``model_name``: its newest version serves, and a newer version published
            while the job runs is picked up within ``refresh_seconds``. Exclusive with
            ``model_dir``.
        model_name: The model's name in ``model_repository``.
        model_dir: One exported SavedModel directory, fixed for the job's life.
        endpoint: A deployed model to call instead of loading one: a TF Serving REST
            model URL (``http://host:8080/v1/models/<name>``: the local server, KServe)
            or a Vertex AI endpoint (``projects/<p>/locations/<l>/endpoints/<id>``).
        labels_uri: The endpoint's labels: a label file, one label a line in class-index
            order (e.g. the export's ``assets.extra/labels.txt``). Only with ``endpoint``.
        top_k: A classifier's classes listed per image, most probable first (a detector's
            message lists all its detections).
        batch_size: Most images per model call or request (a message never waits for a
            batch to fill).
        refresh_seconds: How often a worker looks for a newer version (0: never).
        request_timeout_s: Longest wait for one answer of the endpoint.
        max_retries: Retries, with backoff, of a request the endpoint did not answer
            (429, 503, a refused connection); then its images are dead-lettered.
        runner: ``DirectRunner`` (runs here until stopped or ``max_run_seconds``) or
            ``DataflowRunner`` (launched; returns once the job is submitted).
        beam_args: Other Beam pipeline arguments, e.g. ``["--experiments=..."]``.
        max_run_seconds: DirectRunner: stop after this long (0: run until interrupted).
            Ignored on Dataflow, where the job runs until drained or cancelled.
        pubsub_emulator_host: ``host:port`` of a Pub/Sub emulator to use instead of
            Pub/Sub (the DirectRunner only); empty: ``PUBSUB_EMULATOR_HOST`` as set.
        job_name: The Dataflow job's name. When a job of this name is running, the
            launch replaces it in place (Dataflow's ``--update``: no message is lost and
            the new model serves from then on), so a pipeline re-run rolls its model out
            rather than starting a second job on the same subscription (give each
            stream its own name). Empty: Beam names a new job each launch.
        output_dir: Also write the predictions to JSON-lines files in this folder (local
            or ``gs://``), one file per window of ``file_window_seconds`` and firing:
            ``predictions-<start>-<end>-<firing>.jsonl``. Empty: the output topic only.
        file_window_seconds: The files' windows, by time of prediction; an open window's
            file is written every this many seconds, a closed one's at once.
        dataflow: The named Dataflow settings (project, region, the workers' image: the
            batch_predict stage's dataflow-worker image); None: none.

    Returns:
        ``runner``, ``job_id`` (Dataflow's; empty here), ``gcp_resources`` (the job as
        GCPC reports it), ``replaced_job_id`` (the running job an update replaced; empty
        if none), ``state``, ``model`` (what serves) and ``counters`` (messages,
        predicted, dead_letters, dead_<reason>, model_refreshes; from a run here).

    Raises:
        ValueError: on invalid arguments.
        FileNotFoundError: when the model directory or repository holds no SavedModel.
        RuntimeError: when the pipeline fails.
    """
    _check(
        input_subscription,
        output_topic,
        dead_letter_topic,
        model_repository,
        model_name,
        model_dir,
        endpoint,
        labels_uri,
        top_k,
        batch_size,
        refresh_seconds,
        max_run_seconds,
        file_window_seconds,
    )
    # A missing model fails here, clearly, not later in every worker.
    if model_repository:
        model_repository_lib.latest_version(model_repository, model_name)
    if model_dir and not io.exists(io.join(model_dir, model_repository_lib.SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"no SavedModel at {model_dir} (expected saved_model.pb)")
    if pubsub_emulator_host:
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_emulator_host
    model = endpoint or model_dir or io.join(model_repository, model_name)
    endpoint_labels = labels_lib.read_labels(labels_uri) if labels_uri else []
    args, replaced = launch_args(runner, job_name, beam_args, dataflow)
    pipeline = beam_utils.make_pipeline(runner, args, dataflow=dataflow)
    build_pipeline(
        pipeline,
        input_subscription,
        output_topic,
        dead_letter_topic,
        model_repository=model_repository,
        model_name=model_name,
        model_dir=model_dir,
        endpoint=endpoint,
        endpoint_labels=endpoint_labels,
        top_k=top_k,
        batch_size=batch_size,
        refresh_seconds=refresh_seconds,
        request_timeout_s=request_timeout_s,
        max_retries=max_retries,
        output_dir=output_dir,
        file_window_seconds=file_window_seconds,
    )
    _log.info(
        "stream_predict: %s -> %s with %s (%s)", input_subscription, output_topic, model, runner
    )
    result = pipeline.run()
    summary = {
        "runner": runner,
        "job_id": "",
        "replaced_job_id": replaced,
        "state": "",
        "model": model,
        "counters": {},
        "gcp_resources": {"resources": []},
    }
    if "Dataflow" in runner:
        summary["job_id"] = result.job_id()
        summary["state"] = str(result.state)
        summary["gcp_resources"] = dataflow_resources(pipeline.options, summary["job_id"])
        _log.info("stream_predict: launched Dataflow job %s", summary["job_id"])
        return summary
    summary["state"] = _wait_here(result, max_run_seconds)
    summary["counters"] = beam_utils.stage_counters(result, STAGE)
    _log.info("stream_predict: %s", json.dumps(summary["counters"]))
    return summary


def launch_args(
    runner: str,
    job_name: str,
    beam_args: Sequence[str],
    dataflow: beam_utils.DataflowSettings | None,
    find_running: Callable[[PipelineOptions, str], str] | None = None,
) -> tuple[list[str], str]:
    """The streaming pipeline's Beam arguments and the id of the running Dataflow job they
    update ("" for a new job): ``--update`` when a job named ``job_name`` runs on Dataflow
    (found by ``find_running``, by default ``running_dataflow_job``)."""
    args = ["--streaming", *([f"--job_name={job_name}"] if job_name else []), *beam_args]
    if "Dataflow" not in runner or not job_name:
        return args, ""
    options = beam_utils.pipeline_options(runner, args, dataflow=dataflow)
    running = (find_running or running_dataflow_job)(options, job_name)
    if running:
        _log.info("stream_predict: updating the running Dataflow job %s", running)
        args.append("--update")
    return args, running


def dataflow_resources(options: PipelineOptions, job_id: str) -> dict:
    """The launched job as Google Cloud Pipeline Components report it (``gcp_resources``,
    which the Vertex AI Pipelines console links)."""
    cloud = options.view_as(GoogleCloudOptions)
    uri = f"https://dataflow.googleapis.com/v1b3/projects/{cloud.project}/locations/"
    return {
        "resources": [
            {"resourceType": "DataflowJob", "resourceUri": f"{uri}{cloud.region}/jobs/{job_id}"}
        ]
    }


def running_dataflow_job(options: PipelineOptions, job_name: str) -> str:
    """The id of the running (or draining) Dataflow job named ``job_name`` in the project
    and region of ``options``; empty when there is none. Beam's own lookup, the one its
    ``--update`` uses."""
    from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient

    cloud = options.view_as(GoogleCloudOptions)
    if not cloud.project or not cloud.region:
        raise ValueError("a Dataflow launch with job_name needs the project and the region")
    try:
        return DataflowApplicationClient(cloud).job_id_for_name(job_name)
    except ValueError:  # Beam's "No running job found with name ..."
        return ""


def _wait_here(result: Any, max_run_seconds: float) -> str:
    """Waits for a local streaming run: until it fails, or ``max_run_seconds`` pass."""
    failure: list[BaseException] = []

    def wait() -> None:
        try:
            result.wait_until_finish()
        except BaseException as e:  # Re-raised in the caller's thread.
            failure.append(e)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=max_run_seconds or None)
    if failure:
        raise RuntimeError(f"the stream_predict pipeline failed: {failure[0]}") from failure[0]
    if waiter.is_alive():
        result.cancel()
        return "CANCELLED"
    return str(result.state)
