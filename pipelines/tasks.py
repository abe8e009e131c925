"""How the pipeline makes its tasks: each on its stage's image as configured when the
pipeline is built, and on the kfp target with the Kubernetes resources it asks GKE for."""

from __future__ import annotations

import dataclasses
import functools
import inspect

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask

from components.batch_predict.component import batch_predict
from components.export_edge.component import export_edge
from components.images import dataflow_worker_image, stage_image
from components.stream_predict.component import stream_predict

GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
# The pipeline parameters of the streaming job both cloud targets launch (pipeline.py).
STREAM_PARAMETERS = (
    "stream_subscription",
    "stream_output_topic",
    "stream_dead_letter_topic",
    "stream_job_name",
    "stream_output_dir",
)


@dataclasses.dataclass(frozen=True)
class PodResources:
    """What one task's pod asks Kubernetes for; limits equal the requests, so the pod gets
    what it asked for and a runaway stage cannot starve its neighbours on the node."""

    cpu: str
    memory: str
    gpu_type: str = ""  # the GKE node label value, e.g. nvidia-l4
    gpu_count: int = 0

    def request(self, task: PipelineTask) -> None:
        task.set_cpu_request(self.cpu).set_cpu_limit(self.cpu)
        task.set_memory_request(self.memory).set_memory_limit(self.memory)
        if self.gpu_count:
            task.set_accelerator_type("nvidia.com/gpu")
            task.set_accelerator_limit(self.gpu_count)
            kubernetes.add_node_selector(
                task, label_key=GKE_ACCELERATOR_LABEL, label_value=self.gpu_type
            )


@dataclasses.dataclass(frozen=True)
class GkeResources:
    """What the kfp target asks Kubernetes for (fixed in the compiled YAML, so these are
    compile-time settings: ``python -m pipelines.compile --gpu-type ...``).

    The defaults fit a GKE node pool of g2-standard-8 (one NVIDIA L4, 8 vCPU, 32 GB) for
    train and e2-standard-4-sized nodes for the Beam stages, below their allocatable
    capacity. A Beam stage on the DirectRunner in its pod needs about 1 GiB plus about
    2.5 KiB per image for create_tfrecords, whatever the images' sizes (docs/benchmarks.md:
    memory flat in the bytes of the data), so 4Gi holds about a million images; past
    about 100,000 images Dataflow (``beam_runner``) is the faster choice, not a larger pod.
    """

    gpu_type: str = "nvidia-l4"  # the node label value, e.g. nvidia-tesla-t4, nvidia-a100-80gb
    gpu_count: int = 1  # 0 trains on CPU
    train_cpu: str = "6"
    train_memory: str = "24Gi"
    beam_cpu: str = "2"
    beam_memory: str = "4Gi"

    @property
    def train(self) -> PodResources:
        return PodResources(self.train_cpu, self.train_memory, self.gpu_type, self.gpu_count)

    @property
    def beam(self) -> PodResources:
        return PodResources(self.beam_cpu, self.beam_memory)


def stage_task(
    component, stage: str, resources: PodResources | None = None, **arguments
) -> PipelineTask:
    """A task of ``component`` on ``stage``'s image as configured now (``IMAGE_REGISTRY``,
    ``IMAGE_TAG``, read when the pipeline is built rather than when the components were
    imported, so one process can compile for several registries), asking Kubernetes for
    ``resources`` when given."""
    task = component(**arguments)
    task.set_container_image(stage_image(stage))
    if resources is not None:
        resources.request(task)
    return task


def batch_predict_on_beam(
    gke: GkeResources | None, dataflow: dict, exported_model, dataset, top_k
) -> dsl.PipelineTask:
    """The batch_predict task (Beam) over the dataset's test split."""
    task = stage_task(
        batch_predict,
        "batch_predict",
        gke.beam if gke else None,
        model=exported_model,
        dataset=dataset,
        top_k=top_k,
        sdk_container_image=dataflow_worker_image("batch_predict"),
        **dataflow,
    )
    task.set_caching_options(False)  # it too reads images by URI
    return task


def edge_exports_task(exported_model, dataset, edge_exports, representative_images) -> None:
    """export_edge's task (TFLite and TF.js models of ``exported_model``, on the export
    image, which holds the converters) when the pipeline parameter ``edge_exports`` is
    true; it runs beside evaluate and a failed check fails the run."""
    with dsl.If(edge_exports == True, name="edge-exports"):  # noqa: E712
        stage_task(
            export_edge,
            "export",
            exported_model=exported_model,
            dataset=dataset,
            representative_images=representative_images,
        )


def with_parameters(function, names: list[str], **fixed):
    """``function`` as KFP sees and calls it: with the ``fixed`` arguments and only the
    parameters ``names`` (the others keep their defaults). KFP passes a pipeline's
    arguments by position, in the order of its signature, hence this adapter rather than
    a plain ``functools.partial``."""
    signature = inspect.signature(function)
    kept = [p for name, p in signature.parameters.items() if name in names]

    @functools.wraps(function)
    def restricted(*arguments):
        return function(**fixed, **dict(zip([p.name for p in kept], arguments, strict=True)))

    restricted.__signature__ = signature.replace(parameters=kept)
    return restricted


def target_pipeline(
    graph,
    target: str,
    gke: GkeResources | None,
    target_parameters: dict[str, tuple[str, ...]],
    name: str,
    description: str,
):
    """A task's pipeline for one target: ``graph`` (a task graph function whose first two
    parameters are ``target`` and ``gke``) with the parameters every target has and
    ``target``'s own (``target_parameters``: target to the parameters only it has).

    Raises:
        ValueError: for a target ``target_parameters`` does not name.
    """
    if target not in target_parameters:
        raise ValueError(f"unknown target {target!r}; choose one of {tuple(target_parameters)}")
    target_only = {p for names in target_parameters.values() for p in names}
    parameters = [
        p
        for p in list(inspect.signature(graph).parameters)[2:]
        if p not in target_only or p in target_parameters[target]
    ]
    restricted = with_parameters(
        graph, parameters, target=target, gke=(gke or GkeResources()) if target == "kfp" else None
    )
    return dsl.pipeline(name=name, description=description)(restricted)


def beam_settings(
    runner,
    beam_args,
    project,
    region,
    temp_location,
    worker_machine_type,
    max_num_workers,
    service_account_email,
    dataflow_kms_key,
) -> dict:
    """The Beam stages' runner and Dataflow arguments, from the pipeline's ``beam_*`` and
    ``dataflow_*`` parameters (both Beam stages of both tasks take the same).

    Args:
        runner: The pipeline's beam_runner.
        beam_args: Its beam_args, the other Beam options.
        project: dataflow_project.
        region: dataflow_region.
        temp_location: dataflow_temp_location.
        worker_machine_type: dataflow_machine_type.
        max_num_workers: dataflow_max_workers.
        service_account_email: The service account Dataflow's workers run as: the vertex
            target's service_account; "" on the other targets, whose users set
            ``--service_account_email=...`` in beam_args.
        dataflow_kms_key: The Cloud KMS key of the Dataflow job: the vertex target's
            encryption_spec_key_name; "" on the other targets (``--dataflow_kms_key=...``
            in beam_args there).

    Returns:
        The Beam components' arguments of those names.
    """
    return dict(
        runner=runner,
        beam_args=beam_args,
        project=project,
        region=region,
        temp_location=temp_location,
        worker_machine_type=worker_machine_type,
        max_num_workers=max_num_workers,
        service_account_email=service_account_email,
        dataflow_kms_key=dataflow_kms_key,
    )


def stream_predict_on_dataflow(
    gke: GkeResources | None,
    dataflow: dict,
    exported_model,
    top_k,
    subscription,
    output_topic,
    dead_letter_topic,
    job_name,
    output_dir,
) -> None:
    """When ``subscription`` is set, the stream_predict task: launches the exported model
    as a streaming Dataflow job (whatever ``beam_runner`` says: a streaming job does not
    end, so it never runs in the pipeline's pod); the task outputs the job's id."""
    with dsl.If(subscription != "", name="streaming-predictions"):
        task = stage_task(
            stream_predict,
            "batch_predict",
            gke.beam if gke else None,
            input_subscription=subscription,
            output_topic=output_topic,
            dead_letter_topic=dead_letter_topic,
            model=exported_model,
            top_k=top_k,
            job_name=job_name,
            output_dir=output_dir,
            sdk_container_image=dataflow_worker_image("batch_predict"),
            **dict(dataflow, runner="DataflowRunner"),
        )
        task.set_caching_options(False)  # a launch is a side effect
