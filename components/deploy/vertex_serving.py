"""What Vertex AI serves an export with: the prediction container, the machines, the
explanation spec, and the addresses of the API and its resources.

Shared by the deploy (``components.deploy.vertex``) and batch prediction
(``components.batch_predict.vertex``) components. The container of a deployment
(``serving_container_for``) is one of two kinds:

* ``prebuilt``: Vertex AI's prebuilt TensorFlow prediction container for the export's
  TensorFlow version (``prebuilt_serving_image``), which needs nothing but the image URI;
* ``custom``: the suite's own deploy stage image (``components.images``), whose model
  server runs as a Vertex AI custom container (``custom_container_spec``). Vertex's newest
  prebuilt TensorFlow container is 2.15 while exports are written by TensorFlow 2.21, so
  by default (``auto``) an export newer than every prebuilt container is served by the
  TensorFlow it was written with.

A batch prediction job of an export outside a Model (``serving_image_for``) still uses the
prebuilt container.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from google.cloud import aiplatform_v1

from components.common.gcp_names import kms_key_name
from components.deploy import DEFAULT_HTTP_PORT, DEFAULT_MODEL_NAME
from components.images import stage_image

log = logging.getLogger(__name__)

# The newest TensorFlow of Vertex AI's prebuilt prediction containers (2.15, as listed on
# https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers and in the
# SDK's google.cloud.aiplatform.constants.prediction). Exports are written by a newer
# TensorFlow (2.21); TF 2.15 loads and runs them (checked with Python TF 2.15.1 on an
# export of this suite: same probabilities) since the serving graph uses only long-standing
# ops. A model using an op newer than the container's TensorFlow would fail to load, so
# such exports are served by default on the suite's deploy image (a custom container,
# with the TensorFlow that wrote them) instead; see serving_container_for.
NEWEST_PREBUILT_TF = "2.15"
PREBUILT_IMAGE = "{registry}-docker.pkg.dev/vertex-ai/prediction/tf2-{device}.{version}:latest"
DEFAULT_MACHINE_TYPE = "n1-standard-4"
_NO_ACCELERATOR = ("", "ACCELERATOR_TYPE_UNSPECIFIED")
# How deploy_vertex serves an export; see serving_container_for.
SERVING_CONTAINERS = ("auto", "prebuilt", "custom")
# The deploy image's model server as a Vertex AI custom container. Vertex AI expands
# $(AIP_STORAGE_URI) in args to the Cloud Storage copy of the Model's artifact_uri it makes,
# and sends health checks and predictions to the first port listed (AIP_HTTP_PORT), on
# the routes of the spec (AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE).
SERVER_COMMAND = ("python", "-m", "components.deploy.server")
SERVER_HEALTH_ROUTE = "/v2/health/ready"  # 200 once the model is loaded, 503 before


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


def encryption_spec(key_name: str) -> aiplatform_v1.EncryptionSpec | None:
    """The encryption spec of a resource encrypted with the Cloud KMS key ``key_name``
    (``projects/P/locations/L/keyRings/R/cryptoKeys/K``, in the resource's region); None
    for an empty name: Google-managed encryption.

    Raises:
        ValueError: when ``key_name`` is not a Cloud KMS key's resource name.
    """
    key_name = kms_key_name(key_name)
    return aiplatform_v1.EncryptionSpec(kms_key_name=key_name) if key_name else None


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
    known = _known_prebuilt_versions()
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


class ServingContainer(NamedTuple):
    """The container of a Model version: its kind (``"prebuilt"`` or ``"custom"``) and
    the ModelContainerSpec to upload it with."""

    kind: str
    spec: aiplatform_v1.ModelContainerSpec


def serving_container_for(
    export_uri: str,
    region: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    serving_image: str = "",
    tf_version: str = "",
    serving_container: str = "auto",
    model_name: str = DEFAULT_MODEL_NAME,
    deploy_image: str = "",
    explained: bool = False,
) -> ServingContainer:
    """The container that serves an export on Vertex AI, and how.

    ``serving_container`` says which kind:

    * ``"prebuilt"``: the image alone, run with its own entry point: ``serving_image``, else
      Vertex AI's prebuilt TensorFlow image for the export's TensorFlow version (the GPU
      one with accelerators; see ``serving_image_for``).
    * ``"custom"``: the suite's model server (``custom_container_spec``) on
      ``serving_image``, else ``deploy_image``, else the deploy stage image as configured
      here (``components.images.stage_image("deploy")``). That image has CPU TensorFlow:
      with accelerators it logs a warning that they stay idle.
    * ``"auto"``: a ``serving_image`` given is used as it is (``"prebuilt"``, as before
      this option existed). Else the prebuilt container when Vertex AI has one for the
      export's TensorFlow major.minor or a newer one (TensorFlow loads SavedModels of older
      versions), and the deploy image as a custom container for an export newer than
      every prebuilt container (TensorFlow 2.21's exports: the newest is 2.15). Two cases
      keep the newest prebuilt container even then, with a warning: accelerators (the
      deploy image would leave them idle), and an explanation spec (``explained``:
      Vertex Explainable AI's integrated gradients and XRAI, which the export stage
      configures, run on Vertex AI's TensorFlow container, not in a custom one). This
      suite's exports load on TensorFlow 2.15 (see ``NEWEST_PREBUILT_TF``).

    Args:
        export_uri: The SavedModel directory (gs://); read only for its TensorFlow version
            when ``tf_version`` is empty and the choice needs it.
        region: The Vertex AI region (the prebuilt image's registry).
        accelerator_type: The serving machines' accelerator; empty for none.
        accelerator_count: Accelerators per replica.
        serving_image: The image to use instead of the chosen kind's default one.
        tf_version: The TensorFlow version that wrote the export (the export artifact's
            ``framework_version``); empty: read from the export.
        serving_container: ``"auto"``, ``"prebuilt"`` or ``"custom"``.
        model_name: The model's name inside a custom container (its predict route,
            ``/v1/models/<name>:predict``): the Model's display name.
        deploy_image: The deploy stage image; empty: ``stage_image("deploy")`` from
            ``IMAGE_REGISTRY``/``IMAGE_TAG`` where this runs (a pipeline passes the one it
            was compiled with, since its tasks do not see those variables).
        explained: Whether the Model is uploaded with an explanation spec.

    Returns:
        The kind and the ModelContainerSpec.

    Raises:
        ValueError: on an unknown ``serving_container``, or a custom container whose
            image is a local build's name (``localhost/...``), which Vertex AI cannot pull.
    """
    if serving_container not in SERVING_CONTAINERS:
        raise ValueError(
            f"serving_container must be one of {SERVING_CONTAINERS}, not {serving_container!r}"
        )
    accelerated = is_accelerated(accelerator_type, accelerator_count)
    kind = serving_container
    if kind == "auto":
        if serving_image:
            kind = "prebuilt"
        else:
            tf_version = tf_version or saved_model_tf_version(export_uri)
            kind = _auto_kind(tf_version, accelerated, explained)
    if kind == "prebuilt":
        image = serving_image_for(
            export_uri, region, accelerator_type, accelerator_count, serving_image, tf_version
        )
        return ServingContainer("prebuilt", aiplatform_v1.ModelContainerSpec(image_uri=image))
    image = serving_image or deploy_image or stage_image("deploy")
    if _is_local_image(image):
        raise ValueError(
            f"the custom serving container's image {image!r} is a local build's name, which "
            "Vertex AI cannot pull: push the images to Artifact Registry and set "
            "IMAGE_REGISTRY (and IMAGE_TAG) to them where the pipeline is compiled or "
            "deploy runs, or pass deploy_image, or serving_container='prebuilt'"
        )
    if accelerated:
        log.warning(
            "the custom serving container %s runs CPU TensorFlow: the %d %s per replica "
            "stay idle (serve without accelerators, or with serving_container='prebuilt')",
            image,
            accelerator_count,
            accelerator_type,
        )
    if explained:
        log.warning(
            "the Model is uploaded with an explanation spec on a custom container: Vertex "
            "Explainable AI's gradient methods (integrated gradients, XRAI) need Vertex AI's "
            "TensorFlow container (serving_container='prebuilt')"
        )
    return ServingContainer("custom", custom_container_spec(image, model_name))


def _auto_kind(tf_version: str, accelerated: bool, explained: bool) -> str:
    """``auto``'s choice for an export without a serving image given."""
    if has_prebuilt_container(tf_version):
        return "prebuilt"
    why = "accelerators" if accelerated else "an explanation spec" if explained else ""
    if why:
        log.warning(
            "no Vertex AI prebuilt container for TensorFlow %s, but with %s the export is "
            "served on the newest prebuilt one (TensorFlow %s) rather than on the deploy "
            "image; pass serving_container='custom' to serve it on its own TensorFlow",
            tf_version,
            why,
            NEWEST_PREBUILT_TF,
        )
        return "prebuilt"
    log.info(
        "no Vertex AI prebuilt container for TensorFlow %s: serving the export on the "
        "deploy image as a custom container",
        tf_version,
    )
    return "custom"


def has_prebuilt_container(tf_version: str) -> bool:
    """Whether Vertex AI has a prebuilt TensorFlow container for a model's TensorFlow
    version: one of the same major version and the same or a newer minor version."""
    wanted = _major_minor(tf_version)
    return any(v[0] == wanted[0] and v >= wanted for v in _known_prebuilt_versions())


def _known_prebuilt_versions() -> list[tuple[int, int]]:
    return prebuilt_tf_versions() or [_major_minor(NEWEST_PREBUILT_TF)]


def custom_container_spec(
    image: str, model_name: str = DEFAULT_MODEL_NAME
) -> aiplatform_v1.ModelContainerSpec:
    """The ModelContainerSpec of the suite's model server as a Vertex AI custom container.

    The server (``python -m components.deploy.server``) serves the SavedModel at
    ``$(AIP_STORAGE_URI)`` (Vertex AI expands it to its copy of the Model's
    ``artifact_uri``) on 0.0.0.0:8080, without gRPC. Vertex AI sends predictions to
    ``/v1/models/<name>:predict`` (TensorFlow Serving's REST route, which the server
    answers with Vertex's ``{"instances": [...]}`` body) and health checks to
    ``/v2/health/ready`` (200 once the model is loaded).

    Args:
        image: The deploy image (it must be in a registry Vertex AI can pull from).
        model_name: The model's name in the server; characters other than letters,
            digits, ``.``, ``_`` and ``-`` become ``-`` (it is part of a URL path).
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-.") or DEFAULT_MODEL_NAME
    port = DEFAULT_HTTP_PORT
    args = ["--model-dir", "$(AIP_STORAGE_URI)", "--model-name", name,
            "--host", "0.0.0.0", "--http-port", str(port), "--grpc-port", "0"]  # fmt: skip
    return aiplatform_v1.ModelContainerSpec(
        image_uri=image,
        command=list(SERVER_COMMAND),
        args=args,
        ports=[aiplatform_v1.Port(container_port=port)],
        predict_route=f"/v1/models/{name}:predict",
        health_route=SERVER_HEALTH_ROUTE,
    )


def _is_local_image(image: str) -> bool:
    """Whether an image is named in a local registry (``localhost/...``, the default of
    ``components.images``, or ``localhost:5000/...``)."""
    host = image.split("/", 1)[0] if "/" in image else ""
    return host.split(":", 1)[0] in ("localhost", "127.0.0.1")


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
