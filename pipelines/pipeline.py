"""The image-classification pipeline: JPEGs to a served model and batch predictions.

    create_tfrecords -> train -> export -> evaluate --(gate)--> deploy
                                                     \\-------> batch_predict

Deploy and batch prediction run only when the evaluated accuracy reaches
``accuracy_threshold``. The defaults are full-size settings (EfficientNetB0 at 224 px
from ImageNet weights); ``pipelines.run_local`` passes demo-sized ones.

One definition, three targets (``build_pipeline(target)``):

- ``local``: ``kfp local`` on this machine (``image_classification_pipeline``).
- ``kfp``: Kubeflow Pipelines on GKE. Train asks Kubernetes for GPUs on a node pool of
  the chosen GPU type; the Beam stages and train request CPU and memory. These are
  Kubernetes resource fields, fixed in the YAML, so they are compile-time settings
  (``GkeResources``). ``deploy_target="kserve"`` deploys a KServe InferenceService;
  "local" publishes to a model repository and checks it with the local server.
- ``vertex``: Vertex AI Pipelines. Train runs as a Vertex AI custom job whose machine
  type, accelerators and replica count are pipeline parameters (one replica: a single
  worker pool; more: a primary pool plus a worker pool, in a ``dsl.If``/``dsl.Else``
  joined by ``dsl.OneOf``); deploy uploads the model to Vertex AI and deploys it to an
  endpoint (``deploy_vertex``). The exported model is also offered as a
  ``google.UnmanagedContainerModel`` for GCPC's ModelUploadOp.

Every task runs on its stage's image as configured when the pipeline is built
(``IMAGE_REGISTRY``/``IMAGE_TAG``, see components.images).
"""

import copy
import dataclasses
import inspect

from google_cloud_pipeline_components import _placeholders
from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from google_cloud_pipeline_components.v1.custom_job import (
    create_custom_training_job_from_component,
)
from kfp import dsl, kubernetes
from kfp.dsl import Input, Model, Output

from components.batch_predict.component import batch_predict
from components.create_tfrecords.component import create_tfrecords
from components.deploy.component import deploy, deploy_kserve, deploy_vertex
from components.evaluate.component import evaluate
from components.export.component import export
from components.images import stage_image
from components.train.component import train

PIPELINE_NAME = "image-classification"
TARGETS = ("local", "kfp", "vertex")
# Parameters only the vertex target has (the last ones of the pipeline function).
VERTEX_PARAMETERS = (
    "machine_type",
    "accelerator_type",
    "accelerator_count",
    "replica_count",
    "project",
    "location",
    "serving_image",
    "serving_machine_type",
    "serving_min_replicas",
    "serving_max_replicas",
)
# Vertex AI's prebuilt TensorFlow 2 prediction container (the newest listed on
# https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers).
VERTEX_TF_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"


@dataclasses.dataclass(frozen=True)
class GkeResources:
    """What the kfp target asks Kubernetes for (fixed in the compiled YAML).

    The defaults fit a GKE node pool of g2-standard-8 (one NVIDIA L4, 8 vCPU, 32 GB) for
    train and e2-standard-4-sized nodes for the Beam stages, below their allocatable
    capacity. Limits equal the requests.
    """

    gpu_type: str = "nvidia-l4"  # the node label value, e.g. nvidia-tesla-t4, nvidia-a100-80gb
    gpu_count: int = 1  # 0 trains on CPU
    train_cpu: str = "6"
    train_memory: str = "24Gi"
    beam_cpu: str = "2"
    beam_memory: str = "8Gi"


# On the deploy image, the stage image that has google-cloud-pipeline-components (which
# the generated code imports for the artifact type): the first step of deploying to Vertex.
@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def vertex_model(
    exported_model: Input[Model],
    serving_image: str,
    model: Output[UnmanagedContainerModel],
):
    """Offers the exported SavedModel to Vertex AI as a model it can upload and serve.

    Copies nothing: the output artifact points at the export's directory and names the
    prediction container that serves it, so ModelUploadOp can upload it as is.

    Args:
        exported_model: The serving SavedModel written by the export stage.
        serving_image: The prediction container, e.g. Vertex AI's prebuilt TensorFlow one.

    Returns:
        model: A google.UnmanagedContainerModel whose URI is the SavedModel directory and
            whose metadata holds containerSpec.imageUri.
    """
    model.uri = exported_model.uri
    model.metadata["containerSpec"] = {"imageUri": serving_image}


# On the export image (a small stage image with kfp): with replica_count a pipeline
# parameter, the size of the train custom job's worker pool is a run-time number.
@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def worker_replicas(replica_count: int) -> int:
    """The replica count of the custom job's worker pool: all machines but the primary.

    Args:
        replica_count: Machines of the train custom job, more than one.

    Returns:
        replica_count - 1, the replicas of the second worker pool.
    """
    return replica_count - 1


def _vertex_train_job():
    """The train component as a Vertex AI custom job (GCPC), and GCPC's worker pools for
    more than one machine: a primary pool of one replica plus a worker pool (of one here).

    The component is made again from train's function so that the worker pools name
    the train image as configured now, like every other task.
    """
    on_image = dsl.component(base_image=stage_image("train"), install_kfp_package=False)
    component = on_image(train.python_func)
    job = create_custom_training_job_from_component(component, display_name="train")
    two_pools = create_custom_training_job_from_component(component, replica_count=2)
    return job, two_pools.component_spec.inputs["worker_pool_specs"].default


def _with_machine(
    worker_pools: list, machine_type, accelerator_type, accelerator_count, workers=None
) -> list:
    """GCPC's worker pools with the machine from pipeline parameters and, given
    ``workers``, the second pool's replica count; without it only the primary pool. KFP
    turns the pipeline channels inside this constant into inputs of the custom job task."""
    pools = copy.deepcopy(worker_pools if workers is not None else worker_pools[:1])
    for pool in pools:
        pool["machine_spec"] = {
            "machine_type": machine_type,
            "accelerator_type": accelerator_type,
            "accelerator_count": accelerator_count,
        }
    if workers is not None:
        pools[1]["replica_count"] = workers
    return pools


def _request(task, cpu: str, memory: str):
    """Kubernetes requests, with limits equal to them: the pod gets what it asked for,
    and a runaway stage cannot starve its neighbours on the node."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu)
    task.set_memory_request(memory).set_memory_limit(memory)


def build_pipeline(target: str = "local", gke: GkeResources = GkeResources()):
    """Builds the pipeline for ``target`` ("local", "kfp" or "vertex").

    Args:
        target: Where the pipeline runs; picks the few target-specific settings.
        gke: Kubernetes resources of the kfp target (compile-time).

    Returns:
        The pipeline (a KFP GraphComponent) named "image-classification".
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if target == "vertex":
        train_job, worker_pools = _vertex_train_job()

    def image_classification_pipeline(
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
        precision: str = "auto",
        jit_compile: str = "auto",
        steps_per_execution: int = 0,
        cache_images: bool = False,
        backup_dir: str = "",
        accuracy_threshold: float = 0.8,
        explain_examples: int = 8,
        ig_steps: int = 50,
        model_name: str = "image-classifier",
        deploy_target: str = "local",
        model_repository: str = "",
        serving_port: int = 8080,
        traffic_percent: int = 100,
        kserve_namespace: str = "kubeflow-user-example-com",
        top_k: int = 3,
        beam_runner: str = "DirectRunner",
        beam_args: list = [],  # noqa: B006 (KFP list parameter default)
        target_shard_mb: float = 150.0,
        dataflow_project: str = "",
        dataflow_region: str = "",
        dataflow_temp_location: str = "",
        dataflow_machine_type: str = "",
        dataflow_max_workers: int = 0,
        dataflow_worker_image: str = "",
        # Vertex AI only (VERTEX_PARAMETERS): the other targets drop them.
        machine_type: str = "g2-standard-8",
        accelerator_type: str = "NVIDIA_L4",
        accelerator_count: int = 1,
        replica_count: int = 1,
        project: str = _placeholders.PROJECT_ID_PLACEHOLDER,
        location: str = _placeholders.LOCATION_PLACEHOLDER,
        serving_image: str = VERTEX_TF_SERVING_IMAGE,
        serving_machine_type: str = "n1-standard-4",
        serving_min_replicas: int = 1,
        serving_max_replicas: int = 1,
    ):
        """Builds the pipeline DAG.

        Args:
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
            early_stopping_patience: Epochs without improvement before stopping.
            fine_tune_layers: Top backbone layers phase two unfreezes (pretrained
                weights only); -1 all, 0 no phase two.
            fine_tune_epochs: Epochs of phase two (fine-tuning); 0 none.
            fine_tune_learning_rate: Peak learning rate of phase two (warm-up, then
                cosine decay).
            warmup_epochs: Linear warm-up epochs of phase two.
            precision: "auto" (mixed_float16 on a recent GPU, else float32), "float32",
                "mixed_float16" or "mixed_bfloat16".
            jit_compile: XLA: "auto" (on GPU), "true" or "false".
            steps_per_execution: Training steps per call; 0 picks (1 on CPU, 32 on GPU).
            cache_images: Cache decoded images in memory (when the data fits).
            backup_dir: Durable BackupAndRestore directory for preemptible training.
            accuracy_threshold: Test accuracy the model must reach to be deployed.
            explain_examples: Test images evaluate explains with integrated gradients
                (an HTML artifact); 0 none.
            ig_steps: Integrated-gradients steps per image.
            model_name: Name the model is served under (the Vertex model and endpoint
                display name on the vertex target).
            deploy_target: kfp target: "local" (a model repository, checked with the
                local server) or "kserve" (an InferenceService in kserve_namespace,
                model staged under model_repository, gs://). Ignored on vertex, which
                deploys to a Vertex AI endpoint.
            model_repository: Model repository directory (local server) or gs:// folder
                (KServe).
            serving_port: Port the local server is documented to serve on.
            traffic_percent: Share of traffic the new model gets on an endpoint that
                already serves one (canary); 100 replaces it.
            kserve_namespace: Namespace of the KServe InferenceService (kfp target).
            top_k: Classes per image in batch predictions.
            beam_runner: Beam runner of the Beam stages (DirectRunner, DataflowRunner).
            beam_args: Extra Beam pipeline options, e.g. ["--experiments=..."].
            target_shard_mb: Size a TFRecord shard aims at; the shard count follows.
            dataflow_project: Google Cloud project of the Dataflow job (DataflowRunner).
            dataflow_region: Dataflow region, e.g. us-central1.
            dataflow_temp_location: gs:// folder for Dataflow's temporary files.
            dataflow_machine_type: Dataflow worker machine type, e.g. n2-standard-4.
            dataflow_max_workers: Most Dataflow workers autoscaling may start (0: Beam's
                default).
            dataflow_worker_image: Image the Dataflow workers run: the stage's
                dataflow-worker build, <registry>/create-tfrecords-dataflow:<tag>.
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
            serving_image: Prediction container of the Vertex model.
            serving_machine_type: Machine type of the Vertex endpoint's replicas.
            serving_min_replicas: Fewest endpoint replicas.
            serving_max_replicas: Most endpoint replicas (autoscaling).
        """
        tfrecords = create_tfrecords(
            csv_uri=csv_uri,
            labels_uri=labels_uri,
            image_dir=image_dir,
            train_fraction=train_fraction,
            valid_fraction=valid_fraction,
            max_image_side=max_image_side,
            max_error_fraction=max_error_fraction,
            runner=beam_runner,
            beam_args=beam_args,
            target_shard_mb=target_shard_mb,
            project=dataflow_project,
            region=dataflow_region,
            temp_location=dataflow_temp_location,
            worker_machine_type=dataflow_machine_type,
            max_num_workers=dataflow_max_workers,
            sdk_container_image=dataflow_worker_image,
        )
        # It reads the images by URI, and their content may change under the same URI.
        tfrecords.set_caching_options(False)
        train_args = dict(
            dataset=tfrecords.outputs["dataset"],
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
            precision=precision,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
            cache=cache_images,
            backup_dir=backup_dir,
        )
        if target == "vertex":
            machine = (worker_pools, machine_type, accelerator_type, accelerator_count)
            with dsl.If(replica_count > 1, name="multi-worker-training"):
                workers = worker_replicas(replica_count=replica_count)
                multi = train_job(
                    **train_args,
                    worker_pool_specs=_with_machine(*machine, workers=workers.output),
                    project=project,
                    location=location,
                )
            with dsl.Else(name="single-worker-training"):
                single = train_job(
                    **train_args,
                    worker_pool_specs=_with_machine(*machine),
                    project=project,
                    location=location,
                )
            model = dsl.OneOf(multi.outputs["model"], single.outputs["model"])
        else:
            trained = train(**train_args)
            model = trained.outputs["model"]
        exported = export(model=model)
        evaluation = evaluate(
            model=exported.outputs["exported_model"],
            dataset=tfrecords.outputs["dataset"],
            accuracy_threshold=accuracy_threshold,
            explain_examples=explain_examples,
            ig_steps=ig_steps,
        )
        # kfp local resolves a condition on a task's single return value ("Output"), so the
        # gate is evaluate's return value rather than a named output.
        exported_model = exported.outputs["exported_model"]
        local_args = dict(
            model=exported_model,
            model_name=model_name,
            model_repository=model_repository,
            port=serving_port,
        )
        with dsl.If(evaluation.outputs["Output"] == True, name="quality-gate"):  # noqa: E712
            deployed = []  # Deployments are side effects: never cached.
            if target == "vertex":
                deployed.append(
                    deploy_vertex(
                        model=exported_model,
                        project=project,
                        location=location,
                        model_display_name=model_name,
                        serving_image=serving_image,
                        machine_type=serving_machine_type,
                        min_replica_count=serving_min_replicas,
                        max_replica_count=serving_max_replicas,
                        traffic_percent=traffic_percent,
                    )
                )
            elif target == "kfp":
                with dsl.If(deploy_target == "kserve", name="deploy-to-kserve"):
                    deployed.append(
                        deploy_kserve(
                            model=exported_model,
                            model_repository=model_repository,
                            namespace=kserve_namespace,
                            model_name=model_name,
                            traffic_percent=traffic_percent,
                        )
                    )
                with dsl.Else(name="deploy-locally"):
                    deployed.append(deploy(**local_args))
            else:
                deployed.append(deploy(**local_args))
            for task in deployed:
                task.set_caching_options(False)
            predicted = batch_predict(
                model=exported.outputs["exported_model"],
                dataset=tfrecords.outputs["dataset"],
                top_k=top_k,
                runner=beam_runner,
                beam_args=beam_args,
            )
            predicted.set_caching_options(False)  # it too reads images by URI

        # Target-specific settings.
        if target == "kfp":
            _request(tfrecords, gke.beam_cpu, gke.beam_memory)
            _request(predicted, gke.beam_cpu, gke.beam_memory)
            _request(trained, gke.train_cpu, gke.train_memory)
            if gke.gpu_count:
                trained.set_accelerator_type("nvidia.com/gpu")
                trained.set_accelerator_limit(gke.gpu_count)
                kubernetes.add_node_selector(
                    trained, label_key=GKE_ACCELERATOR_LABEL, label_value=gke.gpu_type
                )
        stage_tasks = [
            ("create_tfrecords", tfrecords),
            ("export", exported),
            ("evaluate", evaluation),
            ("batch_predict", predicted),
            *(("deploy", task) for task in deployed),
        ]
        if target == "vertex":
            # The exported model as Vertex AI sees it, ready for ModelUploadOp.
            offered = vertex_model(
                exported_model=exported.outputs["exported_model"], serving_image=serving_image
            )
            stage_tasks += [("deploy", offered), ("export", workers)]
        else:  # (the custom jobs name the train image in their worker pools)
            stage_tasks.append(("train", trained))

        # Every task on its stage's image as configured now, not at component import.
        for stage, task in stage_tasks:
            task.set_container_image(stage_image(stage))

    if target != "vertex":
        signature = inspect.signature(image_classification_pipeline)
        image_classification_pipeline.__signature__ = signature.replace(
            parameters=[p for n, p in signature.parameters.items() if n not in VERTEX_PARAMETERS]
        )
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="Labelled JPEGs to TFRecords, a transfer-learned classifier, a serving "
        "SavedModel, a test-split evaluation, and (if it passes) a deployment and batch "
        "predictions.",
    )(image_classification_pipeline)


image_classification_pipeline = build_pipeline("local")
