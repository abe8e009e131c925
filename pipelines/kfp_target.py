"""What only the kfp target (Kubeflow Pipelines on GKE) and the local run do: train in the
pipeline's own pod (on GKE a GPU node, see ``tasks.GkeResources``) and deploy to a model
repository checked with the local model server or, on kfp, to a KServe InferenceService,
as ``deploy_target`` says at run time."""

from __future__ import annotations

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from components.deploy.component import (
    deploy as deploy_locally,
    deploy_kserve,
    find_champion,
)
from components.train.component import train as train_component
from pipelines.tasks import STREAM_PARAMETERS, PodResources, stage_task

# The pipeline parameters only these targets have (pipeline.py declares them).
LOCAL_PARAMETERS = ("model_repository", "serving_port")
KFP_PARAMETERS = (
    *LOCAL_PARAMETERS,
    "deploy_target",
    "kserve_namespace",
    "traffic_percent",
    *STREAM_PARAMETERS,
)


def train(settings: dict, resources: PodResources | None = None):
    """The train task in the pipeline's pod; returns its model."""
    return stage_task(train_component, "train", resources, **settings).outputs["model"]


def champion(
    model_name, model_repository, deploy_target="local", kserve_namespace=""
) -> PipelineChannel:
    """The model the deploy target serves now: the model repository's highest version,
    or the KServe InferenceService's ("" before the first deployment)."""
    task = stage_task(
        find_champion,
        "deploy",
        model_name=model_name,
        model_repository=model_repository,
        deploy_target=deploy_target,
        kserve_namespace=kserve_namespace,
    )
    task.set_caching_options(False)  # what serves changes between runs
    return task.output


def deploy_local(
    exported_model, evaluation: dsl.PipelineTask, model_name, model_repository, serving_port
) -> None:
    """Publishes the export to the model repository, with ``evaluation`` (the evaluate
    task's metrics) recorded beside it, and checks it with the local server."""
    task = stage_task(
        deploy_locally,
        "deploy",
        model=exported_model,
        evaluation=evaluation.outputs["metrics"],
        model_name=model_name,
        model_repository=model_repository,
        port=serving_port,
    )
    task.set_caching_options(False)  # a deployment is a side effect


def deploy(
    exported_model,
    evaluation: dsl.PipelineTask,
    model_name,
    model_repository,
    serving_port,
    deploy_target,
    kserve_namespace,
    traffic_percent,
) -> None:
    """A KServe InferenceService (model staged under ``model_repository``, gs://) when
    ``deploy_target`` is "kserve", else the local deploy."""
    with dsl.If(deploy_target == "kserve", name="deploy-to-kserve"):
        task = stage_task(
            deploy_kserve,
            "deploy",
            model=exported_model,
            model_repository=model_repository,
            namespace=kserve_namespace,
            model_name=model_name,
            traffic_percent=traffic_percent,
        )
        task.set_caching_options(False)
    with dsl.Else(name="deploy-locally"):
        deploy_local(exported_model, evaluation, model_name, model_repository, serving_port)
