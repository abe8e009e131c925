"""The image-classification pipeline: labelled JPEGs to a served model and batch predictions.

    create_tfrecords -> tune -> train -> export -> evaluate --(gate)--> deploy
                                         |                  |-------> batch_predict
                                         |                  \\-------> stream_predict (kfp,
                                         \\-> export_edge              vertex: Dataflow)

The task graph all targets share is here, top to bottom; what only one target does is in
its own module (``build_pipeline(target)`` picks):

- ``local``: ``kfp local`` on this machine (``image_classification_pipeline``), and
- ``kfp``: Kubeflow Pipelines on GKE (``kfp_target``): train in the pipeline's pod on a GPU
  node (``tasks.GkeResources``, compile-time), deploy locally or to KServe;
- ``vertex``: Vertex AI Pipelines (``vertex_target``): train as a Vertex AI custom job on
  one machine or several, deploy to a Vertex AI endpoint, batch-predict on Beam or with a
  Vertex AI batch prediction job.

Deploy and batch prediction run only when the evaluated accuracy reaches
``accuracy_threshold``. The defaults are full-size settings (EfficientNetB0 at 224 px
from ImageNet weights); ``pipelines.run_local`` passes demo-sized ones. Both Beam stages
take the same Dataflow settings; their Dataflow workers run the stages' ``-dataflow``
images. Every task runs on its stage's image as configured when the pipeline is built
(``IMAGE_REGISTRY``/``IMAGE_TAG``, see components.images).
"""

from google_cloud_pipeline_components import _placeholders
from kfp import dsl

from components.create_tfrecords.component import create_tfrecords
from components.evaluate.component import evaluate
from components.export.component import export
from components.images import dataflow_worker_image
from components.tune.component import tune
from components.tune.space import TUNED
from pipelines import kfp_target, vertex_target, vertex_tuning
from pipelines.deployment import deploy_behind_gate
from pipelines.tasks import (
    GkeResources,
    beam_settings,
    edge_exports_task,
    stage_task,
    target_pipeline,
)

PIPELINE_NAME = "image-classification"
TARGETS = ("local", "kfp", "vertex")
# The parameters only some targets have; the others have the rest.
TARGET_PARAMETERS = {
    "local": kfp_target.LOCAL_PARAMETERS,
    "kfp": kfp_target.KFP_PARAMETERS,
    "vertex": vertex_target.VERTEX_PARAMETERS,
}


def image_classification(
    target: str,
    gke: GkeResources | None,
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 0.001,
    early_stopping_patience: int = 3,
    fine_tune_layers: int = 20,
    fine_tune_epochs: int = 5,
    fine_tune_learning_rate: float = 0.00001,
    warmup_epochs: int = 1,
    learning_rate_schedule: str = "cosine",
    dropout: float = 0.2,
    class_weight: str = "none",
    augment: bool = True,
    flip: str = "horizontal",
    crop_area_min: float = 0.5,
    crop_area_max: float = 1.0,
    crop_aspect_ratio_max: float = 1.33,
    rotation_degrees: float = 0.0,
    right_angle_rotation: bool = False,
    brightness: float = 0.08,
    contrast: float = 0.15,
    precision: str = "auto",
    jit_compile: str = "auto",
    steps_per_execution: int = 0,
    cache_images: bool = False,
    backup_dir: str = "",
    tune_trials: int = 0,
    accuracy_threshold: float = 0.8,
    champion_margin: float = 0.0,
    explain_examples: int = 8,
    ig_steps: int = 50,
    edge_exports: bool = True,
    edge_representative_images: int = 100,
    model_name: str = "image-classifier",
    top_k: int = 3,
    beam_runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006 (KFP list parameter default)
    target_shard_mb: float = 150.0,
    dataflow_project: str = "",
    dataflow_region: str = "",
    dataflow_temp_location: str = "",
    dataflow_machine_type: str = "",
    dataflow_max_workers: int = 0,
    # local and kfp (kfp_target)
    model_repository: str = "",
    serving_port: int = 8080,
    deploy_target: str = "local",
    kserve_namespace: str = "kubeflow-user-example-com",
    # kfp and vertex
    traffic_percent: int = 100,
    stream_subscription: str = "",
    stream_output_topic: str = "",
    stream_dead_letter_topic: str = "",
    stream_job_name: str = "image-classifier-stream",
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
    """Labelled images to TFRecords, a trained and exported classifier, its test-split
    evaluation and, when it passes the gate, a deployment and batch predictions.

    The task graph; ``build_pipeline`` makes it a pipeline for one target, with the
    parameters below that the target has (``target`` and ``gke`` fixed).

    Args:
        target: "local", "kfp" or "vertex".
        gke: Kubernetes resources of the kfp target's tasks; None elsewhere.
        csv_uri: The book's CSV (uri,label per line); use with labels_uri.
        labels_uri: Label file, one label per line.
        image_dir: Folder tree root/<label>/*.jpg (instead of csv_uri).
        train_fraction: Share of images in the train split (by a stable URI hash).
        valid_fraction: Share of images in the valid split; the rest is test.
        max_image_side: Longer images are resized to this side before writing.
        max_error_fraction: create_tfrecords fails when more inputs than this are bad.
        backbone: keras.applications backbone.
        weights: "imagenet", "none" or a no-top weights file.
        image_size: Model input side, in pixels.
        batch_size: Training batch size.
        epochs: Maximum training epochs.
        learning_rate: Adam learning rate.
        early_stopping_patience: Epochs without improvement before stopping (in the
            second half of a phase whose rate follows a cosine).
        fine_tune_layers: Top backbone layers phase two unfreezes (pretrained
            weights only); -1 all, 0 no phase two.
        fine_tune_epochs: Epochs of phase two (fine-tuning); 0 none.
        fine_tune_learning_rate: Peak learning rate of phase two (warm-up, then
            cosine decay).
        warmup_epochs: Linear warm-up epochs at the start of each phase whose learning
            rate follows a cosine.
        learning_rate_schedule: Phase one's learning rate: "cosine" (warm-up, then
            cosine decay), "constant" or "plateau" (halved when validation loss stalls).
        dropout: Dropout rate before the classification layer.
        class_weight: "none" or "balanced" (classes weigh by the inverse of their share
            of the train split).
        augment: Vary training images at random; false turns every variation off.
        flip: Random mirroring of training images: "none", "horizontal", "vertical" or
            "both" (no flip for digits and text).
        crop_area_min: Smallest share of an image's area a random training crop keeps;
            1 (with crop_aspect_ratio_max 1) trains on whole images.
        crop_area_max: Largest share of an image's area a random crop keeps.
        crop_aspect_ratio_max: Crops' width/height ratio lies between its inverse and it.
        rotation_degrees: Random rotation of training images within +/- this many
            degrees; 0 for none.
        right_angle_rotation: Also rotate by a random multiple of 90 degrees (satellite,
            microscope and texture images).
        brightness: Random brightness shift, up to this share of the pixel range.
        contrast: Random contrast factor within 1 plus or minus this.
        precision: "auto" (mixed_float16 on a recent GPU, else float32), "float32",
            "mixed_float16" or "mixed_bfloat16".
        jit_compile: XLA: "auto" (on GPU), "true" or "false".
        steps_per_execution: Training steps per call; 0 picks (1 on CPU, 32 on GPU).
        cache_images: Cache decoded images in memory (when the data fits).
        backup_dir: Durable BackupAndRestore directory for preemptible training.
        tune_trials: Training runs a hyperparameter search before train makes (learning
            rate, dropout, crop_area_min and, with pretrained weights,
            fine_tune_layers; KerasTuner, or a Vertex AI hyperparameter tuning job on
            vertex); its best values replace those given. 0: no search.
        accuracy_threshold: Test accuracy the model must reach to be deployed.
        champion_margin: How much lower than the accuracy of the model serving now (the
            champion, scored on the same test split) the new model's may be and still
            be deployed; 0: not lower.
        explain_examples: Test images evaluate explains with integrated gradients
            (an HTML artifact); 0 none.
        ig_steps: Integrated-gradients steps per image.
        edge_exports: Also convert the export to TFLite (float32, float16, int8) and
            TensorFlow.js, each checked against it on the test split (export_edge, beside
            evaluate; it fails when a float model gives the SavedModel's top-1 class on
            less than 99% of the images, int8 on less than 90%).
        edge_representative_images: Training images that calibrate the int8 TFLite
            model.
        model_name: Name the model is served under (the Vertex model and endpoint
            display name on the vertex target).
        deploy_target: kfp target: "local" (a model repository, checked with the
            local server) or "kserve" (an InferenceService in kserve_namespace,
            model staged under model_repository, gs://). Ignored on vertex, which
            deploys to a Vertex AI endpoint.
        model_repository: Model repository directory (local server) or gs:// folder
            (KServe); local and kfp targets.
        serving_port: Port the local server is documented to serve on; local and kfp
            targets.
        traffic_percent: Share of traffic the new model gets on an endpoint that
            already serves one (canary); 100 replaces it. kfp (KServe) and vertex.
        kserve_namespace: Namespace of the KServe InferenceService; kfp target.
        stream_subscription: Pub/Sub subscription (projects/<p>/subscriptions/<s>) of
            images to predict as they arrive: given, a passing model is also launched as
            a streaming Dataflow job (stream_predict, in the project, region and settings
            of dataflow_*; its id is the task's output). Empty: no streaming job. kfp and
            vertex targets.
        stream_output_topic: Pub/Sub topic (projects/<p>/topics/<t>) of the streaming
            job's predictions.
        stream_dead_letter_topic: Pub/Sub topic of the messages the streaming job could
            not predict, with the reason.
        stream_job_name: The streaming Dataflow job's name: a re-run updates the running
            job of this name with its model (Dataflow's --update) instead of starting a
            second one on the subscription.
        stream_output_dir: gs:// folder the streaming job also writes its predictions to,
            as JSON-lines files, one per minute of predictions; empty: the topic only.
        top_k: Classes per image in batch predictions.
        beam_runner: Beam runner of both Beam stages (DirectRunner, DataflowRunner);
            on Dataflow their workers run the stages' dataflow-worker images,
            <registry>/<stage>-dataflow:<tag> as configured at compile time.
        beam_args: Other Beam pipeline options of both Beam stages, e.g.
            ["--experiments=..."].
        target_shard_mb: Size a TFRecord shard aims at; the shard count follows.
        dataflow_project: Google Cloud project of the Dataflow jobs (DataflowRunner);
            this and the dataflow_* settings below apply to both Beam stages.
        dataflow_region: Dataflow region, e.g. us-central1.
        dataflow_temp_location: gs:// folder for Dataflow's temporary files.
        dataflow_machine_type: Dataflow worker machine type, e.g. n2-standard-4.
        dataflow_max_workers: Most Dataflow workers autoscaling may start (0: Beam's
            default).
        machine_type: Machine type of the train custom job, e.g. g2-standard-8,
            n1-standard-8.
        accelerator_type: Accelerator of each train machine, e.g. NVIDIA_L4,
            NVIDIA_TESLA_T4; ACCELERATOR_TYPE_UNSPECIFIED (with accelerator_count 0)
            trains on CPU.
        accelerator_count: Accelerators per train machine.
        replica_count: Train machines. 1 (or less) runs one, in a single worker
            pool; more run a primary pool of one machine plus a worker pool of
            replica_count - 1, and need a multi-worker tf.distribute strategy in train.
        project: Google Cloud project of the custom job; by default the pipeline's.
        location: Region of the custom job; by default the pipeline's.
        serving_image: Prediction container image of the Vertex model; empty: the
            default of the kind serving_container picks.
        serving_container: How the Vertex model is served: "prebuilt" (Vertex AI's
            prebuilt TensorFlow container for the export's TensorFlow version), "custom"
            (the deploy image this pipeline is compiled with, IMAGE_REGISTRY/IMAGE_TAG,
            as a custom container) or "auto": prebuilt when Vertex AI has a container for
            the export's TensorFlow, custom for newer exports (TF 2.21's: the newest
            prebuilt is TF 2.15).
        serving_machine_type: Machine type of the Vertex endpoint's replicas.
        serving_min_replicas: Fewest endpoint replicas.
        serving_max_replicas: Most endpoint replicas (autoscaling).
        batch_predict_engine: How the test split is batch-predicted on Vertex AI:
            "beam" (batch_predict, DirectRunner in the pod or Dataflow) or "vertex"
            (a Vertex AI batch prediction job with the deployed Model version).
        batch_machine_type: Machine type of a Vertex AI batch prediction job's workers.
        batch_max_replicas: Most workers of a Vertex AI batch prediction job.
        service_account: Email of the service account every job of the run runs as: the
            train custom job, the tuning job, the batch prediction job, the deployed
            model and, with DataflowRunner, the Dataflow workers; empty: Vertex AI's
            default agents (Dataflow: the Compute Engine default service account).
        encryption_spec_key_name: Cloud KMS key
            (projects/P/locations/L/keyRings/R/cryptoKeys/K, in the pipeline's region)
            those jobs, the uploaded Model version, a created Endpoint and the Dataflow
            jobs' state are encrypted with; empty: Google-managed encryption.
        network: Full name of the VPC network the train custom job and the tuning job
            peer with, projects/<project number>/global/networks/<name> (Private Service
            Access set up), and that of a private endpoint; empty: none. Dataflow takes
            its network in beam_args (--subnetwork=..., --no_use_public_ips).
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
    dataset = _tfrecords(
        gke,
        dataflow,
        csv_uri=csv_uri,
        labels_uri=labels_uri,
        image_dir=image_dir,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        max_image_side=max_image_side,
        max_error_fraction=max_error_fraction,
        target_shard_mb=target_shard_mb,
    )
    training = dict(
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        early_stopping_patience=early_stopping_patience,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_epochs=warmup_epochs,
        learning_rate_schedule=learning_rate_schedule,
        dropout=dropout,
        class_weight=class_weight,
        augment=augment,
        flip=flip,
        crop_area_min=crop_area_min,
        crop_area_max=crop_area_max,
        crop_aspect_ratio_max=crop_aspect_ratio_max,
        rotation_degrees=rotation_degrees,
        right_angle_rotation=right_angle_rotation,
        brightness=brightness,
        contrast=contrast,
        precision=precision,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        cache=cache_images,
    )
    machine = (machine_type, accelerator_type, accelerator_count, replica_count)
    model = _train(
        target, gke, dataset, training, tune_trials, backup_dir, machine, project, location, rules
    )
    exported_model = _export(model, dataset, edge_exports, edge_representative_images)
    champion = _champion(
        target, model_name, model_repository, deploy_target, kserve_namespace, project, location
    )
    evaluation = stage_task(
        evaluate,
        "evaluate",
        model=exported_model,
        dataset=dataset,
        accuracy_threshold=accuracy_threshold,
        champion_dir=champion,
        champion_margin=champion_margin,
        explain_examples=explain_examples,
        ig_steps=ig_steps,
    )

    deploy_behind_gate(
        target,
        gke,
        dataflow,
        exported_model,
        evaluation,
        dataset,
        top_k,
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
    dataset,
    training: dict,
    tune_trials,
    backup_dir,
    machine: tuple,
    project,
    location,
    rules: dict,
):
    """The tune task, whose values (the given ones with no trials) train gets, and the
    train task; returns train's model. On vertex both run under the project's ``rules``
    (``vertex_target.job_rules``).

    On kfp a search trains on the GPU node train asks for; with no trials the tune task
    only passes the values on, so it asks for nothing."""
    tuning = dict(training, trials=tune_trials)
    if target == "vertex":
        tuned = vertex_tuning.tune_on_vertex(
            dataset, tuning, *machine[:3], project, location, rules=rules
        )
        settings = dict(training, **tuned, dataset=dataset, backup_dir=backup_dir)
        return vertex_target.train(settings, *machine, project, location, rules)
    if target == "kfp":
        with dsl.If(tune_trials > 0, name="hyperparameter-tuning"):
            searched = stage_task(tune, "train", gke.train, dataset=dataset, **tuning)
        with dsl.Else(name="no-hyperparameter-tuning"):
            given = stage_task(tune, "train", dataset=dataset, **tuning)
        tuned = {name: dsl.OneOf(searched.outputs[name], given.outputs[name]) for name in TUNED}
    else:
        task = stage_task(tune, "train", dataset=dataset, **tuning)
        tuned = {name: task.outputs[name] for name in TUNED}
    settings = dict(training, **tuned, dataset=dataset, backup_dir=backup_dir)
    return kfp_target.train(settings, gke.train if gke else None)


def _export(model, dataset, edge_exports, edge_representative_images):
    """The export task and, when ``edge_exports``, export_edge's beside evaluate; returns
    the SavedModel."""
    exported_model = stage_task(export, "export", model=model).outputs["exported_model"]
    edge_exports_task(exported_model, dataset, edge_exports, edge_representative_images)
    return exported_model


def _champion(
    target: str, model_name, model_repository, deploy_target, kserve_namespace, project, location
):
    """The model the target serves now, which evaluate compares the new one with: the
    Vertex AI Model's default version, the KServe InferenceService's, or the local model
    repository's latest ("" before the first deployment)."""
    if target == "vertex":
        return vertex_target.champion(project, location, model_name)
    return kfp_target.champion(model_name, model_repository, deploy_target, kserve_namespace)


def _tfrecords(gke: GkeResources | None, dataflow: dict, **arguments):
    """The create_tfrecords task; returns its dataset."""
    task = stage_task(
        create_tfrecords,
        "create_tfrecords",
        gke.beam if gke else None,
        sdk_container_image=dataflow_worker_image("create_tfrecords"),
        **dataflow,
        **arguments,
    )
    # It reads the images by URI, and their content may change under the same URI.
    task.set_caching_options(False)
    return task.outputs["dataset"]


def build_pipeline(target: str = "local", gke: GkeResources | None = None):
    """Builds the pipeline for ``target`` ("local", "kfp" or "vertex").

    Args:
        target: Where the pipeline runs: picks its target-only steps and parameters.
        gke: Kubernetes resources of the kfp target (compile-time); None: the defaults.

    Returns:
        The pipeline (a KFP GraphComponent) named "image-classification".
    """
    return target_pipeline(
        image_classification,
        target,
        gke,
        TARGET_PARAMETERS,
        name=PIPELINE_NAME,
        description="Labelled JPEGs to TFRecords, a transfer-learned classifier, a serving "
        "SavedModel, a test-split evaluation, and (if it passes) a deployment and batch "
        "predictions.",
    )


image_classification_pipeline = build_pipeline("local")
