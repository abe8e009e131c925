"""Vertex AI's Models, versions and Endpoints as a deployment finds them (by display name,
by artifact), and an endpoint's traffic split when a version joins it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from google.cloud import aiplatform_v1


class VertexDeployError(RuntimeError):
    """The Vertex AI resources are not in a state this deployment can work with."""


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
    kms_key_name: str = "",
) -> aiplatform_v1.Model | None:
    """The newest version of a Model serving ``artifact_uri`` with ``serving_image``,
    encrypted with the Cloud KMS key ``kms_key_name`` ("": Google-managed encryption), so
    that a version uploaded without the key asked for now is not deployed as if it had it."""
    request = aiplatform_v1.ListModelVersionsRequest(name=model_name)
    matches = [
        version
        for version in model_client.list_model_versions(request=request)
        if _same_uri(version.artifact_uri, artifact_uri)
        and version.container_spec.image_uri == serving_image
        and version.encryption_spec.kms_key_name == kms_key_name
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


def get_endpoint(
    endpoint_client: aiplatform_v1.EndpointServiceClient, name: str
) -> aiplatform_v1.Endpoint:
    """The Endpoint as it is now (its deployed models and traffic split)."""
    return endpoint_client.get_endpoint(request=aiplatform_v1.GetEndpointRequest(name=name))


def deployment_of(
    endpoint: aiplatform_v1.Endpoint, model_name: str, version_id: str
) -> aiplatform_v1.DeployedModel | None:
    """The deployment of a Model's version on the endpoint, None if it is not there."""
    for dm in endpoint.deployed_models:
        if _model_id(dm.model) == _model_id(model_name) and dm.model_version_id == version_id:
            return dm
    return None


# --------------------------------------------------------------------------- access


def endpoint_access(endpoint: aiplatform_v1.Endpoint) -> str:
    """How an endpoint is reached, for a person: "public", "private on <network>" (Private
    Service Access: VPC Network Peering) or "Private Service Connect"."""
    if endpoint.network:
        return f"private on {endpoint.network}"
    if (
        endpoint.enable_private_service_connect
        or endpoint.private_service_connect_config.enable_private_service_connect
    ):
        return "Private Service Connect"
    return "public"


def check_endpoint(
    endpoint: aiplatform_v1.Endpoint, network: str, kms_key_name: str, model_name: str
) -> None:
    """Checks that an existing endpoint is the one this deployment asks for.

    An endpoint's network and key are fixed when it is created, so one of the same display
    name that differs is an error, not something to deploy to as if it were the one asked
    for: the team's rules would be silently broken, or its clients cut off.

    Args:
        endpoint: The endpoint found by display name.
        network: The VPC network of the private endpoint asked for; "" for a public one.
        kms_key_name: The Cloud KMS key asked for; "" asks for none.
        model_name: This deployment's Model ("" when there is none yet).

    Raises:
        VertexDeployError: when the endpoint is public and a private one is asked for, or
            the other way, or private on another network; when it is not encrypted with
            the key asked for; or when, private (one deployment only), it serves another
            Model.
    """
    wanted = f"private on {network}" if network else "public"
    found = endpoint_access(endpoint)
    if found != wanted:
        raise VertexDeployError(
            f"endpoint {endpoint.name} ({endpoint.display_name!r}) is {found}, but a {wanted} "
            "endpoint is asked for (private_endpoint, network); an endpoint's network is set "
            "when it is created: deploy under another endpoint display name, or delete it"
        )
    if kms_key_name and endpoint.encryption_spec.kms_key_name != kms_key_name:
        current = endpoint.encryption_spec.kms_key_name or "Google-managed encryption"
        raise VertexDeployError(
            f"endpoint {endpoint.name} ({endpoint.display_name!r}) is encrypted with "
            f"{current}, not with the key asked for, {kms_key_name}; an endpoint's key is set "
            "when it is created: deploy under another endpoint display name, or delete it"
        )
    if network:
        ours = _model_id(model_name) if model_name else None
        others = [dm.id for dm in endpoint.deployed_models if _model_id(dm.model) != ours]
        if others:
            raise VertexDeployError(
                f"private endpoint {endpoint.name} serves another Model (deployed model(s) "
                f"{', '.join(others)}) and a private endpoint holds one deployment only: "
                "deploy under another endpoint display name"
            )
