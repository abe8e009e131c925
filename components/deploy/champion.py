"""Finds the model each deploy target serves now (the champion), for evaluate to score the
new model (the challenger) against on the same test images.

Each returns the champion's SavedModel directory (a path or ``gs://`` URI), or "" when the
target serves no model of that name yet (the first deployment: the threshold alone then
decides):

``local_champion``   the highest version in the local model repository (what the local
                     server and TF Serving serve)
``vertex_champion``  the default version of the Vertex AI Model (``<model>@default``,
                     which deploy_vertex makes each version it uploads)
``kserve_champion``  the InferenceService's current ``storageUri``
"""

from __future__ import annotations

import logging
import posixpath

from components.common.model_repository import serving_version

log = logging.getLogger(__name__)


def local_champion(model_repository: str, model_name: str) -> str:
    """The version directory the local model repository serves for ``model_name``; "" when
    there is none (or no repository)."""
    champion = serving_version(model_repository, model_name)
    log.info("champion of %s in %r: %s", model_name, model_repository, champion or "none")
    return champion


def vertex_champion(project: str, location: str, model_display_name: str, model_client=None) -> str:
    """The artifact URI of the Vertex AI Model's default version; "" when there is no Model
    of that display name.

    Raises:
        VertexDeployError: when several Models have that display name.
    """
    from google.cloud import aiplatform_v1

    from components.deploy.vertex import model_service_client
    from components.deploy.vertex_resources import find_model

    model_client = model_client or model_service_client(location)
    model = find_model(model_client, f"projects/{project}/locations/{location}", model_display_name)
    if model is None:
        log.info("no Vertex AI Model named %r: no champion", model_display_name)
        return ""
    name = model.name.split("@", 1)[0]
    default = model_client.get_model(request=aiplatform_v1.GetModelRequest(name=f"{name}@default"))
    log.info("champion: %s@%s at %s", name, default.version_id, default.artifact_uri)
    return default.artifact_uri


def kserve_champion(name: str, namespace: str, api=None) -> str:
    """The SavedModel the InferenceService ``name`` serves (version 1 of its
    ``storageUri``, the layout deploy_kserve stages); "" when there is no such service."""
    from kubernetes.client.exceptions import ApiException

    from components.deploy.kserve import GROUP, PLURAL, VERSION, custom_objects_api

    api = api or custom_objects_api()
    try:
        service = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise
        log.info("no InferenceService %s/%s: no champion", namespace, name)
        return ""
    predictor = service.get("spec", {}).get("predictor", {})
    storage_uri = predictor.get("tensorflow", {}).get("storageUri") or predictor.get(
        "model", {}
    ).get("storageUri", "")
    if not storage_uri:
        return ""
    storage_uri = storage_uri.rstrip("/")
    return serving_version(posixpath.dirname(storage_uri), posixpath.basename(storage_uri))
