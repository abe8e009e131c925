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

A project's rules: with a Cloud KMS key the uploaded version and a created Endpoint are
encrypted with it (``encryption_spec``), and a version uploaded without that key is not
reused. With ``private_endpoint`` the Endpoint is created on the VPC network ``network``
(Private Service Access: VPC Network Peering, which must be set up for it), reached over
plain HTTP from that network only, at the deployed model's ``predict_http_uri``. Vertex
AI lets such an endpoint hold one deployment, without a traffic split, so there is no
canary there (``traffic_percent`` must be 100) and a new version replaces the one serving:
that one is undeployed after the upload and before the new deployment, and the endpoint
answers nothing for the minutes that deployment takes (a failure then leaves it empty
until a re-run deploys). An endpoint of the same name that is public where a private one
is asked for, or the other way, or encrypted with another key, or private and serving
another Model, is an error before anything changes: its network and key are fixed when it
is created. The deploy step checks the deployment through the
Vertex AI API (``GetEndpoint``), which answers from anywhere, not through the endpoint, so
the check works from a pipeline that is not on the network.

The clients are parameters, built from the region by default, so tests and callers can
pass their own. What serves the export (the container: Vertex AI's prebuilt TensorFlow
one for the export's TensorFlow version when there is one, else the suite's deploy image
as a custom container; the machines; the explanation spec) is
``components.deploy.vertex_serving``'s; the look-ups are ``vertex_resources``'s, the changes
to the Endpoint (steps 5 to 7) ``vertex_endpoint``'s. ``deploy_to_vertex`` is the stage: the
KFP component and ``python -m components.deploy --target vertex`` both call it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from google.cloud import aiplatform_v1

from components.common.gcp_names import kms_key_name, vpc_network
from components.deploy.vertex_endpoint import (
    create_endpoint,
    deploy_version,
    make_way_on_private_endpoint,
    undeploy_idle_versions,
)
from components.deploy.vertex_evaluation import add_aliases, import_evaluation
from components.deploy.vertex_resources import (
    VertexDeployError as VertexDeployError,  # re-exported: deploy_to_vertex raises it
    check_endpoint,
    deployment_of,
    find_endpoint,
    find_model,
    find_version,
    split_traffic as split_traffic,  # re-exported: the traffic rule of deploy_to_vertex
)
from components.deploy.vertex_serving import (
    DEFAULT_MACHINE_TYPE,
    ServingContainer,
    api_endpoint,
    dedicated_resources,
    encryption_spec,
    export_explanation_spec,
    predict_url,
    serving_container_for,
)

log = logging.getLogger(__name__)

# Deploying a model (machines, container start, model load) takes minutes, often more
# than google-api-core's default 900 s wait for an operation.
DEFAULT_OPERATION_TIMEOUT_S = 3600.0


def model_service_client(region: str) -> aiplatform_v1.ModelServiceClient:
    """A ModelService client for the region, with Application Default Credentials."""
    return aiplatform_v1.ModelServiceClient(client_options={"api_endpoint": api_endpoint(region)})


def endpoint_service_client(region: str) -> aiplatform_v1.EndpointServiceClient:
    """An EndpointService client for the region, with Application Default Credentials."""
    return aiplatform_v1.EndpointServiceClient(
        client_options={"api_endpoint": api_endpoint(region)}
    )


# --------------------------------------------------------------------------- requests


def upload_model_request(
    parent: str,
    display_name: str,
    artifact_uri: str,
    container: aiplatform_v1.ModelContainerSpec | str,
    parent_model: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    explanation_metadata: aiplatform_v1.ExplanationMetadata | None = None,
    explanation_parameters: aiplatform_v1.ExplanationParameters | None = None,
    encryption_spec_key_name: str = "",
) -> aiplatform_v1.UploadModelRequest:
    """The UploadModel request of an exported SavedModel on its serving container.

    ``container`` is the ModelContainerSpec (``vertex_serving.serving_container_for``), or
    an image URI alone, run with its own entry point (a prebuilt container). With
    ``parent_model`` the upload is a new version of that Model, made its default version
    (the SDK's ``is_default_version``); without, a new Model. With
    ``encryption_spec_key_name`` (a Cloud KMS key) the version is encrypted with that key.
    """
    if (explanation_metadata is None) != (explanation_parameters is None):
        raise ValueError("explanation_metadata and explanation_parameters go together")
    if isinstance(container, str):
        container = aiplatform_v1.ModelContainerSpec(image_uri=container)
    model = aiplatform_v1.Model(
        display_name=display_name,
        description=description,
        artifact_uri=artifact_uri,
        container_spec=container,
        labels=dict(labels or {}),
        version_aliases=["default"],
        encryption_spec=encryption_spec(encryption_spec_key_name),
    )
    if explanation_metadata is not None:
        model.explanation_spec = aiplatform_v1.ExplanationSpec(
            metadata=explanation_metadata, parameters=explanation_parameters
        )
    return aiplatform_v1.UploadModelRequest(parent=parent, parent_model=parent_model, model=model)


# --------------------------------------------------------------------------- deploy


def deploy_to_vertex(
    artifact_uri: str,
    project: str,
    location: str,
    model_display_name: str = "image-classifier",
    endpoint_display_name: str = "",
    serving_image: str = "",
    serving_container: str = "auto",
    deploy_image: str = "",
    machine_type: str = DEFAULT_MACHINE_TYPE,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    min_replica_count: int = 1,
    max_replica_count: int = 1,
    traffic_percent: int = 100,
    keep_versions: int = 1,
    service_account: str = "",
    encryption_spec_key_name: str = "",
    network: str = "",
    private_endpoint: bool = False,
    enable_explanations: bool = False,
    explanation_metadata: Mapping[str, Any] | None = None,
    explanation_parameters: Mapping[str, Any] | None = None,
    export_metadata: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    confusion_matrix: Mapping[str, Any] | None = None,
    version_alias: str = "blessed",
    labels: Mapping[str, str] | None = None,
    operation_timeout_s: float = DEFAULT_OPERATION_TIMEOUT_S,
    model_client: aiplatform_v1.ModelServiceClient | None = None,
    endpoint_client: aiplatform_v1.EndpointServiceClient | None = None,
) -> dict:
    """Uploads an exported SavedModel as a Model version and deploys it to an endpoint.

    The deploy_vertex stage: its KFP component and ``python -m components.deploy --target
    vertex`` both call this.

    Args:
        artifact_uri: The SavedModel directory on Cloud Storage (``gs://...``, with
            ``saved_model.pb`` at its root): the export artifact's URI on Vertex AI.
        project: Google Cloud project (ID or number).
        location: Vertex AI region, e.g. ``us-central1``.
        model_display_name: The Model's display name; a Model of that name gets a new
            version, none means a new Model.
        endpoint_display_name: The Endpoint's display name, created if there is none;
            empty means ``<model_display_name>-endpoint``.
        serving_image: The prediction container's image; empty: the default of the
            kind ``serving_container`` picks.
        serving_container: How the export is served (see
            ``vertex_serving.serving_container_for``): ``"prebuilt"``, Vertex AI's
            prebuilt TensorFlow container for the TensorFlow version that wrote the
            export (the GPU image with an accelerator), or ``serving_image`` as it is;
            ``"custom"``, the suite's model server on the deploy image (or
            ``serving_image``) as a Vertex AI custom container; ``"auto"``,
            ``serving_image`` as it is when given, else prebuilt when Vertex AI has a
            container for the export's TensorFlow and custom when the export is newer
            than all of them (TensorFlow 2.21's exports: the newest prebuilt container
            is 2.15), unless accelerators or explanations need the prebuilt one.
        deploy_image: The deploy stage image a custom container runs; empty:
            ``components.images.stage_image("deploy")`` from ``IMAGE_REGISTRY`` and
            ``IMAGE_TAG`` here. It must be in a registry Vertex AI can pull from.
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
        encryption_spec_key_name: Cloud KMS key
            (``projects/P/locations/L/keyRings/R/cryptoKeys/K``, in ``location``) the
            uploaded Model version and a created Endpoint are encrypted with; empty:
            Google-managed encryption. An existing Endpoint encrypted otherwise is an
            error.
        network: The VPC network of a private endpoint,
            ``projects/<project number>/global/networks/<name>``, with Private Service
            Access set up; used with ``private_endpoint`` only.
        private_endpoint: Deploy to a private endpoint on ``network`` (created so when
            there is none): one deployment, no traffic split (``traffic_percent`` 100),
            a new version replaces the serving one, reached over HTTP from that network
            only. An existing public endpoint of the same name is an error, as is an
            existing private one when this is False.
        enable_explanations: Upload with an explanation spec (Vertex Explainable AI):
            ``explanation_metadata`` and ``explanation_parameters`` when given, else the
            one the export stage wrote.
        explanation_metadata: Vertex AI ExplanationMetadata as REST JSON (used when given,
            with ``explanation_parameters``).
        explanation_parameters: Vertex AI ExplanationParameters as REST JSON.
        export_metadata: What the export stage recorded about the export (its artifact's
            metadata: ``framework_version``, the explanation spec), so that it need not be
            read from the export; empty: read from the export.
        evaluation: The evaluation the model passed the gate with (evaluate's metrics):
            imported to the Model Registry with the version deployed, which also gets
            ``version_alias``; None records nothing.
        confusion_matrix: Evaluate's confusion matrix (its ClassificationMetrics
            artifact's metadata), imported with ``evaluation``.
        version_alias: The alias that moves to each version deployed with an
            evaluation: the one that passed the gate last.
        labels: Labels of the uploaded Model version and a created Endpoint.
        operation_timeout_s: How long to wait for each long-running operation.
        model_client: ModelService client; by default one for ``location``.
        endpoint_client: EndpointService client; by default one for ``location``.

    Returns:
        ``model`` (the Model's resource name), ``model_version_id``,
        ``model_version_name`` (``<model>@<version>``), ``endpoint`` (resource name),
        ``deployed_model_id``, ``traffic_split`` (the endpoint's, at the end),
        ``undeployed`` (deployed model IDs removed), ``serving_image``,
        ``serving_container`` (``"prebuilt"`` or ``"custom"``), ``artifact_uri``,
        ``uploaded``, ``endpoint_created``, ``already_deployed`` (True when nothing
        was done: this export already served there), ``predict_url`` (a private
        endpoint's is the deployed model's HTTP address on the network),
        ``private_endpoint``, ``network`` (the endpoint's; empty for a public one),
        ``region`` and, with ``evaluation``, ``model_evaluation`` (its resource name) and
        ``version_aliases``.

    Raises:
        ValueError: on invalid arguments (e.g. an artifact not on Cloud Storage, a custom
            container on a local image, a malformed key or network, a private endpoint
            without a network or with traffic_percent below 100).
        VertexDeployError: when display names are ambiguous, the endpoint of that name
            is not the one asked for (public or private, its network, its key; a private
            one serving another Model), or the deployment is not on the endpoint after
            DeployModel.
    """
    # The arguments, what serves the export, the clients, the report so far.
    _check_arguments(artifact_uri, project, model_display_name, keep_versions, traffic_percent)
    key = kms_key_name(encryption_spec_key_name)
    endpoint_network = _private_network(network, private_endpoint, traffic_percent)
    endpoint_display_name = endpoint_display_name or f"{model_display_name}-endpoint"
    resources = dedicated_resources(
        machine_type, accelerator_type, accelerator_count, min_replica_count, max_replica_count
    )
    recorded = dict(export_metadata or {})
    explanation_metadata, explanation_parameters = _explanation_spec(
        artifact_uri, enable_explanations, explanation_metadata, explanation_parameters, recorded
    )
    container = serving_container_for(
        artifact_uri, location, accelerator_type, accelerator_count, serving_image,
        recorded.get("framework_version", ""), serving_container, model_name=model_display_name,
        deploy_image=deploy_image, explained=explanation_metadata is not None,
    )  # fmt: skip
    model_client = model_client or model_service_client(location)
    endpoint_client = endpoint_client or endpoint_service_client(location)
    parent = f"projects/{project}/locations/{location}"
    result = _initial_result(location, artifact_uri, container)

    # 1-3: the Model, this export's version and the Endpoint, where there are.
    model, version, endpoint = _find_existing(
        model_client, endpoint_client, parent, model_display_name, endpoint_display_name,
        artifact_uri, container.spec.image_uri, key, endpoint_network,
    )  # fmt: skip
    deployed = _deployed_already(endpoint, model, version, artifact_uri)
    if deployed is not None:
        result["already_deployed"] = True
        if evaluation is not None:
            result |= _record_evaluation(
                model_client, version, evaluation, confusion_matrix, version_alias
            )
        return _report(result, model.name, version.version_id, endpoint, deployed.id)

    # 4: a new version, unless 2 found one.
    if version is None:
        request = upload_model_request(
            parent, model_display_name, artifact_uri, container.spec,
            parent_model=model.name if model else "", labels=labels,
            explanation_metadata=explanation_metadata,
            explanation_parameters=explanation_parameters, encryption_spec_key_name=key,
        )  # fmt: skip
        model_name, version_id = _upload_version(model_client, request, operation_timeout_s)
        result["uploaded"] = True
    else:
        model_name, version_id = model.name, version.version_id
        log.info("reusing version %s of %s (same artifact and image)", version_id, model_name)

    # 5: the Endpoint, unless 3 found it; on a private one the serving version makes way.
    if endpoint is None:
        endpoint = create_endpoint(
            endpoint_client, parent, endpoint_display_name, labels, endpoint_network, key,
            operation_timeout_s,
        )  # fmt: skip
        result["endpoint_created"] = True
    replaced = []
    if endpoint.network:
        endpoint, replaced = make_way_on_private_endpoint(
            endpoint_client, endpoint, operation_timeout_s
        )

    # 6-7: deploy with the traffic share; undeploy this Model's idle older versions.
    deployed_model = aiplatform_v1.DeployedModel(
        model=f"{model_name}@{version_id}",
        display_name=f"{model_display_name}-v{version_id}",
        dedicated_resources=resources,
        service_account=service_account,
    )
    endpoint, deployed_model_id = deploy_version(
        endpoint_client, endpoint, deployed_model, traffic_percent, operation_timeout_s
    )
    endpoint, undeployed = undeploy_idle_versions(
        endpoint_client, endpoint, model_name, deployed_model_id, keep_versions,
        operation_timeout_s,
    )  # fmt: skip
    result["undeployed"] = replaced + undeployed

    # The evaluation, recorded with the version deployed.
    if evaluation is not None:
        version = model_client.get_model(
            request=aiplatform_v1.GetModelRequest(name=f"{model_name}@{version_id}")
        )
        result |= _record_evaluation(
            model_client, version, evaluation, confusion_matrix, version_alias
        )
    return _report(result, model_name, version_id, endpoint, deployed_model_id)


# --------------------------------------------------------------------------- steps


def _check_arguments(
    artifact_uri: str,
    project: str,
    model_display_name: str,
    keep_versions: int,
    traffic_percent: int,
) -> None:
    """Checks ``deploy_to_vertex``'s arguments before anything is asked of Vertex AI.

    Raises:
        ValueError: on an artifact not on Cloud Storage, no project or Model display name,
            ``keep_versions`` below 1 or ``traffic_percent`` outside [0, 100].
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


def _private_network(network: str, private_endpoint: bool, traffic_percent: int) -> str:
    """The VPC network of the private endpoint asked for (its full name); "" for a public
    one.

    Raises:
        ValueError: on a malformed network, or a private endpoint without a network or
            with ``traffic_percent`` below 100 (it holds one deployment, without a split).
    """
    endpoint_network = vpc_network(network) if private_endpoint else ""
    if private_endpoint and not endpoint_network:
        raise ValueError("private_endpoint needs the VPC network it is reached on (network)")
    if private_endpoint and traffic_percent != 100:
        raise ValueError(
            "a private endpoint holds one deployment, without a traffic split: a new version "
            f"replaces the serving one, so traffic_percent must be 100, got {traffic_percent}"
        )
    return endpoint_network


def _initial_result(location: str, artifact_uri: str, container: ServingContainer) -> dict:
    """``deploy_to_vertex``'s report before anything is done: what is deployed, on what."""
    return {
        "region": location,
        "artifact_uri": artifact_uri,
        "serving_image": container.spec.image_uri,
        "serving_container": container.kind,
        "uploaded": False,
        "endpoint_created": False,
        "already_deployed": False,
        "undeployed": [],
    }


def _find_existing(
    model_client: aiplatform_v1.ModelServiceClient,
    endpoint_client: aiplatform_v1.EndpointServiceClient,
    parent: str,
    model_display_name: str,
    endpoint_display_name: str,
    artifact_uri: str,
    serving_image: str,
    kms_key_name: str,
    endpoint_network: str,
) -> tuple[aiplatform_v1.Model | None, aiplatform_v1.Model | None, aiplatform_v1.Endpoint | None]:
    """The Model of that display name, its version of this export on ``serving_image``
    with ``kms_key_name``, and the Endpoint of that display name; None for each not there.

    Raises:
        VertexDeployError: when a display name is ambiguous, or the Endpoint found is not
            the one asked for (``vertex_resources.check_endpoint``).
    """
    model = find_model(model_client, parent, model_display_name)
    version = (
        find_version(model_client, model.name, artifact_uri, serving_image, kms_key_name)
        if model
        else None
    )
    endpoint = find_endpoint(endpoint_client, parent, endpoint_display_name)
    if endpoint is not None:
        check_endpoint(endpoint, endpoint_network, kms_key_name, model.name if model else "")
    return model, version, endpoint


def _deployed_already(
    endpoint: aiplatform_v1.Endpoint | None,
    model: aiplatform_v1.Model | None,
    version: aiplatform_v1.Model | None,
    artifact_uri: str,
) -> aiplatform_v1.DeployedModel | None:
    """The deployment of the version found on the endpoint found, None unless both were
    found and the version is deployed there (then there is nothing to do)."""
    if version is None or endpoint is None:
        return None
    deployed = deployment_of(endpoint, model.name, version.version_id)
    if deployed is not None:
        log.info(
            "%s is already deployed as version %s of %s on %s (deployed model %s): nothing to do",
            artifact_uri,
            version.version_id,
            model.name,
            endpoint.name,
            deployed.id,
        )
    return deployed


def _upload_version(
    model_client: aiplatform_v1.ModelServiceClient,
    request: aiplatform_v1.UploadModelRequest,
    timeout_s: float,
) -> tuple[str, str]:
    """Uploads the export (``upload_model_request``); returns the Model's resource name and
    the new version's ID."""
    uploaded = model_client.upload_model(request=request).result(timeout=timeout_s)
    log.info(
        "uploaded %s as version %s of %s",
        request.model.artifact_uri,
        uploaded.model_version_id,
        uploaded.model,
    )
    return uploaded.model, uploaded.model_version_id


def _record_evaluation(
    model_client: aiplatform_v1.ModelServiceClient,
    version: aiplatform_v1.Model,
    evaluation: Mapping[str, Any],
    confusion_matrix: Mapping[str, Any] | None,
    version_alias: str,
) -> dict:
    """Moves ``version_alias`` to the version deployed and imports its evaluation; returns
    the report's ``model_evaluation`` and ``version_aliases``."""
    aliases = add_aliases(model_client, version, [version_alias] if version_alias else [])
    name = f"{version.name.split('@', 1)[0]}@{version.version_id}"
    imported = import_evaluation(model_client, name, evaluation, confusion_matrix)
    return {"model_evaluation": imported, "version_aliases": aliases}


def _explanation_spec(
    artifact_uri: str,
    enable: bool,
    metadata: Mapping[str, Any] | None,
    parameters: Mapping[str, Any] | None,
    recorded: Mapping[str, Any],
) -> tuple[aiplatform_v1.ExplanationMetadata | None, aiplatform_v1.ExplanationParameters | None]:
    """The explanation spec to upload with: the given one, or with ``enable`` the one the
    export stage recorded (in the artifact's metadata, else in the export); none else."""
    if enable and not (metadata or parameters):
        metadata = recorded.get("explanation_metadata")
        parameters = recorded.get("explanation_parameters")
    if not (enable or metadata or parameters):
        return None, None
    return export_explanation_spec(artifact_uri, metadata, parameters)


def _report(
    result: dict,
    model_name: str,
    version_id: str,
    endpoint: aiplatform_v1.Endpoint,
    deployed_model_id: str,
) -> dict:
    """``deploy_to_vertex``'s report: ``result`` with what serves the export at the end
    (the version, the endpoint and its traffic split, the address to predict at)."""
    model_name = model_name.split("@", 1)[0]
    url = predict_url(result["region"], endpoint.name)
    if endpoint.network:  # reached on the network, at the deployment's own address
        (deployed,) = [dm for dm in endpoint.deployed_models if dm.id == deployed_model_id]
        url = deployed.private_endpoints.predict_http_uri
    return result | {
        "model": model_name,
        "model_version_id": version_id,
        "model_version_name": f"{model_name}@{version_id}",
        "endpoint": endpoint.name,
        "deployed_model_id": deployed_model_id,
        "traffic_split": {k: int(v) for k, v in sorted(endpoint.traffic_split.items())},
        "predict_url": url,
        "private_endpoint": bool(endpoint.network),
        "network": endpoint.network,
    }
