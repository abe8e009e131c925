"""What Vertex AI serves an export with: the prediction container, the machines, the
explanation spec, and the addresses of the API and its resources.

Shared by the deploy (``components.deploy.vertex``) and batch prediction
(``components.batch_predict.vertex``) components, so an export is served the same way by
an endpoint and by a batch prediction job. The container is Vertex AI's prebuilt
TensorFlow one matching the export's TensorFlow version unless a serving image is given
(see ``prebuilt_serving_image``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from google.cloud import aiplatform_v1

log = logging.getLogger(__name__)

# The newest TensorFlow of Vertex AI's prebuilt prediction containers (2.15, as listed on
# https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers and in the
# SDK's google.cloud.aiplatform.constants.prediction). Exports are written by a newer
# TensorFlow (2.21); TF 2.15 loads and runs them (checked with Python TF 2.15.1 on an
# export of this suite: same probabilities) since the serving graph uses only long-standing
# ops. A model using an op newer than the container's TensorFlow would fail to load:
# pass a serving_image that has it (a custom container) then.
NEWEST_PREBUILT_TF = "2.15"
PREBUILT_IMAGE = "{registry}-docker.pkg.dev/vertex-ai/prediction/tf2-{device}.{version}:latest"
DEFAULT_MACHINE_TYPE = "n1-standard-4"
_NO_ACCELERATOR = ("", "ACCELERATOR_TYPE_UNSPECIFIED")


def api_endpoint(region: str) -> str:
    """The regional Vertex AI API host, e.g. ``us-central1-aiplatform.googleapis.com``."""
    if not region:
        raise ValueError("a Vertex AI region (location) is required, e.g. us-central1")
    return f"{region}-aiplatform.googleapis.com"


def resource_uri(region: str, resource_name: str) -> str:
    """The REST URL of a resource: the URI of GCPC's Vertex artifacts
    (``https://{region}-aiplatform.googleapis.com/v1/{resource_name}``)."""
    return f"https://{api_endpoint(region)}/v1/{resource_name}"


def predict_url(region: str, endpoint_name: str) -> str:
    """The online prediction URL of an endpoint (POST ``{"instances": [...]}``)."""
    return f"{resource_uri(region, endpoint_name)}:predict"


def _registry(region: str) -> str:
    """The Artifact Registry multi-region of the prebuilt images nearest to a region
    (every one holds the same images)."""
    area = region.split("-", 1)[0]
    if area in ("us", "europe", "asia"):
        return area
    return "asia" if area == "australia" else "us"


def prebuilt_tf_versions() -> list[tuple[int, int]]:
    """TensorFlow 2 versions of the prebuilt prediction containers the Vertex AI SDK
    knows, ascending."""
    from google.cloud.aiplatform.constants import prediction

    versions = set()
    for uri in prediction.TF_CONTAINER_URIS:
        match = prediction.CONTAINER_URI_PATTERN.match(uri)
        if match and match["framework"] == "tf2":
            major, minor = match["version"].split("-")[:2]
            versions.add((int(major), int(minor)))
    return sorted(versions)


def prebuilt_serving_image(region: str, tf_version: str = "", accelerated: bool = False) -> str:
    """Vertex AI's prebuilt TensorFlow prediction image for a model's TensorFlow version.

    The newest container not newer than the model's TensorFlow; for a model newer than
    every container (the usual case: containers lag TensorFlow releases), the newest
    container, with a warning.

    Args:
        region: The Vertex AI region; picks the nearest of the us, europe and asia
            registries.
        tf_version: The TensorFlow version that wrote the model (e.g. ``"2.21.0"``, the
            export artifact's ``framework_version``); empty means ``NEWEST_PREBUILT_TF``.
        accelerated: The GPU image (``tf2-gpu``) instead of the CPU one.

    Returns:
        E.g. ``us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest``.
    """
    wanted = _major_minor(tf_version or NEWEST_PREBUILT_TF)
    if wanted[0] != 2:
        raise ValueError(f"only TensorFlow 2 models have prebuilt containers, not {tf_version}")
    known = prebuilt_tf_versions() or [_major_minor(NEWEST_PREBUILT_TF)]
    fitting = [v for v in known if v <= wanted]
    chosen = fitting[-1] if fitting else known[0]
    if chosen != wanted:
        log.warning(
            "no Vertex AI prebuilt container for TensorFlow %s: using TensorFlow %d.%d's; "
            "the model loads only if it uses no op newer than that",
            tf_version,
            *chosen,
        )
    return PREBUILT_IMAGE.format(
        registry=_registry(region),
        device="gpu" if accelerated else "cpu",
        version=f"{chosen[0]}-{chosen[1]}",
    )


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"^(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a TensorFlow version: {version!r}")
    return int(match[1]), int(match[2])


def saved_model_tf_version(export_dir: str) -> str:
    """The TensorFlow version recorded in a SavedModel (``saved_model.pb``'s meta graph)."""
    from tensorflow.core.protobuf import saved_model_pb2

    from components.common import io

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(io.read_bytes(io.join(export_dir, "saved_model.pb")))
    return saved_model.meta_graphs[0].meta_info_def.tensorflow_version


def dedicated_resources(
    machine_type: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    min_replica_count: int = 1,
    max_replica_count: int = 1,
) -> aiplatform_v1.DedicatedResources:
    """The machines of a deployment; no accelerator unless both type and count are set."""
    if min_replica_count < 1 or max_replica_count < min_replica_count:
        raise ValueError(
            f"replicas must satisfy 1 <= min ({min_replica_count}) <= max ({max_replica_count})"
        )
    return aiplatform_v1.DedicatedResources(
        machine_spec=machine_spec(machine_type, accelerator_type, accelerator_count),
        min_replica_count=min_replica_count,
        max_replica_count=max_replica_count,
    )


def machine_spec(
    machine_type: str, accelerator_type: str = "", accelerator_count: int = 0
) -> aiplatform_v1.MachineSpec:
    """A MachineSpec; an accelerator only when both its type and a count are given."""
    if not machine_type:
        raise ValueError("machine_type is required, e.g. n1-standard-4")
    if is_accelerated(accelerator_type, accelerator_count):
        return aiplatform_v1.MachineSpec(
            machine_type=machine_type,
            accelerator_type=accelerator_type,
            accelerator_count=accelerator_count,
        )
    if accelerator_count > 0:
        raise ValueError(f"accelerator_count {accelerator_count} needs an accelerator_type")
    return aiplatform_v1.MachineSpec(machine_type=machine_type)


def is_accelerated(accelerator_type: str, accelerator_count: int) -> bool:
    """Whether the machine gets accelerators (a type and a positive count)."""
    return accelerator_type not in _NO_ACCELERATOR and accelerator_count > 0


def serving_image_for(
    export_uri: str,
    region: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    serving_image: str = "",
    tf_version: str = "",
) -> str:
    """The container that serves an export: ``serving_image`` when given, else Vertex AI's
    prebuilt TensorFlow image for the export's TensorFlow version (``tf_version``, e.g. the
    export artifact's ``framework_version``; empty: read from the export), the GPU image
    when the machines have accelerators."""
    if serving_image:
        return serving_image
    accelerated = is_accelerated(accelerator_type, accelerator_count)
    tf_version = tf_version or saved_model_tf_version(export_uri)
    return prebuilt_serving_image(region, tf_version, accelerated)


def export_explanation_spec(
    export_uri: str,
    metadata: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[aiplatform_v1.ExplanationMetadata, aiplatform_v1.ExplanationParameters]:
    """The explanation spec to upload an export with: ``metadata`` and ``parameters``
    (Vertex AI REST JSON) when given, else the spec the export stage wrote in the export's
    ``assets.extra/``.

    Raises:
        ValueError: when none is given and the export holds none, or on an invalid spec.
    """
    if metadata or parameters:
        return explanation_spec_from_json(metadata, parameters)
    from components.export.explanation_metadata import vertex_explanation_spec

    try:
        return vertex_explanation_spec(export_uri)
    except FileNotFoundError as e:
        raise ValueError(
            f"the export holds no explanation spec ({e}); export it again or pass "
            "explanation_metadata and explanation_parameters"
        ) from e


def explanation_spec_from_json(
    metadata: Mapping[str, Any] | None, parameters: Mapping[str, Any] | None
) -> tuple[aiplatform_v1.ExplanationMetadata | None, aiplatform_v1.ExplanationParameters | None]:
    """Explanation metadata and parameters from their REST JSON (camelCase or snake_case
    field names, as GCPC's ModelUploadOp takes them); ``(None, None)`` when both are empty.

    Raises:
        ValueError: when only one is given, or on a field the API does not know.
    """
    from google.protobuf import json_format

    from components.export.explanation_metadata import to_vertex_types

    if not metadata and not parameters:
        return None, None
    if not metadata or not parameters:
        raise ValueError("explanation_metadata and explanation_parameters go together")
    try:
        return to_vertex_types(dict(metadata), dict(parameters))
    except json_format.ParseError as e:
        raise ValueError(f"invalid explanation spec: {e}") from e
