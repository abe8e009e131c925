"""Deploys an exported SavedModel to a Vertex AI endpoint, idempotently, with canary traffic.

``deploy_to_vertex`` does, through the Vertex AI API (``google.cloud.aiplatform_v1``)::

    1. find the Model by display name         ModelService.ListModels (filter display_name)
    2. find a version with this artifact      ModelService.ListModelVersions
       and serving image
    3. find the Endpoint by display name      EndpointService.ListEndpoints
    -- that version already deployed there: stop, report it (nothing is created) --
    4. upload a new version, unless 2 found   ModelService.UploadModel (parent_model: the
       one                                    Model of 1, so a re-upload is a new version
                                              of the same Model, not a new Model)
    5. create the Endpoint, unless 3 found    EndpointService.CreateEndpoint
    6. deploy the version with its traffic    EndpointService.DeployModel (traffic_split:
       share (a canary), the rest staying     "0", the new deployment, at traffic_percent;
       on what served before, in proportion   the others scaled down, summing to 100)
    7. undeploy this Model's older versions   EndpointService.UndeployModel
       that get no traffic, beyond
       keep_versions

The same export deployed again (the same artifact URI and serving image: a Vertex AI
Pipelines artifact URI names one task's output of one run) does nothing and reports what
serves it. Failures leave nothing half-done that a re-run would duplicate: an uploaded
version is found again in step 2, a created endpoint in step 3.

The clients are parameters, built from the region by default, so tests and callers can
pass their own. The serving container is Vertex AI's prebuilt TensorFlow one matching the
export's TensorFlow version, see ``prebuilt_serving_image``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
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
# Deploying a model (machines, container start, model load) takes minutes, often more
# than google-api-core's default 900 s wait for an operation.
DEFAULT_OPERATION_TIMEOUT_S = 3600.0
_NO_ACCELERATOR = ("", "ACCELERATOR_TYPE_UNSPECIFIED")


class VertexDeployError(RuntimeError):
    """The Vertex AI resources are not in a state this deployment can work with."""


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


def model_service_client(region: str) -> aiplatform_v1.ModelServiceClient:
    """A ModelService client for the region, with Application Default Credentials."""
    return aiplatform_v1.ModelServiceClient(client_options={"api_endpoint": api_endpoint(region)})


def endpoint_service_client(region: str) -> aiplatform_v1.EndpointServiceClient:
    """An EndpointService client for the region, with Application Default Credentials."""
    return aiplatform_v1.EndpointServiceClient(
        client_options={"api_endpoint": api_endpoint(region)}
    )


# --------------------------------------------------------------------------- serving image


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


# --------------------------------------------------------------------------- traffic


def split_traffic(current: Mapping[str, int], traffic_percent: int) -> dict[str, int]:
    """The endpoint's traffic split once a new model is deployed with ``traffic_percent``.

    The new deployment is ``"0"`` (the DeployModel convention for "the model being
    deployed"); the models that serve now keep the rest in proportion to their current
    shares, rounded to whole percents by largest remainder so the split sums to 100.

    Args:
        current: The endpoint's ``traffic_split`` (deployed model ID to percent).
        traffic_percent: The new deployment's share, 0 to 100.

    Returns:
        The split to send with the DeployModel request, without zero entries. With
        no model serving traffic yet the new one gets 100, whatever ``traffic_percent``.
    """
    if not 0 <= traffic_percent <= 100:
        raise ValueError(f"traffic_percent must be in [0, 100], got {traffic_percent}")
    serving = {k: int(v) for k, v in current.items() if v > 0}
    total = sum(serving.values())
    if total == 0:
        return {"0": 100}
    remaining = 100 - traffic_percent
    exact = {k: remaining * v / total for k, v in serving.items()}
    split = {k: math.floor(x) for k, x in exact.items()}
    leftover = remaining - sum(split.values())
    # Largest remainder first; ties to the larger current share, then to the ID.
    order = sorted(exact, key=lambda k: (split[k] - exact[k], -serving[k], k))
    for k in order[:leftover]:
        split[k] += 1
    result = {"0": traffic_percent} if traffic_percent else {}
    result.update({k: v for k, v in sorted(split.items()) if v})
    return result


def versions_to_undeploy(
    endpoint: aiplatform_v1.Endpoint, model_name: str, keep_deployed_model_id: str, keep: int
) -> list[aiplatform_v1.DeployedModel]:
    """This Model's deployments on the endpoint to undeploy so that at most ``keep`` stay.

    ``keep_deployed_model_id`` (the new deployment) and every deployment with traffic
    stay, whatever ``keep``; the other deployments of the same Model stay newest first
    while fewer than ``keep`` do. Other Models' deployments are not this Model's to touch.
    """
    model_id = _model_id(model_name)
    traffic = dict(endpoint.traffic_split)
    older = [
        dm
        for dm in endpoint.deployed_models
        if _model_id(dm.model) == model_id and dm.id != keep_deployed_model_id
    ]
    kept = 1 + sum(1 for dm in older if traffic.get(dm.id, 0) > 0)
    idle = [dm for dm in older if traffic.get(dm.id, 0) <= 0]
    idle.sort(key=lambda dm: (_timestamp(dm.create_time), dm.id), reverse=True)
    undeploy = []
    for dm in idle:
        if kept < keep:
            kept += 1
        else:
            undeploy.append(dm)
    return undeploy


def _timestamp(value: Any) -> float:
    return value.timestamp() if value else 0.0


def _model_id(name: str) -> str:
    """The Model ID of ``projects/P/locations/L/models/ID[@version]``; the project part
    may be a number or an ID depending on who wrote the name, the model ID does not."""
    return name.rsplit("/", 1)[-1].split("@", 1)[0]


# --------------------------------------------------------------------------- look-ups


def _display_name_filter(display_name: str) -> str:
    escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'display_name="{escaped}"'


def _one(found: Iterable[Any], what: str, display_name: str) -> Any | None:
    found = list(found)
    if len(found) > 1:
        names = ", ".join(item.name for item in found)
        raise VertexDeployError(
            f"{len(found)} {what}s are named {display_name!r} ({names}); which one to deploy "
            f"to is ambiguous: delete or rename all but one, or choose another display name"
        )
    return found[0] if found else None


def find_model(
    model_client: aiplatform_v1.ModelServiceClient, parent: str, display_name: str
) -> aiplatform_v1.Model | None:
    """The Model named ``display_name`` in ``parent``, None if there is none.

    Raises:
        VertexDeployError: when several Models have that display name.
    """
    request = aiplatform_v1.ListModelsRequest(
        parent=parent, filter=_display_name_filter(display_name)
    )
    return _one(model_client.list_models(request=request), "Model", display_name)


def find_version(
    model_client: aiplatform_v1.ModelServiceClient,
    model_name: str,
    artifact_uri: str,
    serving_image: str,
) -> aiplatform_v1.Model | None:
    """The newest version of a Model serving ``artifact_uri`` with ``serving_image``."""
    request = aiplatform_v1.ListModelVersionsRequest(name=model_name)
    matches = [
        version
        for version in model_client.list_model_versions(request=request)
        if _same_uri(version.artifact_uri, artifact_uri)
        and version.container_spec.image_uri == serving_image
    ]
    matches.sort(key=lambda v: int(v.version_id) if v.version_id.isdigit() else 0)
    return matches[-1] if matches else None


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def find_endpoint(
    endpoint_client: aiplatform_v1.EndpointServiceClient, parent: str, display_name: str
) -> aiplatform_v1.Endpoint | None:
    """The Endpoint named ``display_name`` in ``parent``, None if there is none.

    Raises:
        VertexDeployError: when several Endpoints have that display name.
    """
    request = aiplatform_v1.ListEndpointsRequest(
        parent=parent, filter=_display_name_filter(display_name)
    )
    return _one(endpoint_client.list_endpoints(request=request), "Endpoint", display_name)


def _get_endpoint(
    endpoint_client: aiplatform_v1.EndpointServiceClient, name: str
) -> aiplatform_v1.Endpoint:
    return endpoint_client.get_endpoint(request=aiplatform_v1.GetEndpointRequest(name=name))


def _deployment_of(
    endpoint: aiplatform_v1.Endpoint, model_name: str, version_id: str
) -> aiplatform_v1.DeployedModel | None:
    for dm in endpoint.deployed_models:
        if _model_id(dm.model) == _model_id(model_name) and dm.model_version_id == version_id:
            return dm
    return None


# --------------------------------------------------------------------------- requests


def upload_model_request(
    parent: str,
    display_name: str,
    artifact_uri: str,
    serving_image: str,
    parent_model: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    explanation_metadata: aiplatform_v1.ExplanationMetadata | None = None,
    explanation_parameters: aiplatform_v1.ExplanationParameters | None = None,
) -> aiplatform_v1.UploadModelRequest:
    """The UploadModel request of an exported SavedModel on a prebuilt (or any) container.

    With ``parent_model`` the upload is a new version of that Model, made its default
    version (the SDK's ``is_default_version``); without, a new Model.
    """
    if (explanation_metadata is None) != (explanation_parameters is None):
        raise ValueError("explanation_metadata and explanation_parameters go together")
    model = aiplatform_v1.Model(
        display_name=display_name,
        description=description,
        artifact_uri=artifact_uri,
        container_spec=aiplatform_v1.ModelContainerSpec(image_uri=serving_image),
        labels=dict(labels or {}),
        version_aliases=["default"],
    )
    if explanation_metadata is not None:
        model.explanation_spec = aiplatform_v1.ExplanationSpec(
            metadata=explanation_metadata, parameters=explanation_parameters
        )
    return aiplatform_v1.UploadModelRequest(parent=parent, parent_model=parent_model, model=model)


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


# --------------------------------------------------------------------------- deploy


def deploy_to_vertex(
    artifact_uri: str,
    project: str,
    region: str,
    model_display_name: str,
    endpoint_display_name: str = "",
    serving_image: str = "",
    tf_version: str = "",
    machine_type: str = DEFAULT_MACHINE_TYPE,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    min_replica_count: int = 1,
    max_replica_count: int = 1,
    traffic_percent: int = 100,
    keep_versions: int = 1,
    service_account: str = "",
    labels: Mapping[str, str] | None = None,
    explanation_metadata: aiplatform_v1.ExplanationMetadata | None = None,
    explanation_parameters: aiplatform_v1.ExplanationParameters | None = None,
    operation_timeout_s: float = DEFAULT_OPERATION_TIMEOUT_S,
    model_client: aiplatform_v1.ModelServiceClient | None = None,
    endpoint_client: aiplatform_v1.EndpointServiceClient | None = None,
) -> dict:
    """Uploads an exported SavedModel as a Model version and deploys it to an endpoint.

    Args:
        artifact_uri: The SavedModel directory on Cloud Storage (``gs://...``, with
            ``saved_model.pb`` at its root): the export artifact's URI on Vertex AI.
        project: Google Cloud project (ID or number).
        region: Vertex AI region, e.g. ``us-central1``.
        model_display_name: The Model's display name; a Model of that name gets a new
            version, none means a new Model.
        endpoint_display_name: The Endpoint's display name, created if there is none;
            empty means ``<model_display_name>-endpoint``.
        serving_image: The prediction container; empty picks Vertex AI's prebuilt
            TensorFlow image for ``tf_version`` (GPU image with an accelerator).
        tf_version: The TensorFlow version that wrote the model, for the prebuilt image.
        machine_type: The serving machine type, e.g. ``n1-standard-4``.
        accelerator_type: E.g. ``NVIDIA_TESLA_T4``; empty for none.
        accelerator_count: Accelerators per replica (0 for none).
        min_replica_count: Fewest serving replicas (autoscaling floor, at least 1).
        max_replica_count: Most serving replicas.
        traffic_percent: The new version's share of the endpoint's traffic (a canary
            below 100); the models serving now keep the rest in proportion.
        keep_versions: Most deployments of this Model left on the endpoint, the new one
            included; older ones without traffic beyond that are undeployed (a
            deployment without traffic still holds its machines). Deployments with
            traffic always stay.
        service_account: Service account the serving container runs as; empty for
            Vertex AI's default.
        labels: Labels of the uploaded Model version and a created Endpoint.
        explanation_metadata: With ``explanation_parameters``, the uploaded Model's
            explanation spec (Vertex Explainable AI).
        explanation_parameters: See ``explanation_metadata``.
        operation_timeout_s: How long to wait for each long-running operation.
        model_client: ModelService client; by default one for ``region``.
        endpoint_client: EndpointService client; by default one for ``region``.

    Returns:
        ``model`` (the Model's resource name), ``model_version_id``,
        ``model_version_name`` (``<model>@<version>``), ``endpoint`` (resource name),
        ``deployed_model_id``, ``traffic_split`` (the endpoint's, at the end),
        ``undeployed`` (deployed model IDs removed), ``serving_image``, ``artifact_uri``,
        ``uploaded``, ``endpoint_created``, ``already_deployed`` (True when nothing
        was done: this export already served there), ``predict_url`` and ``region``.

    Raises:
        ValueError: on invalid arguments (e.g. an artifact not on Cloud Storage).
        VertexDeployError: when display names are ambiguous, or the deployment is not
            on the endpoint after DeployModel.
    """
    if not artifact_uri.startswith("gs://"):
        raise ValueError(
            f"Vertex AI serves a model from Cloud Storage; the artifact is at {artifact_uri!r}"
            " (run the pipeline on Vertex AI Pipelines, or copy the export to gs://)"
        )
    if not project:
        raise ValueError("project is required")
    if not model_display_name:
        raise ValueError("model_display_name is required")
    if keep_versions < 1:
        raise ValueError(f"keep_versions must be >= 1 (the new version), got {keep_versions}")
    if not 0 <= traffic_percent <= 100:
        raise ValueError(f"traffic_percent must be in [0, 100], got {traffic_percent}")
    endpoint_display_name = endpoint_display_name or f"{model_display_name}-endpoint"
    accelerated = is_accelerated(accelerator_type, accelerator_count)
    resources = dedicated_resources(
        machine_type, accelerator_type, accelerator_count, min_replica_count, max_replica_count
    )
    serving_image = serving_image or prebuilt_serving_image(region, tf_version, accelerated)
    model_client = model_client or model_service_client(region)
    endpoint_client = endpoint_client or endpoint_service_client(region)
    parent = f"projects/{project}/locations/{region}"
    result = {
        "region": region,
        "artifact_uri": artifact_uri,
        "serving_image": serving_image,
        "uploaded": False,
        "endpoint_created": False,
        "already_deployed": False,
        "undeployed": [],
    }

    model = find_model(model_client, parent, model_display_name)
    version = find_version(model_client, model.name, artifact_uri, serving_image) if model else None
    endpoint = find_endpoint(endpoint_client, parent, endpoint_display_name)

    if version is not None and endpoint is not None:
        deployed = _deployment_of(endpoint, model.name, version.version_id)
        if deployed is not None:
            log.info(
                "%s is already deployed as version %s of %s on %s (deployed model %s): "
                "nothing to do",
                artifact_uri,
                version.version_id,
                model.name,
                endpoint.name,
                deployed.id,
            )
            return _report(result, model.name, version.version_id, endpoint, deployed.id) | {
                "already_deployed": True
            }

    if version is None:
        request = upload_model_request(
            parent,
            model_display_name,
            artifact_uri,
            serving_image,
            parent_model=model.name if model else "",
            labels=labels,
            explanation_metadata=explanation_metadata,
            explanation_parameters=explanation_parameters,
        )
        uploaded = model_client.upload_model(request=request).result(timeout=operation_timeout_s)
        model_name, version_id = uploaded.model, uploaded.model_version_id
        result["uploaded"] = True
        log.info("uploaded %s as version %s of %s", artifact_uri, version_id, model_name)
    else:
        model_name, version_id = model.name, version.version_id
        log.info("reusing version %s of %s (same artifact and image)", version_id, model_name)

    if endpoint is None:
        request = aiplatform_v1.CreateEndpointRequest(
            parent=parent,
            endpoint=aiplatform_v1.Endpoint(
                display_name=endpoint_display_name, labels=dict(labels or {})
            ),
        )
        endpoint = endpoint_client.create_endpoint(request=request).result(
            timeout=operation_timeout_s
        )
        result["endpoint_created"] = True
        log.info("created endpoint %s (%s)", endpoint.name, endpoint_display_name)

    deploy_request = aiplatform_v1.DeployModelRequest(
        endpoint=endpoint.name,
        deployed_model=aiplatform_v1.DeployedModel(
            model=f"{model_name}@{version_id}",
            display_name=f"{model_display_name}-v{version_id}",
            dedicated_resources=resources,
            service_account=service_account,
        ),
        traffic_split=split_traffic(endpoint.traffic_split, traffic_percent),
    )
    response = endpoint_client.deploy_model(request=deploy_request).result(
        timeout=operation_timeout_s
    )
    deployed_model_id = response.deployed_model.id
    log.info(
        "deployed version %s of %s on %s as %s; traffic split %s",
        version_id,
        model_name,
        endpoint.name,
        deployed_model_id,
        dict(deploy_request.traffic_split),
    )

    endpoint = _get_endpoint(endpoint_client, endpoint.name)
    if not any(dm.id == deployed_model_id for dm in endpoint.deployed_models):
        raise VertexDeployError(
            f"deployed model {deployed_model_id} is not on {endpoint.name} after DeployModel"
        )
    stale = versions_to_undeploy(endpoint, model_name, deployed_model_id, keep_versions)
    for dm in stale:
        request = aiplatform_v1.UndeployModelRequest(
            endpoint=endpoint.name, deployed_model_id=dm.id
        )
        endpoint_client.undeploy_model(request=request).result(timeout=operation_timeout_s)
        log.info("undeployed %s (version %s), which had no traffic", dm.id, dm.model_version_id)
    if stale:
        endpoint = _get_endpoint(endpoint_client, endpoint.name)
    result["undeployed"] = [dm.id for dm in stale]
    return _report(result, model_name, version_id, endpoint, deployed_model_id)


def _report(
    result: dict,
    model_name: str,
    version_id: str,
    endpoint: aiplatform_v1.Endpoint,
    deployed_model_id: str,
) -> dict:
    model_name = model_name.split("@", 1)[0]
    return result | {
        "model": model_name,
        "model_version_id": version_id,
        "model_version_name": f"{model_name}@{version_id}",
        "endpoint": endpoint.name,
        "deployed_model_id": deployed_model_id,
        "traffic_split": {k: int(v) for k, v in sorted(endpoint.traffic_split.items())},
        "predict_url": predict_url(result["region"], endpoint.name),
    }


def explanation_spec_from_json(
    metadata: Mapping[str, Any] | None, parameters: Mapping[str, Any] | None
) -> tuple[aiplatform_v1.ExplanationMetadata | None, aiplatform_v1.ExplanationParameters | None]:
    """Explanation metadata and parameters from their REST JSON (camelCase or snake_case
    field names, as GCPC's ModelUploadOp takes them); ``(None, None)`` when both are empty.

    Raises:
        ValueError: when only one is given, or on a field the API does not know.
    """
    import json

    from google.protobuf import json_format

    if not metadata and not parameters:
        return None, None
    if not metadata or not parameters:
        raise ValueError("explanation_metadata and explanation_parameters go together")
    try:
        return (
            aiplatform_v1.ExplanationMetadata.from_json(json.dumps(dict(metadata))),
            aiplatform_v1.ExplanationParameters.from_json(json.dumps(dict(parameters))),
        )
    except json_format.ParseError as e:
        raise ValueError(f"invalid explanation spec: {e}") from e
