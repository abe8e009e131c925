"""Batch prediction on Vertex AI: a BatchPredictionJob over images or JSON Lines instances.

``run_batch_prediction`` creates a ``BatchPredictionJob`` (``JobService``) for either

* a Model in the Vertex AI Model Registry (``model``: ``projects/.../models/ID[@version]``,
  e.g. what ``deploy_vertex`` uploaded), or
* the exported SavedModel itself (``artifact_uri`` + ``serving_image``: an unmanaged
  container model; nothing is uploaded to the registry),

and, unless told not to, waits for it, failing clearly when it fails: the
batch_predict_vertex stage, which the KFP component and ``python -m components.batch_predict
--target vertex`` both call.

Inputs (``gcs_source_uris``, on Cloud Storage), by ``instances_format``:

* ``file-list``: text files, one ``gs://`` image URI a line. Vertex AI reads each file and
  sends its bytes base64-encoded as the instance ``{"b64": "..."}``, which the prebuilt
  TensorFlow container (TF Serving's REST API) decodes into the serving signature's one
  input, ``image_bytes``. ``write_file_list`` makes one from a create_tfrecords manifest.
* ``jsonl``: JSON Lines, one instance a line, as in an online request:
  ``{"b64": "..."}`` or ``{"image_bytes": {"b64": "..."}}``.

Output: JSON Lines under ``gcs_destination_prefix``, in a directory the job names
(``prediction-<model>-<time>/``): ``prediction.results-*`` lines ``{"instance": ...,
"prediction": {"probabilities", "class_index", "label", "score"}}`` and
``prediction.errors_stats-*`` for instances that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.cloud import aiplatform_v1

from components.common import io, schema
from components.deploy.vertex_serving import (
    DEFAULT_MACHINE_TYPE,
    api_endpoint,
    encryption_spec,
    machine_spec,
    serving_image_for,
)

log = logging.getLogger(__name__)

INSTANCES_FORMATS = ("file-list", "jsonl")
PREDICTIONS_FORMAT = "jsonl"
_S = aiplatform_v1.JobState
FAILED_STATES = {_S.JOB_STATE_FAILED, _S.JOB_STATE_CANCELLED, _S.JOB_STATE_EXPIRED}
DONE_STATES = FAILED_STATES | {_S.JOB_STATE_SUCCEEDED, _S.JOB_STATE_PARTIALLY_SUCCEEDED}


class BatchPredictionError(RuntimeError):
    """The batch prediction job failed, or failed for too many instances."""


def job_service_client(region: str) -> aiplatform_v1.JobServiceClient:
    """A JobService client for the region, with Application Default Credentials."""
    return aiplatform_v1.JobServiceClient(client_options={"api_endpoint": api_endpoint(region)})


def write_file_list(manifest: str, destination: str) -> int:
    """Writes a ``file-list`` input from a create_tfrecords manifest (``uri,label`` CSV).

    Args:
        manifest: The manifest, e.g. ``<dataset>/manifests/test.csv``; a header line
            ``uri,...`` and blank lines are skipped.
        destination: Where to write the list (``gs://`` for Vertex AI to read it).

    Returns:
        The number of URIs written.

    Raises:
        ValueError: when an image is not on Cloud Storage (Vertex AI reads only gs://),
            or the manifest lists no image.
    """
    uris = [uri for uri, _ in schema.read_manifest(manifest)]
    for uri in uris:
        if not uri.startswith("gs://"):
            raise ValueError(
                f"{manifest} lists {uri!r}: a Vertex AI batch prediction reads images from "
                "Cloud Storage only (gs://)"
            )
    if not uris:
        raise ValueError(f"{manifest} lists no image")
    io.write_text(destination, "".join(f"{uri}\n" for uri in uris))
    return len(uris)


def batch_prediction_job(
    display_name: str,
    gcs_source_uris: Sequence[str],
    gcs_destination_prefix: str,
    instances_format: str = "file-list",
    model: str = "",
    artifact_uri: str = "",
    serving_image: str = "",
    machine_type: str = DEFAULT_MACHINE_TYPE,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    starting_replica_count: int = 1,
    max_replica_count: int = 1,
    batch_size: int = 0,
    service_account: str = "",
    encryption_spec_key_name: str = "",
    labels: Mapping[str, str] | None = None,
) -> aiplatform_v1.BatchPredictionJob:
    """The BatchPredictionJob resource to create; see ``run_batch_prediction``."""
    if instances_format not in INSTANCES_FORMATS:
        raise ValueError(
            f"instances_format must be one of {INSTANCES_FORMATS}, got {instances_format!r}"
        )
    if not gcs_source_uris:
        raise ValueError("gcs_source_uris is empty: nothing to predict")
    for uri in [*gcs_source_uris, gcs_destination_prefix]:
        if not uri.startswith("gs://"):
            raise ValueError(f"a Vertex AI batch prediction reads and writes gs:// only: {uri!r}")
    if bool(model) == bool(artifact_uri):
        raise ValueError(
            "give exactly one model: model (a Vertex AI Model resource name) or artifact_uri "
            f"with serving_image (the SavedModel itself); got model={model!r}, "
            f"artifact_uri={artifact_uri!r}"
        )
    if artifact_uri and not serving_image:
        raise ValueError("artifact_uri needs the serving_image that serves it")
    if starting_replica_count < 1 or max_replica_count < starting_replica_count:
        raise ValueError(
            f"replicas must satisfy 1 <= starting ({starting_replica_count}) <= max "
            f"({max_replica_count})"
        )
    job = aiplatform_v1.BatchPredictionJob(
        display_name=display_name,
        input_config=aiplatform_v1.BatchPredictionJob.InputConfig(
            instances_format=instances_format,
            gcs_source=aiplatform_v1.GcsSource(uris=list(gcs_source_uris)),
        ),
        output_config=aiplatform_v1.BatchPredictionJob.OutputConfig(
            predictions_format=PREDICTIONS_FORMAT,
            gcs_destination=aiplatform_v1.GcsDestination(output_uri_prefix=gcs_destination_prefix),
        ),
        dedicated_resources=aiplatform_v1.BatchDedicatedResources(
            machine_spec=machine_spec(machine_type, accelerator_type, accelerator_count),
            starting_replica_count=starting_replica_count,
            max_replica_count=max_replica_count,
        ),
        service_account=service_account,
        encryption_spec=encryption_spec(encryption_spec_key_name),
        labels=dict(labels or {}),
    )
    if model:
        job.model = model
    else:
        job.unmanaged_container_model = aiplatform_v1.UnmanagedContainerModel(
            artifact_uri=artifact_uri,
            container_spec=aiplatform_v1.ModelContainerSpec(image_uri=serving_image),
        )
    if batch_size > 0:
        job.manual_batch_tuning_parameters = aiplatform_v1.ManualBatchTuningParameters(
            batch_size=batch_size
        )
    return job


def wait_for_job(
    job_client: aiplatform_v1.JobServiceClient,
    name: str,
    timeout_s: float,
    poll_interval_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> aiplatform_v1.BatchPredictionJob:
    """Polls a batch prediction job until it ends; returns it as it ended.

    Raises:
        TimeoutError: when it has not ended within ``timeout_s``; the job is cancelled
            first, so that no job runs on without the step that waits for it.
    """
    deadline = clock() + timeout_s
    while True:
        job = job_client.get_batch_prediction_job(
            request=aiplatform_v1.GetBatchPredictionJobRequest(name=name)
        )
        if job.state in DONE_STATES:
            return job
        if clock() >= deadline:
            job_client.cancel_batch_prediction_job(
                request=aiplatform_v1.CancelBatchPredictionJobRequest(name=name)
            )
            raise TimeoutError(
                f"batch prediction job {name} still {job.state.name} after {timeout_s:.0f} s;"
                " cancelled it"
            )
        log.info("batch prediction job %s: %s", name, job.state.name)
        sleep(poll_interval_s)


def check_job(job: aiplatform_v1.BatchPredictionJob, max_error_fraction: float) -> None:
    """Raises ``BatchPredictionError`` for a failed job, or one whose failed instances
    pass ``max_error_fraction`` of those it processed."""
    if job.state in FAILED_STATES:
        detail = job.error.message or "no error message"
        failures = "; ".join(f.message for f in job.partial_failures if f.message)
        raise BatchPredictionError(
            f"batch prediction job {job.name} ended {job.state.name}: {detail}"
            + (f" (partial failures: {failures})" if failures else "")
        )
    stats = job.completion_stats
    processed = stats.successful_count + stats.failed_count
    if stats.failed_count and stats.failed_count / processed > max_error_fraction:
        raise BatchPredictionError(
            f"batch prediction job {job.name}: {stats.failed_count} of {processed} instances "
            f"failed ({stats.failed_count / processed:.1%}), more than "
            f"max_error_fraction={max_error_fraction}; see prediction.errors_stats-* in "
            f"{job.output_info.gcs_output_directory or 'the output directory'}"
        )


def run_batch_prediction(
    project: str,
    location: str,
    gcs_destination_prefix: str,
    model_resource_name: str = "",
    export_uri: str = "",
    dataset_dir: str = "",
    gcs_source_uris: Sequence[str] = (),
    instances_format: str = "file-list",
    serving_image: str = "",
    export_metadata: Mapping[str, Any] | None = None,
    job_display_name: str = "image-classifier-batch-predict",
    machine_type: str = DEFAULT_MACHINE_TYPE,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    starting_replica_count: int = 1,
    max_replica_count: int = 1,
    batch_size: int = 0,
    service_account: str = "",
    encryption_spec_key_name: str = "",
    labels: Mapping[str, str] | None = None,
    max_error_fraction: float = 0.1,
    wait: bool = True,
    timeout_s: float = 24 * 3600.0,
    poll_interval_s: float = 60.0,
    job_client: aiplatform_v1.JobServiceClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Creates a Vertex AI batch prediction job and (by default) waits for its end.

    The batch_predict_vertex stage: its KFP component and ``python -m
    components.batch_predict --target vertex`` both call this.

    Args:
        project: Google Cloud project.
        location: Vertex AI region, e.g. ``us-central1``.
        gcs_destination_prefix: ``gs://`` prefix under which the job writes its output
            directory; a dataset's file list is written under ``<prefix>/inputs/``.
        model_resource_name: A Model Registry version (``projects/.../models/ID[@V]``),
            e.g. deploy_vertex's, that predicts; or else ``export_uri``.
        export_uri: The exported SavedModel on Cloud Storage that predicts instead,
            served without an upload by ``serving_image`` (empty: Vertex AI's prebuilt
            TensorFlow image for the export's TensorFlow version).
        dataset_dir: A create_tfrecords dataset on Cloud Storage whose test manifest
            lists the images; used when ``gcs_source_uris`` is empty.
        gcs_source_uris: Input files on Cloud Storage (wildcards allowed), in
            ``instances_format``.
        instances_format: ``file-list`` (one image URI a line; Vertex AI sends each
            file's bytes as ``{"b64": ...}``) or ``jsonl`` (one instance a line).
        serving_image: See ``export_uri``.
        export_metadata: The export artifact's metadata, whose ``framework_version``
            picks the prebuilt image; empty: the version is read from the export.
        job_display_name: The job's display name.
        machine_type: Machine type of the prediction workers.
        accelerator_type: E.g. ``NVIDIA_TESLA_T4``; empty for none.
        accelerator_count: Accelerators per worker.
        starting_replica_count: Workers the job starts with.
        max_replica_count: Most workers the job scales to.
        batch_size: Instances per request to the container; 0 leaves Vertex AI's default.
        service_account: Service account the job runs as; empty for Vertex AI's default.
        encryption_spec_key_name: Cloud KMS key
            (``projects/P/locations/L/keyRings/R/cryptoKeys/K``, in ``location``) the job
            and the resources it creates are encrypted with; empty: Google-managed
            encryption.
        labels: Labels of the job.
        max_error_fraction: Largest tolerated share of failed instances.
        wait: Wait for the job's end (and fail when it fails); otherwise return once it
            is created.
        timeout_s: How long to wait; past it the job is cancelled and this fails.
        poll_interval_s: Seconds between state checks.
        job_client: JobService client; by default one for ``location``.
        sleep: Waits between checks (tests pass a fake clock's).
        clock: Monotonic seconds (tests pass a fake clock).

    Returns:
        ``job`` (resource name), ``state``, ``gcs_output_directory`` (empty until the job
        runs), ``successful_count``, ``failed_count``, ``incomplete_count``, ``model`` or
        ``artifact_uri``, ``serving_image``, ``instances_format``, ``gcs_source_uris``
        and ``region``.

    Raises:
        ValueError: on invalid arguments (no model or two, no input, a malformed key).
        BatchPredictionError: when the job fails or too many instances fail.
        TimeoutError: when it does not end within ``timeout_s`` (it is then cancelled).
    """
    if not project:
        raise ValueError("project is required")
    if not 0 <= max_error_fraction <= 1:
        raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
    if bool(model_resource_name) == bool(export_uri):
        raise ValueError(
            "give exactly one model: model_resource_name (a Model Registry version, e.g. "
            "deploy_vertex's) or export_uri (the exported SavedModel)"
        )
    if export_uri:
        serving_image = serving_image_for(
            export_uri,
            location,
            accelerator_type,
            accelerator_count,
            serving_image,
            dict(export_metadata or {}).get("framework_version", ""),
        )
    sources = [str(uri) for uri in gcs_source_uris]
    if not sources:
        sources = [_test_split_file_list(dataset_dir, gcs_destination_prefix, job_display_name)]
        instances_format = "file-list"
    job = batch_prediction_job(
        job_display_name,
        sources,
        gcs_destination_prefix,
        instances_format=instances_format,
        model=model_resource_name,
        artifact_uri=export_uri,
        serving_image=serving_image if export_uri else "",
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        starting_replica_count=starting_replica_count,
        max_replica_count=max_replica_count,
        batch_size=batch_size,
        service_account=service_account,
        encryption_spec_key_name=encryption_spec_key_name,
        labels=labels,
    )
    job_client = job_client or job_service_client(location)
    request = aiplatform_v1.CreateBatchPredictionJobRequest(
        parent=f"projects/{project}/locations/{location}", batch_prediction_job=job
    )
    created = job_client.create_batch_prediction_job(request=request)
    log.info("created batch prediction job %s (%s)", created.name, job_display_name)
    final = created
    if wait:
        final = wait_for_job(job_client, created.name, timeout_s, poll_interval_s, sleep, clock)
        check_job(final, max_error_fraction)
        if final.state == _S.JOB_STATE_PARTIALLY_SUCCEEDED:
            log.warning(
                "batch prediction job %s partially succeeded: %d instance(s) failed",
                final.name,
                final.completion_stats.failed_count,
            )
    stats = final.completion_stats
    return {
        "job": created.name,
        "state": final.state.name,
        "gcs_output_directory": final.output_info.gcs_output_directory,
        "successful_count": int(stats.successful_count),
        "failed_count": int(stats.failed_count),
        "incomplete_count": int(stats.incomplete_count),
        "model": model_resource_name,
        "artifact_uri": export_uri,
        "serving_image": serving_image if export_uri else "",
        "instances_format": instances_format,
        "gcs_source_uris": sources,
        "region": location,
    }


def _test_split_file_list(dataset_dir: str, destination_prefix: str, display_name: str) -> str:
    """Writes the dataset's test split as a ``file-list`` input under
    ``<destination_prefix>/inputs/`` (named after the job and the time); returns its URI."""
    if not dataset_dir:
        raise ValueError("give gcs_source_uris or a dataset_dir whose test split to predict")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    file_list = f"{destination_prefix.rstrip('/')}/inputs/{display_name}-{stamp}.txt"
    write_file_list(schema.manifest_path(dataset_dir, "test"), file_list)
    return file_list
