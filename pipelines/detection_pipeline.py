"""The object-detection pipeline: box-annotated images to a served detector.

    create_detection_tfrecords -> train_detector -> export_detector -> evaluate_detector
        --(gate: AP50)--> deploy -> batch_predict
    export_detector -> export_edge (TFLite and TF.js, beside evaluate)

The detection task's own components (``components.detection.components``) and the
shared ones (deploy, batch_predict) in the classification pipeline's shape
(``pipelines.pipeline``): the same targets' parameters, the same champion and gate, the
same Beam and Dataflow settings. Its defaults train on CPU in minutes (MobileNetV3Small
from random initialisation at 192 px); on a GPU raise ``image_size``, pick a larger
``backbone`` and ``weights="imagenet"``, or fine-tune KerasHub's COCO-trained RetinaNet
(``family="retinanet"``, ``preset="retinanet_resnet50_fpn_coco"``, ``image_size=512``,
``learning_rate=0.0001``), as the 2019 flow fine-tuned the model zoo's detectors.

- ``local``: ``kfp local`` on this machine (``object_detection_pipeline``; run it with
  ``python -m pipelines.run_local --task detection``);
- ``kfp``: Kubeflow Pipelines on GKE: train in the pipeline's pod on a GPU node, deploy
  to the model repository or KServe;
- ``vertex``: Vertex AI Pipelines: train as a Vertex AI custom job, deploy to a Vertex AI
  endpoint with the evaluation imported to the Model Registry (its object detection
  schema), batch-predict on Beam or as a Vertex AI batch prediction job
  (``pipelines.vertex_target``, shared with classification).
"""

from google_cloud_pipeline_components import _placeholders

from components.detection.components import (
    create_detection_tfrecords,
    evaluate_detector,
    export_detector,
    train_detector,
)
from components.images import dataflow_worker_image
from pipelines import kfp_target, vertex_target
from pipelines.deployment import deploy_behind_gate
from pipelines.tasks import (
    GkeResources,
    beam_settings,
    edge_exports_task,
    stage_task,
    target_pipeline,
)

PIPELINE_NAME = "object-detection"
TARGET_PARAMETERS = {
    "local": kfp_target.LOCAL_PARAMETERS,
    "kfp": kfp_target.KFP_PARAMETERS,
    "vertex": vertex_target.VERTEX_PARAMETERS,
}
TARGETS = tuple(TARGET_PARAMETERS)


def object_detection(
    target: str,
    gke: GkeResources | None,
    voc_dir: str = "",
    coco_json: str = "",
    image_dir: str = "",
    vertex_jsonl: str = "",
    label_map_uri: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    backbone: str = "MobileNetV3Small",
    weights: str = "",
    image_size: int = 192,
    batch_size: int = 16,
    epochs: int = 30,
    learning_rate: float = 0.002,
    early_stopping_patience: int = 8,
    augment_flip: bool = True,
    augment_colour: bool = True,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    upsampling: str = "fpn",
    family: str = "centernet",
    preset: str = "",
    precision: str = "auto",
    backup_dir: str = "",
    max_detections: int = 100,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    edge_exports: bool = True,
    edge_representative_images: int = 100,
    map50_threshold: float = 0.5,
    champion_margin: float = 0.0,
    page_examples: int = 12,
    model_name: str = "object-detector",
    beam_runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006 (KFP list parameter default)
    target_shard_mb: float = 150.0,
    dataflow_project: str = "",
    dataflow_region: str = "",
    dataflow_temp_location: str = "",
    dataflow_machine_type: str = "",
    dataflow_max_workers: int = 0,
    # local and kfp
    model_repository: str = "",
    serving_port: int = 8080,
    # kfp
    deploy_target: str = "local",
    kserve_namespace: str = "kubeflow-user-example-com",
    # kfp and vertex
    traffic_percent: int = 100,
    stream_subscription: str = "",
    stream_output_topic: str = "",
    stream_dead_letter_topic: str = "",
    stream_job_name: str = "object-detector-stream",
    stream_output_dir: str = "",
    # vertex (vertex_target)
    machine_type: str = "g2-standard-8",
    accelerator_type: str = "NVIDIA_L4",
    accelerator_count: int = 1,
    replica_count: int = 1,
    project: str = _placeholders.PROJECT_ID_PLACEHOLDER,
    location: str = _placeholders.LOCATION_PLACEHOLDER,
    serving_image: str = "",
    serving_container: str = "auto",
    serving_machine_type: str = "n1-standard-4",
    serving_min_replicas: int = 1,
    serving_max_replicas: int = 1,
    batch_predict_engine: str = "beam",
    batch_machine_type: str = "n1-standard-4",
    batch_max_replicas: int = 1,
    service_account: str = "",
    encryption_spec_key_name: str = "",
    network: str = "",
    private_endpoint: bool = False,
):
    """Box-annotated images (Pascal VOC, COCO JSON or Vertex AI JSON Lines) to the
    Object Detection API's TFRecords, a trained and exported detector, its COCO
    evaluation on the test split and, when its AP50 passes the gate, a deployment and
    batch predictions.

    The parameters are the stages' own (their components document each):
    create_detection_tfrecords (voc_dir ... max_error_fraction, target_shard_mb, the
    beam_* and dataflow_* settings), train_detector (backbone ... backup_dir),
    export_detector (max_detections, score_threshold, iou_threshold),
    evaluate_detector (map50_threshold, champion_margin, page_examples), deploy
    (model_name, model_repository, serving_port; on kfp deploy_target "local" or
    "kserve", kserve_namespace, traffic_percent). Those the pipeline names itself:

    Args:
        target: "local", "kfp" or "vertex".
        edge_exports: Also convert the export to TFLite (float32, float16, int8) and
            TensorFlow.js, each checked against it on the test split (export_edge, beside
            evaluate; it fails when a float model agrees on less than 99% of the
            SavedModel's detections scoring at least 0.3, int8 on less than 90%).
        edge_representative_images: Training images that calibrate the int8 TFLite
            model.
        gke: Kubernetes resources of the kfp target's tasks; None elsewhere.
        model_name: Name the model is served under.
        beam_runner: Beam runner of both Beam stages (DirectRunner, DataflowRunner).
        beam_args: Other Beam pipeline options of both Beam stages.
        dataflow_project: Google Cloud project of the Dataflow jobs.
        dataflow_region: Dataflow region, e.g. us-central1.
        dataflow_temp_location: gs:// folder for Dataflow's temporary files.
        dataflow_machine_type: Dataflow worker machine type, e.g. n2-standard-4.
        dataflow_max_workers: Most Dataflow workers autoscaling may start (0: Beam's
            default).
        model_repository: Model repository directory (local server) or gs:// folder
            (KServe).
        serving_port: Port the local server is documented to serve on.
        deploy_target: kfp target: "local" (the model repository, checked with the
            local server) or "kserve" (an InferenceService in kserve_namespace).
        kserve_namespace: Namespace of the KServe InferenceService.
        traffic_percent: Share of traffic the new model gets on a KServe service or a
            Vertex AI endpoint that already serves one (canary); 100 replaces it.
        stream_subscription: Pub/Sub subscription of images to detect objects in as
            they arrive: given, a passing detector is also launched as a streaming
            Dataflow job (stream_predict: one message of detections per image). The
            stream_* parameters are the classification pipeline's (``pipelines.pipeline``
            documents each). kfp and vertex targets.
        machine_type: The vertex target's parameters, machine_type to
            batch_max_replicas, are the classification pipeline's
            (``pipelines.pipeline`` documents each): the train custom job's machines,
            the endpoint's serving container and replicas, and the batch prediction
            engine.
        service_account: Email of the service account every job of the run runs as: the
            train custom job, the batch prediction job, the deployed model and, with
            DataflowRunner, the Dataflow workers; empty: Vertex AI's default agents
            (Dataflow: the Compute Engine default service account).
        encryption_spec_key_name: Cloud KMS key
            (projects/P/locations/L/keyRings/R/cryptoKeys/K, in the pipeline's region)
            those jobs, the uploaded Model version, a created Endpoint and the Dataflow
            jobs' state are encrypted with; empty: Google-managed encryption.
        network: Full name of the VPC network the train custom job peers with,
            projects/<project number>/global/networks/<name> (Private Service Access set
            up), and that of a private endpoint; empty: none. Dataflow takes its network
            in beam_args (--subnetwork=..., --no_use_public_ips).
        private_endpoint: Deploy to a private endpoint on network: reached over HTTP
            from that network only; it holds one deployment without a traffic split
            (traffic_percent must be 100), so a new version replaces the serving one
            after a gap of the minutes its deployment takes.
    """
    dataflow = beam_settings(
        beam_runner,
        beam_args,
        dataflow_project,
        dataflow_region,
        dataflow_temp_location,
        dataflow_machine_type,
        dataflow_max_workers,
        service_account,
        encryption_spec_key_name,
    )
    rules = vertex_target.job_rules(service_account, encryption_spec_key_name, network)
    records = stage_task(
        create_detection_tfrecords,
        "create_tfrecords",
        gke.beam if gke else None,
        voc_dir=voc_dir,
        coco_json=coco_json,
        image_dir=image_dir,
        vertex_jsonl=vertex_jsonl,
        label_map_uri=label_map_uri,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        max_image_side=max_image_side,
        max_error_fraction=max_error_fraction,
        target_shard_mb=target_shard_mb,
        sdk_container_image=dataflow_worker_image("create_tfrecords"),
        **dataflow,
    )
    records.set_caching_options(False)  # it reads images by URI; they may change
    dataset = records.outputs["dataset"]
    training = dict(
        dataset=dataset,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        early_stopping_patience=early_stopping_patience,
        augment_flip=augment_flip,
        augment_colour=augment_colour,
        scale_min=scale_min,
        scale_max=scale_max,
        upsampling=upsampling,
        family=family,
        preset=preset,
        precision=precision,
        backup_dir=backup_dir,
    )
    machine = (machine_type, accelerator_type, accelerator_count, replica_count)
    model = _train(target, gke, training, machine, project, location, rules)
    exported_model = stage_task(
        export_detector,
        "export",
        model=model,
        max_detections=max_detections,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
    ).outputs["exported_model"]
    edge_exports_task(exported_model, dataset, edge_exports, edge_representative_images)
    champion = _champion(
        target, model_name, model_repository, deploy_target, kserve_namespace, project, location
    )
    evaluation = stage_task(
        evaluate_detector,
        "evaluate",
        model=exported_model,
        dataset=dataset,
        map50_threshold=map50_threshold,
        champion_dir=champion,
        champion_margin=champion_margin,
        page_examples=page_examples,
    )
    deploy_behind_gate(
        target,
        gke,
        dataflow,
        exported_model,
        evaluation,
        dataset,
        1,
        model_name=model_name,
        model_repository=model_repository,
        serving_port=serving_port,
        deploy_target=deploy_target,
        kserve_namespace=kserve_namespace,
        traffic_percent=traffic_percent,
        project=project,
        location=location,
        serving_image=serving_image,
        serving_container=serving_container,
        serving_machine_type=serving_machine_type,
        serving_min_replicas=serving_min_replicas,
        serving_max_replicas=serving_max_replicas,
        batch_predict_engine=batch_predict_engine,
        batch_machine_type=batch_machine_type,
        batch_max_replicas=batch_max_replicas,
        rules=rules,
        private_endpoint=private_endpoint,
        stream=(
            stream_subscription,
            stream_output_topic,
            stream_dead_letter_topic,
            stream_job_name,
            stream_output_dir,
        ),
    )


def _train(
    target: str,
    gke: GkeResources | None,
    training: dict,
    machine: tuple,
    project,
    location,
    rules: dict,
):
    """train_detector in the pipeline's pod (on the kfp target's GPU node), or as a Vertex
    AI custom job on ``machine`` under the project's ``rules``; returns its model."""
    if target == "vertex":
        return vertex_target.train(training, *machine, project, location, rules, train_detector)
    task = stage_task(train_detector, "train", gke.train if gke else None, **training)
    return task.outputs["model"]


def _champion(
    target: str, model_name, model_repository, deploy_target, kserve_namespace, project, location
):
    """The detector the target serves now, which evaluate compares the new one with ("" before
    the first deployment)."""
    if target == "vertex":
        return vertex_target.champion(project, location, model_name)
    if target == "kfp":
        return kfp_target.champion(model_name, model_repository, deploy_target, kserve_namespace)
    return kfp_target.champion(model_name, model_repository, "local", "")


def build_pipeline(target: str = "local", gke: GkeResources | None = None):
    """Builds the detection pipeline for ``target`` ("local", "kfp" or "vertex").

    Returns:
        The pipeline (a KFP GraphComponent) named "object-detection".
    """
    return target_pipeline(
        object_detection,
        target,
        gke,
        TARGET_PARAMETERS,
        name=PIPELINE_NAME,
        description="Box-annotated images (VOC, COCO, Vertex AI) to Object Detection API "
        "TFRecords, a trained detector with the Object Detection API's serving signature, "
        "its COCO evaluation, and (if AP50 passes) a deployment and batch predictions.",
    )


object_detection_pipeline = build_pipeline("local")
