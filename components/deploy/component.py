"""The deploy stage's KFP components, one per target, each a thin body over its module:

``deploy``          the local target (``components.deploy.local``): a model repository and
                    a checked local server
``deploy_vertex``   a Vertex AI endpoint (``components.deploy.vertex``); outputs GCPC's
                    ``google.VertexModel`` and ``google.VertexEndpoint``, which the Vertex AI
                    console links to the Model and Endpoint
``deploy_kserve``   a KServe InferenceService, e.g. on GKE (``components.deploy.kserve``)
``find_champion``, ``find_vertex_champion``
                   the model a target serves now, which evaluate compares the new one with
                   (``components.deploy.champion``)

One component per target, as Google Cloud Pipeline Components does, since each target has
its own parameters and outputs and a KFP component must write every output it declares.
"""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def deploy(
    model: Input[Model],
    endpoint: Output[Artifact],
    evaluation: Input[Metrics] = None,
    model_name: str = "image-classifier",
    model_repository: str = "",
    port: int = 8080,
):
    """Publishes an exported model to a model repository and verifies that it serves.

    The local target copies the SavedModel into ``<model_repository>/<model_name>/<version>/``
    (the TensorFlow Serving / KServe layout; the same content published again reuses its
    version), starts KServe's model server on a free loopback port, checks one real
    predict request (TensorFlow Serving's REST API), and stops the server. The endpoint
    artifact's metadata carries the model version, the predict URL and the command that
    serves it there.

    Args:
        model: The exported serving SavedModel (the export stage's output).
        evaluation: Evaluate's metrics, recorded with the version published
            (``<model_repository>/<model_name>/evaluations/<version>.json``).
        model_name: The name the model is published and served under
            (``/v1/models/<model_name>:predict``).
        model_repository: Root of the model repository (local path or gs:// URI); empty
            puts it in the endpoint artifact, under ``model_repository/``.
        port: The port of the advertised URL and serve command.

    Returns:
        endpoint: A directory with ``endpoint.json``: model name, version, model
            directory, repository, predict URL, the verification probe's result and the
            serve command (also the artifact's metadata).
    """
    import json
    import os

    from components.deploy.local import deploy_local

    os.makedirs(endpoint.path, exist_ok=True)
    repository = model_repository or os.path.join(endpoint.path, "model_repository")
    info = deploy_local(
        model.path,
        model_name=model_name,
        model_repository=repository,
        port=port,
        evaluation=None if evaluation is None else evaluation.metadata,
    )
    endpoint.metadata.update(info)
    with open(os.path.join(endpoint.path, "endpoint.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def deploy_vertex(
    model: Input[Model],
    vertex_model: Output[VertexModel],
    vertex_endpoint: Output[VertexEndpoint],
    project: str,
    location: str,
    evaluation: Input[Metrics] = None,
    confusion_matrix: Input[ClassificationMetrics] = None,
    model_display_name: str = "image-classifier",
    endpoint_display_name: str = "",
    serving_image: str = "",
    serving_container: str = "auto",
    deploy_image: str = "",
    machine_type: str = "n1-standard-4",
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
    explanation_metadata: dict = {},  # noqa: B006 (KFP parameter default)
    explanation_parameters: dict = {},  # noqa: B006
    version_alias: str = "blessed",
):
    """Deploys an exported model to a Vertex AI endpoint, as a new version of its Model.

    Uploads the SavedModel (the export artifact's gs:// URI) as a version of the Model
    named ``model_display_name`` (a new Model the first time) on its serving container
    (Vertex AI's prebuilt TensorFlow container when there is one for the export's
    TensorFlow, else this suite's deploy image as a custom container), deploys it to the
    endpoint named ``endpoint_display_name`` (created if missing) with ``traffic_percent``
    of the traffic (the models serving now keep the rest in proportion), and undeploys
    older versions of the Model that get no traffic beyond ``keep_versions``. Re-running
    it with the same export does nothing and reports what serves it.

    Args:
        model: The exported serving SavedModel (on Cloud Storage: run on Vertex AI).
        project: Google Cloud project.
        location: Vertex AI region, e.g. us-central1.
        evaluation: Evaluate's metrics: imported to the Model Registry as the deployed
            version's evaluation, with confusion_matrix.
        confusion_matrix: Evaluate's confusion matrix.
        model_display_name: Display name of the Model in the Model Registry.
        endpoint_display_name: Display name of the Endpoint; empty means
            ``<model_display_name>-endpoint``.
        serving_image: Prediction container image; empty: the default of the kind
            serving_container picks.
        serving_container: "auto", "prebuilt" or "custom". prebuilt: Vertex AI's
            prebuilt TensorFlow image for the export's TensorFlow version (a GPU image
            with an accelerator), or serving_image with its own entry point. custom:
            this suite's model server on deploy_image (or serving_image) as a Vertex AI
            custom container (CPU TensorFlow). auto: serving_image as it is when given;
            else prebuilt when Vertex AI has a container for the export's TensorFlow,
            custom for newer exports (TF 2.21's: the newest prebuilt is TF 2.15) unless
            accelerators or explanations are asked for (then the newest prebuilt).
        deploy_image: The deploy stage image in a registry Vertex AI can pull from (the
            pipeline passes the one it was compiled with); empty: the one
            IMAGE_REGISTRY and IMAGE_TAG name in this task's environment.
        machine_type: Serving machine type.
        accelerator_type: Accelerator per replica, e.g. NVIDIA_TESLA_T4; empty for none.
        accelerator_count: Accelerators per replica.
        min_replica_count: Fewest serving replicas.
        max_replica_count: Most serving replicas (autoscaling).
        traffic_percent: The new version's share of the endpoint's traffic, 0 to 100
            (below 100: a canary).
        keep_versions: Most deployments of this Model left on the endpoint, the new one
            included; deployments with traffic always stay.
        service_account: Service account of the serving container; empty for the default.
        encryption_spec_key_name: Cloud KMS key
            (projects/P/locations/L/keyRings/R/cryptoKeys/K, in location) the uploaded
            Model version and a created Endpoint are encrypted with; empty:
            Google-managed encryption. An existing Endpoint encrypted otherwise fails the
            step.
        network: VPC network of a private endpoint
            (projects/<project number>/global/networks/<name>, Private Service Access set
            up); used with private_endpoint only.
        private_endpoint: Deploy to a private endpoint on network (created so when
            missing): reached over HTTP from that network only, one deployment without a
            traffic split (traffic_percent must be 100), so a new version replaces the
            serving one after a gap of the deployment's minutes. An existing endpoint of
            the name that is public (or private while this is false) fails the step.
        enable_explanations: Upload with an explanation spec: the two explanation
            arguments when given, else the one the export stage wrote with the model.
        explanation_metadata: Vertex AI ExplanationMetadata as REST JSON; with
            explanation_parameters.
        explanation_parameters: Vertex AI ExplanationParameters as REST JSON.
        version_alias: Alias moved to the deployed version when it comes with an
            evaluation (the version that passed the gate last).

    Returns:
        vertex_model: google.VertexModel: the deployed Model version
            (``resourceName`` ``projects/.../models/ID@VERSION``).
        vertex_endpoint: google.VertexEndpoint: the Endpoint (``resourceName``), with
            ``deployed_model_id``, ``traffic_split``, ``predict_url`` (a private
            endpoint's HTTP address on its network), ``undeployed``,
            ``already_deployed``, ``private_endpoint`` and ``network`` in its metadata.
    """
    from components.deploy import vertex
    from components.deploy.vertex_serving import resource_uri

    info = vertex.deploy_to_vertex(
        model.uri,
        project,
        location,
        model_display_name=model_display_name,
        endpoint_display_name=endpoint_display_name,
        serving_image=serving_image,
        serving_container=serving_container,
        deploy_image=deploy_image,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        min_replica_count=min_replica_count,
        max_replica_count=max_replica_count,
        traffic_percent=traffic_percent,
        keep_versions=keep_versions,
        service_account=service_account,
        encryption_spec_key_name=encryption_spec_key_name,
        network=network,
        private_endpoint=private_endpoint,
        enable_explanations=enable_explanations,
        explanation_metadata=explanation_metadata,
        explanation_parameters=explanation_parameters,
        export_metadata=model.metadata,
        evaluation=None if evaluation is None else evaluation.metadata,
        confusion_matrix=None if confusion_matrix is None else confusion_matrix.metadata,
        version_alias=version_alias,
    )
    vertex_model.uri = resource_uri(location, info["model_version_name"])
    vertex_model.metadata.update(
        {
            "resourceName": info["model_version_name"],
            "model": info["model"],
            "model_version_id": info["model_version_id"],
            "artifact_uri": info["artifact_uri"],
            "serving_image": info["serving_image"],
            "serving_container": info["serving_container"],
            "uploaded": info["uploaded"],
            "model_evaluation": info.get("model_evaluation", ""),
            "version_aliases": info.get("version_aliases", []),
        }
    )
    vertex_endpoint.uri = resource_uri(location, info["endpoint"])
    vertex_endpoint.metadata.update(
        {
            "resourceName": info["endpoint"],
            "deployed_model_id": info["deployed_model_id"],
            "traffic_split": info["traffic_split"],
            "predict_url": info["predict_url"],
            "undeployed": info["undeployed"],
            "already_deployed": info["already_deployed"],
            "endpoint_created": info["endpoint_created"],
            "private_endpoint": info["private_endpoint"],
            "network": info["network"],
        }
    )


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def deploy_kserve(
    model: Input[Model],
    endpoint: Output[Artifact],
    model_repository: str,
    namespace: str,
    model_name: str = "image-classifier",
    runtime_version: str = "2.21.0",
    cpu: str = "1",
    memory: str = "2Gi",
    gpu_count: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    service_account_name: str = "",
    traffic_percent: int = 100,
    timeout_s: float = 600.0,
):
    """Serves an exported model with a KServe InferenceService (TensorFlow predictor).

    Stages the SavedModel as ``<model_repository>/<model_name>-<digest>/1/`` (the layout
    KServe's TensorFlow Serving predictor loads), creates the InferenceService
    ``model_name`` in ``namespace`` or, when it exists, patches it with the new
    storageUri and ``canaryTrafficPercent``, and waits until it is Ready. Runs with the
    pod's service account, which needs RBAC rights on inferenceservices there.

    Args:
        model: The exported serving SavedModel.
        model_repository: gs:// folder to stage the model in, readable by the
            InferenceService's pods.
        namespace: Namespace of the InferenceService (Kubeflow: the profile namespace).
        model_name: InferenceService name, and the model name in its URL.
        runtime_version: TensorFlow Serving version (image tag of tensorflow/serving).
        cpu: CPU request and limit of the predictor.
        memory: Memory request and limit of the predictor.
        gpu_count: GPUs of the predictor (nvidia.com/gpu); 0 for none.
        min_replicas: Fewest predictor replicas (0: scale to zero).
        max_replicas: Most predictor replicas.
        service_account_name: Service account of the predictor pods (to read the model).
        traffic_percent: Share of traffic for the new revision when updating (canary);
            100 rolls out fully.
        timeout_s: How long to wait for Ready.

    Returns:
        endpoint: A directory with ``endpoint.json``: name, namespace, action (created,
            patched or unchanged), storage URI, URL, predict URL and traffic (also the
            artifact's metadata).
    """
    import json
    import os

    from components.common.io import artifact_location
    from components.deploy.kserve import deploy_kserve as deploy_to_kserve

    info = deploy_to_kserve(
        artifact_location(model),
        model_repository_uri=model_repository,
        name=model_name,
        namespace=namespace,
        runtime_version=runtime_version,
        cpu=cpu,
        memory=memory,
        gpu_count=gpu_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        service_account_name=service_account_name,
        traffic_percent=traffic_percent,
        timeout_s=timeout_s,
    )
    info["target"] = "kserve"
    os.makedirs(endpoint.path, exist_ok=True)
    with open(os.path.join(endpoint.path, "endpoint.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    endpoint.metadata.update(info)


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def find_champion(
    model_name: str = "image-classifier",
    model_repository: str = "",
    deploy_target: str = "local",
    kserve_namespace: str = "kubeflow-user-example-com",
) -> str:
    """Finds the model the deploy target serves now (the champion) for evaluate.

    Args:
        model_name: The served model's name (the InferenceService's with kserve).
        model_repository: The local model repository; empty: none, so no champion.
        deploy_target: "local" (the repository's highest version) or "kserve" (the
            InferenceService's storageUri, read with the pod's service account).
        kserve_namespace: Namespace of the InferenceService (Kubeflow: the profile
            namespace).

    Returns:
        Output: The champion's SavedModel directory; empty when nothing serves yet.
    """
    from components.deploy.champion import kserve_champion, local_champion

    if deploy_target == "kserve":
        return kserve_champion(model_name, kserve_namespace)
    return local_champion(model_repository, model_name)


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def find_vertex_champion(
    project: str, location: str, model_display_name: str = "image-classifier"
) -> str:
    """Finds the model Vertex AI serves now (the champion) for evaluate: the default
    version of the Model named ``model_display_name``.

    Args:
        project: Google Cloud project.
        location: Vertex AI region.
        model_display_name: Display name of the Model in the Model Registry.

    Returns:
        Output: The default version's artifact URI (gs://); empty when there is no
            such Model yet.
    """
    from components.deploy.champion import vertex_champion

    return vertex_champion(project, location, model_display_name)
