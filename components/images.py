"""The container image of each stage, read from configuration when components are defined.

``IMAGE_REGISTRY`` (e.g. ``us-central1-docker.pkg.dev/my-project/kfp``) and ``IMAGE_TAG``
(e.g. a commit SHA) name the images Cloud Build pushed; set them before importing the
components or compiling a pipeline. The defaults name local, unpublished images.
"""

from __future__ import annotations

import os

DEFAULT_REGISTRY = "localhost/kfp-image-classification"
DEFAULT_TAG = "dev"
STAGES = ("create_tfrecords", "train", "export", "evaluate", "deploy", "batch_predict")


def stage_image(stage: str) -> str:
    """The image a stage's component runs in: ``<registry>/<stage with dashes>:<tag>``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    registry = os.environ.get("IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    tag = os.environ.get("IMAGE_TAG", DEFAULT_TAG)
    return f"{registry}/{stage.replace('_', '-')}:{tag}"
