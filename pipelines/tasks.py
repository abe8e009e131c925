"""How the pipeline makes its tasks: each on its stage's image as configured when the
pipeline is built, and on the kfp target with the Kubernetes resources it asks GKE for."""

from __future__ import annotations

import dataclasses

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.images import stage_image

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
