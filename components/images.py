"""The container image of each stage, read from configuration when components are defined.

``IMAGE_REGISTRY`` (e.g. ``us-central1-docker.pkg.dev/my-project/kfp``) and ``IMAGE_TAG``
(e.g. a commit SHA) name the images Cloud Build pushed; set them before importing the
components or compiling a pipeline. The defaults name the local images ``make images``
builds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

DEFAULT_REGISTRY = "localhost/kfp-image-classification"
DEFAULT_TAG = "dev"
STAGES = ("create_tfrecords", "train", "export", "evaluate", "deploy", "batch_predict")
# The Apache Beam stages: their Dockerfiles also have a `dataflow-worker` target, the image
# Dataflow's workers run (--sdk_container_image).
BEAM_STAGES = ("create_tfrecords", "batch_predict")


def _image(name: str) -> str:
    registry = os.environ.get("IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    tag = os.environ.get("IMAGE_TAG", DEFAULT_TAG)
    return f"{registry}/{name}:{tag}"


def stage_image(stage: str) -> str:
    """The image a stage's component runs in: ``<registry>/<stage with dashes>:<tag>``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return _image(stage.replace("_", "-"))


def dataflow_worker_image(stage: str) -> str:
    """The Dataflow SDK worker image of a Beam stage (its Dockerfile's ``dataflow-worker``
    target): ``<registry>/<stage with dashes>-dataflow:<tag>``."""
    if stage not in BEAM_STAGES:
        raise ValueError(f"{stage!r} is not a Beam stage; expected one of {BEAM_STAGES}")
    return _image(stage.replace("_", "-") + "-dataflow")


def on_stage_image(component: PythonComponent, stage: str) -> PythonComponent:
    """``component`` made again from its Python function with ``stage``'s image as
    configured now as its base image.

    A component takes its image when its module is imported; a pipeline task can be moved
    to another with ``set_container_image``, but a component compiled or shared on its own
    carries its base image, so it is rebuilt here on the one ``IMAGE_REGISTRY`` and
    ``IMAGE_TAG`` name at the time of the call.
    """
    # Imported here: a component's module imports this one while kfp's executor is still
    # importing kfp.dsl in a kfp local task (a top-level import is circular there).
    from kfp import dsl

    on_image = dsl.component(base_image=stage_image(stage), install_kfp_package=False)
    return on_image(component.python_func)
