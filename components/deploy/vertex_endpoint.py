"""The changes a deployment makes to a Vertex AI Endpoint, each a long-running operation
of ``EndpointService`` waited for: create it, make way on a private endpoint (one
deployment only), deploy a Model version with its traffic share, undeploy this Model's
older versions that get no traffic. What they are decided from (the look-ups, the traffic
split, the versions to undeploy) is ``components.deploy.vertex_resources``'s; the order
they run in is ``components.deploy.vertex.deploy_to_vertex``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from google.cloud import aiplatform_v1

from components.deploy.vertex_resources import (
    VertexDeployError,
    get_endpoint,
    split_traffic,
    versions_to_undeploy,
)
from components.deploy.vertex_serving import encryption_spec

log = logging.getLogger(__name__)


def create_endpoint(
    endpoint_client: aiplatform_v1.EndpointServiceClient,
    parent: str,
    display_name: str,
    labels: Mapping[str, str] | None,
    network: str,
    kms_key_name: str,
    timeout_s: float,
) -> aiplatform_v1.Endpoint:
    """Creates the Endpoint: private on ``network`` when one is given, encrypted with
    ``kms_key_name`` when one is given (both are fixed once it is created)."""
    request = aiplatform_v1.CreateEndpointRequest(
        parent=parent,
        endpoint=aiplatform_v1.Endpoint(
            display_name=display_name,
            labels=dict(labels or {}),
            network=network,
            encryption_spec=encryption_spec(kms_key_name),
        ),
    )
    endpoint = endpoint_client.create_endpoint(request=request).result(timeout=timeout_s)
    log.info("created endpoint %s (%s)", endpoint.name, display_name)
    return endpoint


def make_way_on_private_endpoint(
    endpoint_client: aiplatform_v1.EndpointServiceClient,
    endpoint: aiplatform_v1.Endpoint,
    timeout_s: float,
) -> tuple[aiplatform_v1.Endpoint, list[str]]:
    """Undeploys what a private endpoint serves (this Model's older version:
    ``check_endpoint`` refused another Model's), as it holds one deployment; returns the
    endpoint as it is then and the deployed model IDs removed."""
    removed = [dm.id for dm in endpoint.deployed_models]
    if not removed:
        return endpoint, []
    for dm in endpoint.deployed_models:
        log.warning(
            "private endpoint %s holds one deployment: undeploying %s (version %s) for the "
            "new version; the endpoint answers nothing until that one is deployed",
            endpoint.name,
            dm.id,
            dm.model_version_id,
        )
        request = aiplatform_v1.UndeployModelRequest(
            endpoint=endpoint.name, deployed_model_id=dm.id
        )
        endpoint_client.undeploy_model(request=request).result(timeout=timeout_s)
    return get_endpoint(endpoint_client, endpoint.name), removed


def deploy_version(
    endpoint_client: aiplatform_v1.EndpointServiceClient,
    endpoint: aiplatform_v1.Endpoint,
    deployed_model: aiplatform_v1.DeployedModel,
    traffic_percent: int,
    timeout_s: float,
) -> tuple[aiplatform_v1.Endpoint, str]:
    """Deploys a model version with its share of the traffic (a private endpoint takes
    no traffic split: its one deployment serves all); returns the endpoint as it is then
    and the deployed model's ID, once the endpoint lists it."""
    request = aiplatform_v1.DeployModelRequest(
        endpoint=endpoint.name,
        deployed_model=deployed_model,
        traffic_split={}
        if endpoint.network
        else split_traffic(endpoint.traffic_split, traffic_percent),
    )
    response = endpoint_client.deploy_model(request=request).result(timeout=timeout_s)
    deployed_model_id = response.deployed_model.id
    log.info(
        "deployed %s on %s as %s; traffic split %s",
        deployed_model.model,
        endpoint.name,
        deployed_model_id,
        dict(request.traffic_split),
    )
    endpoint = get_endpoint(endpoint_client, endpoint.name)
    if not any(dm.id == deployed_model_id for dm in endpoint.deployed_models):
        raise VertexDeployError(
            f"deployed model {deployed_model_id} is not on {endpoint.name} after DeployModel"
        )
    return endpoint, deployed_model_id


def undeploy_idle_versions(
    endpoint_client: aiplatform_v1.EndpointServiceClient,
    endpoint: aiplatform_v1.Endpoint,
    model_name: str,
    deployed_model_id: str,
    keep_versions: int,
    timeout_s: float,
) -> tuple[aiplatform_v1.Endpoint, list[str]]:
    """Undeploys the Model's versions beyond ``keep_versions`` that get no traffic;
    returns the endpoint as it is then and the deployed model IDs removed."""
    stale = versions_to_undeploy(endpoint, model_name, deployed_model_id, keep_versions)
    for dm in stale:
        request = aiplatform_v1.UndeployModelRequest(
            endpoint=endpoint.name, deployed_model_id=dm.id
        )
        endpoint_client.undeploy_model(request=request).result(timeout=timeout_s)
        log.info("undeployed %s (version %s), which had no traffic", dm.id, dm.model_version_id)
    if stale:
        endpoint = get_endpoint(endpoint_client, endpoint.name)
    return endpoint, [dm.id for dm in stale]
