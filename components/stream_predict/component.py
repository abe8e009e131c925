"""KFP component of the stream_predict stage, a thin wrapper over ``beam_pipeline.run``.

It runs on the batch_predict stage's image (the same Beam and TensorFlow, with Pub/Sub).
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("batch_predict"), install_kfp_package=False)
def stream_predict(
    input_subscription: str,
    output_topic: str,
    dead_letter_topic: str,
    stats: Output[Metrics],
    gcp_resources: dsl.OutputPath(str),
    model: Input[Model] = None,
    model_repository: str = "",
    model_name: str = "",
    endpoint: str = "",
    labels_uri: str = "",
    top_k: int = 3,
    batch_size: int = 16,
    refresh_seconds: float = 60.0,
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006
    max_run_seconds: float = 0.0,
    pubsub_emulator_host: str = "",
    job_name: str = "image-classifier-stream",
    output_dir: str = "",
    file_window_seconds: int = 60,
    project: str = "",
    region: str = "",
    temp_location: str = "",
    worker_machine_type: str = "",
    max_num_workers: int = 0,
    sdk_container_image: str = "",
    service_account_email: str = "",
    dataflow_kms_key: str = "",
) -> str:
    """Predicts images as they arrive on Pub/Sub, with a streaming Apache Beam job.

    Each input message is an image (its encoded bytes, or its URI as the data or in the
    ``image_uri`` attribute); each gets a JSON prediction message on ``output_topic``
    with the input's attributes (a classifier's classes, or a detector's detections as
    batch_predict writes them), or, when no prediction can be made, goes unchanged to
    ``dead_letter_topic`` with ``error_reason`` and ``error_detail`` attributes. On
    Dataflow the step launches the job and returns its id (the job runs until drained or
    cancelled; given ``job_name``, a re-run replaces the running job of that name with
    the new model; a job serving a model repository picks new versions up itself).

    Args:
        input_subscription: projects/<p>/subscriptions/<s> the images arrive on.
        output_topic: projects/<p>/topics/<t> for the predictions.
        dead_letter_topic: projects/<p>/topics/<t> for messages without a prediction.
        model: An exported SavedModel, fixed for the job's life. Exclusive with
            model_repository.
        model_repository: A model repository (what deploy publishes): its newest version
            of model_name serves, and a newer one is picked up while the job runs.
        model_name: The model's name in model_repository.
        endpoint: A deployed model to call instead of loading one: a TF Serving REST
            model URL (the local server, KServe) or a Vertex AI endpoint resource name.
        labels_uri: The endpoint's label file (one label a line, class-index order).
        top_k: A classifier's classes listed per image, most probable first.
        batch_size: Most images per model call.
        refresh_seconds: How often a worker looks for a newer model version.
        request_timeout_s: Longest wait for one answer of the endpoint.
        max_retries: Retries, with backoff, of a request the endpoint did not answer.
        runner: DirectRunner (runs in this step) or DataflowRunner (launched; the step
            returns once the job is submitted).
        beam_args: Other Beam pipeline arguments, e.g. ["--experiments=..."].
        max_run_seconds: DirectRunner: stop after this long (0: until stopped).
        pubsub_emulator_host: host:port of a Pub/Sub emulator (DirectRunner only).
        job_name: The Dataflow job's name; a running job of this name is replaced in
            place (Dataflow's update: the new model serves, no message is lost) rather
            than a second one started (give each stream its own name). Empty: a new job
            each run.
        output_dir: Also write the predictions to JSON-lines files in this folder (gs://
            on Dataflow), one per window of file_window_seconds and firing. Empty: the
            output topic only.
        file_window_seconds: The files' windows, by time of prediction.
        project: Google Cloud project of the Dataflow job; empty leaves it unset.
        region: Dataflow region, e.g. us-central1; empty leaves it unset.
        temp_location: gs:// folder for Dataflow's temporary and staging files.
        worker_machine_type: Dataflow worker machine type; empty: Dataflow's default.
        max_num_workers: Most Dataflow workers; 0: Dataflow's default.
        sdk_container_image: Image the Dataflow workers run: the batch_predict stage's
            dataflow-worker image.
        service_account_email: Service account the Dataflow workers run as; empty: the
            Compute Engine default service account.
        dataflow_kms_key: Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K)
            of the Dataflow job's state and temporary data; empty: Google-managed
            encryption.

    Returns:
        stats: Counters of a run here (messages, predicted, dead_letters, model_refreshes).
        gcp_resources: The Dataflow job, as Google Cloud Pipeline Components report it
            (the Vertex AI Pipelines console links it).
        Output: The Dataflow job id; empty for a run here.
    """
    import json

    from components.common.beam import DataflowSettings
    from components.common.io import artifact_location
    from components.stream_predict.beam_pipeline import run

    summary = run(
        input_subscription=input_subscription,
        output_topic=output_topic,
        dead_letter_topic=dead_letter_topic,
        model_repository=model_repository,
        model_name=model_name,
        endpoint=endpoint,
        labels_uri=labels_uri,
        model_dir="" if model is None else artifact_location(model),
        top_k=top_k,
        batch_size=batch_size,
        refresh_seconds=refresh_seconds,
        request_timeout_s=request_timeout_s,
        max_retries=max_retries,
        runner=runner,
        beam_args=[str(arg) for arg in beam_args],
        max_run_seconds=max_run_seconds,
        pubsub_emulator_host=pubsub_emulator_host,
        job_name=job_name,
        output_dir=output_dir,
        file_window_seconds=file_window_seconds,
        dataflow=DataflowSettings(
            project=project,
            region=region,
            temp_location=temp_location,
            worker_machine_type=worker_machine_type,
            max_num_workers=max_num_workers,
            sdk_container_image=sdk_container_image,
            service_account_email=service_account_email,
            dataflow_kms_key=dataflow_kms_key,
        ),
    )
    for name, value in summary["counters"].items():
        stats.log_metric(name, value)
    with open(gcp_resources, "w") as f:
        json.dump(summary["gcp_resources"], f)
    return summary["job_id"]
