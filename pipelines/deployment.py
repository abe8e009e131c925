"""What both pipelines (classification, detection) do behind their quality gate, on each
target: deploy the export (the local model repository, KServe or a Vertex AI endpoint),
batch-predict the test split, and on the cloud targets launch the streaming job."""

from __future__ import annotations

import functools

from kfp import dsl

from pipelines import kfp_target, vertex_target
from pipelines.tasks import GkeResources, batch_predict_on_beam, stream_predict_on_dataflow


def deploy_behind_gate(
    target: str,
    gke: GkeResources | None,
    dataflow: dict,
    exported_model,
    evaluation: dsl.PipelineTask,
    dataset,
    top_k: int,
    *,
    model_name,
    model_repository,
    serving_port,
    deploy_target,
    kserve_namespace,
    traffic_percent,
    project,
    location,
    serving_image,
    serving_container,
    serving_machine_type,
    serving_min_replicas,
    serving_max_replicas,
    batch_predict_engine,
    batch_machine_type,
    batch_max_replicas,
    rules: dict,
    private_endpoint,
    stream: tuple,
) -> None:
    """The tasks that run when ``evaluation`` (the evaluate task, whose return value is the
    gate) passes: on ``vertex`` the Vertex AI deployment and batch prediction
    (``vertex_target.deploy_and_predict``, under the project's ``rules``); on ``kfp`` the
    KServe or local deploy and batch prediction on Beam; on ``local`` the local deploy and
    batch prediction; on both cloud targets the streaming job when ``stream`` (the
    pipeline's ``stream_*`` parameters, in ``tasks.STREAM_PARAMETERS``' order) names a
    subscription.

    The keyword arguments are the pipeline's parameters of the same names; those a target
    does not have keep the pipeline function's defaults and go unused.
    """
    predict_on_beam = functools.partial(
        batch_predict_on_beam, gke, dataflow, exported_model, dataset, top_k
    )
    # kfp local resolves a condition on a task's single return value ("Output"), so the
    # gate is evaluate's return value rather than a named output.
    with dsl.If(evaluation.outputs["Output"] == True, name="quality-gate"):  # noqa: E712
        if target == "vertex":
            vertex_target.deploy_and_predict(
                exported_model,
                evaluation,
                dataset,
                predict_on_beam,
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
                rules,
                private_endpoint,
            )
        elif target == "kfp":
            kfp_target.deploy(
                exported_model,
                evaluation,
                model_name,
                model_repository,
                serving_port,
                deploy_target,
                kserve_namespace,
                traffic_percent,
            )
            predict_on_beam()
        else:
            kfp_target.deploy_local(
                exported_model, evaluation, model_name, model_repository, serving_port
            )
            predict_on_beam()
        if target != "local":  # a streaming job runs on Dataflow, never under kfp local
            stream_predict_on_dataflow(gke, dataflow, exported_model, top_k, *stream)
