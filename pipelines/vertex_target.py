"""What only the vertex target (Vertex AI Pipelines) does: train as a Vertex AI custom job
(one machine, or a primary and workers for multi-worker training, as ``replica_count``
says at run time), deploy to a Vertex AI endpoint, and batch-predict with a Vertex AI
batch prediction job or on Beam (``batch_predict_engine``).

Every job it starts runs under the project's rules (``job_rules``): the pipeline
parameters ``service_account``, ``encryption_spec_key_name`` and ``network`` reach the
train custom job and the tuning job (all three), the batch prediction job (the first
two), the deployment (the first two, and ``network`` with ``private_endpoint``) and, on
Dataflow, the Beam stages (``tasks.beam_settings``: the first two)."""

import copy
from collections.abc import Callable

from google_cloud_pipeline_components.v1.custom_job import (
    create_custom_training_job_from_component,
)
from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from components.batch_predict.component import batch_predict_vertex
from components.deploy.component import deploy_vertex, find_vertex_champion
from components.images import on_stage_image, stage_image
from components.train.component import train as train_component
from pipelines.tasks import STREAM_PARAMETERS, stage_task

# The pipeline parameters only this target has (pipeline.py declares them).
VERTEX_PARAMETERS = (
    "traffic_percent",
    *STREAM_PARAMETERS,
    "machine_type",
    "accelerator_type",
    "accelerator_count",
    "replica_count",
    "project",
    "location",
    "serving_image",
    "serving_container",
    "serving_machine_type",
    "serving_min_replicas",
    "serving_max_replicas",
    "batch_predict_engine",
    "batch_machine_type",
    "batch_max_replicas",
    "service_account",
    "encryption_spec_key_name",
    "network",
    "private_endpoint",
)
BATCH_PREDICT_ENGINES = ("beam", "vertex")


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


def _train_job(train_task=train_component):
    """A train component (the classifier's, or a task's own) as a Vertex AI custom job
    (GCPC), and GCPC's worker pools for more than one machine: a primary pool of one
    replica plus a worker pool (of one here).

    The component is made again from its function so that the worker pools name the
    train image as configured now, like every other task.
    """
    component = on_stage_image(train_task, "train")
    job = create_custom_training_job_from_component(component, display_name="train")
    two_pools = create_custom_training_job_from_component(component, replica_count=2)
    return job, two_pools.component_spec.inputs["worker_pool_specs"].default


def job_rules(service_account, encryption_spec_key_name, network) -> dict:
    """The project's rules for the Vertex AI jobs the pipeline starts, as the arguments
    GCPC's custom job and hyperparameter tuning job take them.

    Args:
        service_account: The service account every job runs as; "" for Vertex AI's
            default agent.
        encryption_spec_key_name: Cloud KMS key the jobs' resources are encrypted with;
            "" for Google-managed encryption.
        network: Full name of the VPC network the jobs peer with
            (projects/<project number>/global/networks/<name>); "" for none.

    Returns:
        ``service_account``, ``encryption_spec_key_name`` and ``network``.
    """
    return dict(
        service_account=service_account,
        encryption_spec_key_name=encryption_spec_key_name,
        network=network,
    )


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


def train(
    settings: dict,
    machine_type,
    accelerator_type,
    accelerator_count,
    replica_count,
    project,
    location,
    rules: dict,
    train_task=train_component,
):
    """Train (``train_task``, the classifier's by default) as a custom job under the
    project's ``rules`` (``job_rules``): two worker pools when ``replica_count`` > 1 (the
    primary and replica_count - 1 workers), else one; returns the model of the branch
    that ran."""
    job, worker_pools = _train_job(train_task)
    machine = (worker_pools, machine_type, accelerator_type, accelerator_count)
    with dsl.If(replica_count > 1, name="multi-worker-training"):
        workers = stage_task(worker_replicas, "export", replica_count=replica_count)
        multi = job(
            **settings,
            **rules,
            worker_pool_specs=_with_machine(*machine, workers=workers.output),
            project=project,
            location=location,
        )
    with dsl.Else(name="single-worker-training"):
        single = job(
            **settings,
            **rules,
            worker_pool_specs=_with_machine(*machine),
            project=project,
            location=location,
        )
    return dsl.OneOf(multi.outputs["model"], single.outputs["model"])


def champion(project, location, model_name) -> PipelineChannel:
    """The model Vertex AI serves now: the default version of the Model ``model_name``
    ("" before the first deployment)."""
    task = stage_task(
        find_vertex_champion,
        "deploy",  # it only calls the Vertex AI API
        project=project,
        location=location,
        model_display_name=model_name,
    )
    task.set_caching_options(False)  # what serves changes between runs
    return task.output


def deploy_and_predict(
    exported_model,
    evaluation: dsl.PipelineTask,
    dataset,
    predict_on_beam: Callable[[], dsl.PipelineTask],
    model_name,
    project,
    location,
    serving_image,
    serving_container,
    serving_machine_type,
    serving_min_replicas,
    serving_max_replicas,
    traffic_percent,
    batch_predict_engine,
    batch_machine_type,
    batch_max_replicas,
    rules: dict,
    private_endpoint,
) -> None:
    """Deploys the export to a Vertex AI endpoint, with ``evaluation`` (the evaluate task)
    imported to the Model Registry, on the serving container ``serving_container`` picks
    (a custom container runs the deploy image this pipeline is compiled with), then
    batch-predicts the test split with the deployed Model version in a Vertex AI batch
    prediction job, or on Beam (``predict_on_beam`` makes that task), as
    ``batch_predict_engine`` says. The deployed model and the batch prediction job run as
    the ``rules``' service account, encrypted with their key; the endpoint is private on
    their network when ``private_endpoint``."""
    deployed = stage_task(
        deploy_vertex,
        "deploy",
        model=exported_model,
        evaluation=evaluation.outputs["metrics"],
        project=project,
        location=location,
        model_display_name=model_name,
        serving_image=serving_image,
        serving_container=serving_container,
        deploy_image=stage_image("deploy"),
        machine_type=serving_machine_type,
        min_replica_count=serving_min_replicas,
        max_replica_count=serving_max_replicas,
        traffic_percent=traffic_percent,
        service_account=rules["service_account"],
        encryption_spec_key_name=rules["encryption_spec_key_name"],
        network=rules["network"],
        private_endpoint=private_endpoint,
        # A classifier's evaluate outputs its confusion matrix; a detector's does not.
        **{k: v for k, v in evaluation.outputs.items() if k == "confusion_matrix"},
    )
    deployed.set_caching_options(False)  # a deployment is a side effect
    with dsl.If(batch_predict_engine == "vertex", name="vertex-batch-prediction"):
        job = stage_task(
            batch_predict_vertex,
            "deploy",  # it only calls the Vertex AI API: the image with its SDK
            project=project,
            location=location,
            vertex_model=deployed.outputs["vertex_model"],
            dataset=dataset,
            machine_type=batch_machine_type,
            max_replica_count=batch_max_replicas,
            service_account=rules["service_account"],
            encryption_spec_key_name=rules["encryption_spec_key_name"],
        )
        job.set_caching_options(False)  # it reads the images by URI
    with dsl.Else(name="beam-batch-prediction"):
        predict_on_beam()
