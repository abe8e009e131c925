"""The batch_predict KFP components, thin wrappers over their modules:

``batch_predict``           Apache Beam RunInference (``beam_pipeline.run``): DirectRunner
                            or Dataflow
``batch_predict_vertex``    a Vertex AI BatchPredictionJob (``vertex.run_batch_prediction``);
                            outputs GCPC's ``google.VertexBatchPredictionJob``. It only calls
                            the Vertex AI API, so it runs on the deploy image (which has the
                            Vertex AI SDK and Google Cloud Pipeline Components), not on this
                            stage's Beam image.
"""

from google_cloud_pipeline_components.types.artifact_types import (
    VertexBatchPredictionJob,
    VertexModel,
)
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("batch_predict"), install_kfp_package=False)
def batch_predict(
    predictions: Output[Dataset],
    model: Input[Model] = None,
    dataset: Input[Dataset] = None,
    input_uris: str = "",
    top_k: int = 3,
    batch_size: int = 32,
    runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006
    max_error_fraction: float = 0.1,
    project: str = "",
    region: str = "",
    temp_location: str = "",
    worker_machine_type: str = "",
    max_num_workers: int = 0,
    sdk_container_image: str = "",
    service_account_email: str = "",
    dataflow_kms_key: str = "",
    endpoint: str = "",
    labels_uri: str = "",
    request_timeout_s: float = 30.0,
    max_retries: int = 5,
    task: str = "",
    detection_format: str = "object_detection_api",
):
    """Predicts the class of many images, or the objects in them, with an exported model,
    on Apache Beam.

    Runs Beam's RunInference with the SavedModel's serving signature over every listed
    image (DirectRunner here, Dataflow at scale), or sends them to a deployed model
    (``endpoint``), and writes JSON Lines. A classifier gives each image its classes; a
    detector (the detection export, whose signature answers ``detection_boxes``, or an
    endpoint serving it) its detections. An image that cannot be read or decoded, or
    that the endpoint gave no answer for, is recorded in ``errors.jsonl`` with its reason;
    the step fails only when such errors pass ``max_error_fraction`` of the inputs.

    Args:
        model: The exported serving SavedModel (the export stage's output, or the
            detection export's), with its labels in ``assets.extra/labels.txt``. With an ``endpoint`` only its labels
            are read, and it may be left out when ``labels_uri`` is given.
        dataset: A create_tfrecords dataset: its test manifest (``manifests/test.csv``)
            lists the images. Used only when ``input_uris`` is empty.
        input_uris: A file listing the images to predict (a ``uri,label`` CSV or one URI
            per line; local or ``gs://``). When set, it is used instead of ``dataset``.
        top_k: A classifier's classes listed per image, most probable first (a detector
            lists all its detections).
        batch_size: Images per model call.
        runner: Beam runner: ``DirectRunner`` or ``DataflowRunner``.
        beam_args: Other Beam pipeline arguments, e.g. ``["--job_name=j"]``; an option
            also given by a parameter below must agree with it.
        max_error_fraction: Largest tolerated share of inputs without a prediction.
        project: Google Cloud project of the Dataflow job; empty leaves it unset.
        region: Dataflow region, e.g. us-central1; empty leaves it unset.
        temp_location: gs:// folder for Dataflow's temporary and staging files.
        worker_machine_type: Dataflow worker machine type, e.g. n2-standard-4; empty:
            Dataflow's default.
        max_num_workers: Most Dataflow workers autoscaling may start; 0: Dataflow's
            default.
        sdk_container_image: Image the Dataflow workers run: this stage's dataflow-worker
            image (containers/batch_predict/Dockerfile); other runners ignore it.
        service_account_email: Service account the Dataflow workers run as; empty: the
            Compute Engine default service account. Other runners ignore it.
        dataflow_kms_key: Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K)
            of the Dataflow job's state and temporary data; empty: Google-managed
            encryption. Other runners ignore it.
        endpoint: A deployed model to call instead of loading ``model`` in the workers: a
            TF Serving REST URL (``http://host:8080/v1/models/<name>``: the local model
            server, a KServe InferenceService) or a Vertex AI endpoint
            (``projects/<p>/locations/<l>/endpoints/<id>``); one request per
            ``batch_size`` images. Empty: load the model.
        labels_uri: With an endpoint: the model's label file (one label a line, in
            class-index order); empty: the labels of ``model``.
        request_timeout_s: With an endpoint: the longest wait for one answer.
        max_retries: With an endpoint: how often a request answered 429, 502, 503, 504
            (or not at all) is sent again, with exponential backoff; then its images go
            to ``errors.jsonl`` as ``remote_unavailable``.
        task: For an endpoint given ``labels_uri`` and no ``model``: "classification"
            or "detection", what it serves; empty: what ``model`` predicts (its
            signature's outputs), or classification without it.
        detection_format: A detector's lines: "object_detection_api" (``detections``
            with ``box`` and ``bbox``) or "vertex" (Vertex AI's AutoML image object
            detection batch prediction line: ``instance``, ``prediction`` with ``ids``,
            ``displayNames``, ``confidences``, ``bboxes`` as normalized ``[xMin, xMax,
            yMin, yMax]``).

    Returns:
        predictions: The output directory: ``predictions-SSSSS-of-NNNNN.jsonl`` (one object
            per image: a classifier's ``uri``, ``label``, ``probability``, ``top_k`` and,
            when listed, ``true_label``; a detector's ``uri``, ``detections`` (each
            ``label``, ``class``, ``score``, ``box`` normalized ``[ymin, xmin, ymax,
            xmax]``, ``bbox`` COCO pixels ``[x, y, width, height]``) and, when listed,
            ``true_classes``; or Vertex AI's shape, per ``detection_format``),
            ``errors.jsonl`` (``uri``, ``reason``, ``detail``,
            ``stage``) and ``stats.json``. Its metadata holds ``rows``, ``errors``,
            ``errors_by_reason``, ``predictions`` (glob of the shards),
            ``prediction_files``, ``errors_path``, ``labels``, ``task``, ``top_k`` (a
            classifier's), ``detection_format`` (a detector's), ``input`` and
            ``counters``.
    """
    from components.batch_predict.beam_pipeline import run
    from components.common.beam import DataflowSettings
    from components.common.io import artifact_location

    summary = run(
        model_dir="" if model is None else artifact_location(model),
        output_dir=artifact_location(predictions),
        input_uris=input_uris,
        dataset_dir="" if input_uris or dataset is None else artifact_location(dataset),
        top_k=top_k,
        batch_size=batch_size,
        runner=runner,
        beam_args=[str(arg) for arg in beam_args],
        max_error_fraction=max_error_fraction,
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
        endpoint=endpoint,
        labels_uri=labels_uri,
        request_timeout_s=request_timeout_s,
        max_retries=max_retries,
        task=task,
        detection_format=detection_format,
    )
    predictions.metadata.update(summary)


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def batch_predict_vertex(
    batch_prediction_job: Output[VertexBatchPredictionJob],
    project: str,
    location: str,
    gcs_destination_prefix: str = "",
    vertex_model: Input[VertexModel] = None,
    model: Input[Model] = None,
    dataset: Input[Dataset] = None,
    gcs_source_uris: list = [],  # noqa: B006 (KFP parameter default)
    instances_format: str = "file-list",
    serving_image: str = "",
    job_display_name: str = "image-classifier-batch-predict",
    machine_type: str = "n1-standard-4",
    accelerator_type: str = "",
    accelerator_count: int = 0,
    starting_replica_count: int = 1,
    max_replica_count: int = 1,
    batch_size: int = 0,
    service_account: str = "",
    encryption_spec_key_name: str = "",
    max_error_fraction: float = 0.1,
    wait: bool = True,
    timeout_s: float = 86400.0,
):
    """Predicts the class of many images with a Vertex AI batch prediction job.

    The model is either a Model Registry version (``vertex_model``, e.g. deploy_vertex's
    output) or the exported SavedModel itself (``model``, served by ``serving_image``
    without an upload). The images are ``gcs_source_uris`` (``file-list`` files of
    gs:// image URIs: Vertex AI sends each image's bytes as ``{"b64": ...}``; or
    ``jsonl`` instances) or, when that is empty, the test split of ``dataset`` (its
    manifest becomes a file list under ``<gcs_destination_prefix>/inputs/``). Waits for the job unless
    ``wait`` is False, and fails when the job fails or more than ``max_error_fraction``
    of the instances fail.

    Args:
        project: Google Cloud project.
        location: Vertex AI region, e.g. us-central1.
        gcs_destination_prefix: gs:// prefix under which the job writes its output folder;
            empty: this step's own output folder (on Vertex AI Pipelines, in the
            pipeline root).
        vertex_model: A google.VertexModel (its metadata's resourceName).
        model: Instead of vertex_model: the exported SavedModel on Cloud Storage.
        dataset: A create_tfrecords dataset whose manifests/test.csv lists gs:// images;
            used when gcs_source_uris is empty.
        gcs_source_uris: Input files on Cloud Storage, in instances_format.
        instances_format: "file-list" or "jsonl".
        serving_image: Container serving ``model``; empty picks Vertex AI's prebuilt
            TensorFlow image for the export's TensorFlow version.
        job_display_name: Display name of the job.
        machine_type: Machine type of the prediction workers.
        accelerator_type: Accelerator per worker, e.g. NVIDIA_TESLA_T4; empty for none.
        accelerator_count: Accelerators per worker.
        starting_replica_count: Workers the job starts with.
        max_replica_count: Most workers.
        batch_size: Instances per request to the container; 0 for Vertex AI's default.
        service_account: Service account of the job; empty for the default.
        encryption_spec_key_name: Cloud KMS key
            (projects/P/locations/L/keyRings/R/cryptoKeys/K) the job and what it creates
            are encrypted with; empty: Google-managed encryption.
        max_error_fraction: Largest tolerated share of failed instances.
        wait: Wait for the job to end.
        timeout_s: How long to wait; past it the job is cancelled and the step fails.

    Returns:
        batch_prediction_job: google.VertexBatchPredictionJob (``resourceName``,
            ``gcsOutputDirectory``), with the job's state and instance counts.
    """
    from components.batch_predict.vertex import run_batch_prediction
    from components.common.io import artifact_location
    from components.deploy.vertex_serving import resource_uri

    if (vertex_model is None) == (model is None):
        raise ValueError("give exactly one of vertex_model (a Model Registry version) and model")
    info = run_batch_prediction(
        project=project,
        location=location,
        gcs_destination_prefix=gcs_destination_prefix or batch_prediction_job.uri,
        model_resource_name="" if vertex_model is None else vertex_model.metadata["resourceName"],
        export_uri="" if model is None else model.uri,
        dataset_dir="" if dataset is None else artifact_location(dataset),
        gcs_source_uris=gcs_source_uris,
        instances_format=instances_format,
        serving_image=serving_image,
        export_metadata=None if model is None else model.metadata,
        job_display_name=job_display_name,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        starting_replica_count=starting_replica_count,
        max_replica_count=max_replica_count,
        batch_size=batch_size,
        service_account=service_account,
        encryption_spec_key_name=encryption_spec_key_name,
        max_error_fraction=max_error_fraction,
        wait=wait,
        timeout_s=timeout_s,
    )
    batch_prediction_job.uri = resource_uri(location, info["job"])
    batch_prediction_job.metadata.update(
        {
            "resourceName": info["job"],
            "gcsOutputDirectory": info["gcs_output_directory"],
            **{k: v for k, v in info.items() if k not in ("job", "gcs_output_directory")},
        }
    )
