"""Deploys an exported SavedModel to KServe (e.g. on GKE): an InferenceService, created or
rolled out as a canary, and waited for until Ready.

KServe's TensorFlow predictor runs TensorFlow Serving with ``--model_base_path=/mnt/models``
after its storage initializer copies ``storageUri`` there, so ``storageUri`` must be a
directory holding numbered versions, not the SavedModel itself. ``stage_model`` copies the
export into the model repository as a one-version model named after its content::

    <model_repository>/<model_name>-<digest>/1/saved_model.pb

so that another export gets another ``storageUri`` (a spec change, hence a new revision
that ``canaryTrafficPercent`` can split traffic with) and the same export the same one
(nothing to roll out). The pods read it with their service account
(``service_account_name``, e.g. a Workload Identity one allowed to read the bucket).

``deploy_kserve`` then gets the InferenceService: absent (404), it creates it; present,
it merge-patches the predictor with ``canaryTrafficPercent`` (KServe sends that share to
the new revision and the rest to the previous ready one; 100 rolls out fully). It then
polls until the Ready condition is True for this generation of the spec, and returns the
service's URL. Canary rollouts need KServe's Serverless (Knative) mode.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from components.common import io
from components.deploy import model_repository

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
# TensorFlow Serving's image tag (tensorflow/serving:<runtimeVersion>); 2.21 is the
# TensorFlow the exports are written with. A GPU predictor uses "<version>-gpu".
DEFAULT_RUNTIME_VERSION = "2.21.0"
DIGEST_CHARS = 12
# KServe's model status when the new revision cannot load its model: no use waiting.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class KServeDeployError(RuntimeError):
    """The InferenceService cannot become ready (its model failed to load, or similar)."""


def custom_objects_api():
    """A ``kubernetes.client.CustomObjectsApi``: the pod's service account when running in
    a cluster (a pipeline step), else the current kubeconfig context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        # KUBECONFIG read now: the client reads it once, when it is first imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.CustomObjectsApi()


def stage_model(export_dir: str, repository: str, model_name: str) -> str:
    """Copies an export where KServe's TensorFlow predictor can serve it; returns the
    ``storageUri`` (``<repository>/<model_name>-<digest>``, holding version ``1/``).

    The same export staged again is found, not copied again.
    """
    if not repository:
        raise ValueError(
            "model_repository is required for KServe: a gs:// folder the InferenceService's "
            "pods can read"
        )
    digest = model_repository.content_digest(export_dir).split(":", 1)[-1][:DIGEST_CHARS]
    name = f"{model_name}-{digest}"
    published = model_repository.publish(export_dir, repository, name)
    log.info(
        "%s %s as %s",
        "found" if published["reused"] else "staged",
        export_dir,
        published["model_dir"],
    )
    return model_repository.model_base(repository, name)


def resources(cpu: str, memory: str, gpu_count: int = 0) -> dict:
    """Container resources with limits equal to requests (a GPU is a limit only)."""
    requests = {"cpu": cpu, "memory": memory}
    limits = dict(requests)
    if gpu_count > 0:
        limits["nvidia.com/gpu"] = str(gpu_count)
    return {"requests": requests, "limits": limits}


def predictor_spec(
    storage_uri: str,
    runtime_version: str = DEFAULT_RUNTIME_VERSION,
    cpu: str = "1",
    memory: str = "2Gi",
    gpu_count: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    service_account_name: str = "",
) -> dict:
    """The InferenceService's ``spec.predictor``: the TensorFlow predictor."""
    if min_replicas < 0 or max_replicas < max(min_replicas, 1):
        raise ValueError(
            f"replicas must satisfy 0 <= min ({min_replicas}) <= max ({max_replicas}), max >= 1"
        )
    if gpu_count > 0 and not runtime_version.endswith("-gpu"):
        runtime_version = f"{runtime_version}-gpu"
    spec: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "tensorflow": {
            "storageUri": storage_uri,
            "runtimeVersion": runtime_version,
            "resources": resources(cpu, memory, gpu_count),
        },
    }
    if service_account_name:
        spec["serviceAccountName"] = service_account_name
    return spec


def inference_service(name: str, namespace: str, predictor: dict) -> dict:
    """The InferenceService manifest (``serving.kserve.io/v1beta1``)."""
    if not _DNS_1035.match(name):
        raise ValueError(
            f"invalid InferenceService name {name!r}: lowercase letters, digits and '-', "
            "starting with a letter (a DNS-1035 label)"
        )
    if not namespace:
        raise ValueError("namespace is required")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"predictor": predictor},
    }


def predictor_patch(current: dict, desired: dict, traffic_percent: int) -> dict | None:
    """The JSON merge patch of ``spec.predictor`` that rolls ``desired`` out with
    ``canaryTrafficPercent``, or None when there is nothing to change.

    When ``current`` already has every desired field (the same model and settings), the
    only change is an ongoing rollout's share: a ``canaryTrafficPercent`` other than
    ``traffic_percent`` is set to it (e.g. 100 promotes the canary); without one, nothing.
    Keys this module sets that ``desired`` drops (a GPU limit, a service account) are
    set to null, which a merge patch deletes.
    """
    if _contains(current, desired):
        canary = current.get("canaryTrafficPercent")
        if canary is None or canary == traffic_percent:
            return None
        return {"spec": {"predictor": {"canaryTrafficPercent": traffic_percent}}}
    patch = dict(desired)
    patch["canaryTrafficPercent"] = traffic_percent
    if "serviceAccountName" in current and "serviceAccountName" not in desired:
        patch["serviceAccountName"] = None
    now = current.get("tensorflow", {}).get("resources", {})
    wanted = desired["tensorflow"]["resources"]
    patched = {}
    for kind in ("requests", "limits"):
        dropped = {key: None for key in now.get(kind, {}) if key not in wanted.get(kind, {})}
        patched[kind] = {**wanted.get(kind, {}), **dropped}
    patch["tensorflow"] = {**desired["tensorflow"], "resources": patched}
    return {"spec": {"predictor": patch}}


def _contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` has every field of ``expected`` with the same value (fields the
    server added, e.g. defaults, are ignored)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _contains(actual[key], value) for key, value in expected.items()
        )
    return actual == expected


def apply(api, manifest: dict, traffic_percent: int) -> tuple[dict, str]:
    """Creates the InferenceService, or patches an existing one as a canary rollout.

    Returns:
        The object the API server returned and what was done: ``created``,
        ``patched`` or ``unchanged``.
    """
    from kubernetes.client.exceptions import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        log.info("created InferenceService %s/%s", namespace, name)
        return created, "created"
    patch = predictor_patch(
        current.get("spec", {}).get("predictor", {}),
        manifest["spec"]["predictor"],
        traffic_percent,
    )
    if patch is None:
        log.info("InferenceService %s/%s already serves this model", namespace, name)
        return current, "unchanged"
    patched = api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
    log.info(
        "patched InferenceService %s/%s: %d%% of traffic to the new revision",
        namespace,
        name,
        traffic_percent,
    )
    return patched, "patched"


def conditions(obj: dict) -> list[dict]:
    """The object's status conditions."""
    return list(obj.get("status", {}).get("conditions") or [])


def is_ready(obj: dict) -> bool:
    """Ready is True for the object's current spec (its generation, when the status says
    which one it observed)."""
    status = obj.get("status", {})
    observed = status.get("observedGeneration")
    generation = obj.get("metadata", {}).get("generation")
    if observed is not None and generation is not None and observed < generation:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions(obj))


def _describe(obj: dict) -> str:
    described = []
    for c in conditions(obj):
        text = f"{c.get('type')}={c.get('status')}"
        why = ": ".join(str(c[key]) for key in ("reason", "message") if c.get(key))
        described.append(f"{text} ({why})" if why else text)
    return "; ".join(described) or "no conditions reported"


def _load_failure(obj: dict) -> str | None:
    status = obj.get("status", {})
    observed = status.get("observedGeneration")
    generation = obj.get("metadata", {}).get("generation")
    if observed is not None and generation is not None and observed < generation:
        return None  # a status of the previous spec
    model = status.get("modelStatus") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model.get("lastFailureInfo") or {}
        return f"{model['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}"
    return None


def wait_until_ready(
    api,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_interval_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Polls the InferenceService until it is Ready (``is_ready``); returns it.

    Raises:
        KServeDeployError: when KServe reports that the model failed to load.
        TimeoutError: when it is not Ready within ``timeout_s``, listing its conditions.
    """
    deadline = clock() + timeout_s
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if is_ready(obj):
            return obj
        failure = _load_failure(obj)
        if failure:
            raise KServeDeployError(
                f"InferenceService {namespace}/{name} cannot serve the model: {failure.strip()}"
                f"; conditions: {_describe(obj)}"
            )
        if clock() >= deadline:
            raise TimeoutError(
                f"InferenceService {namespace}/{name} was not Ready within {timeout_s:.0f} s; "
                f"conditions: {_describe(obj)}"
            )
        sleep(poll_interval_s)


def deploy_kserve(
    export_dir: str,
    model_repository_uri: str,
    name: str,
    namespace: str,
    runtime_version: str = DEFAULT_RUNTIME_VERSION,
    cpu: str = "1",
    memory: str = "2Gi",
    gpu_count: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    service_account_name: str = "",
    traffic_percent: int = 100,
    timeout_s: float = 600.0,
    poll_interval_s: float = 5.0,
    api=None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Serves an export with a KServe InferenceService (TensorFlow predictor).

    Args:
        export_dir: The exported SavedModel (local path or ``gs://``).
        model_repository_uri: Where to stage it for KServe (``gs://`` the pods can
            read); see ``stage_model``.
        name: The InferenceService's name, also the model's name in the URL
            (``/v1/models/<name>:predict``).
        namespace: Its namespace (with Kubeflow, the profile's namespace).
        runtime_version: TensorFlow Serving version (image tag); ``-gpu`` is appended
            for a GPU predictor.
        cpu: CPU request and limit of the predictor container.
        memory: Memory request and limit.
        gpu_count: GPUs (``nvidia.com/gpu`` limit); 0 for none.
        min_replicas: Fewest predictor replicas (0 lets Knative scale to zero).
        max_replicas: Most predictor replicas.
        service_account_name: The pods' service account (to read the model); empty for
            the namespace's default.
        traffic_percent: The new revision's share when updating an existing service
            (``canaryTrafficPercent``); 100 rolls out fully. A new service gets all.
        timeout_s: How long to wait for Ready.
        poll_interval_s: Seconds between status checks.
        api: A ``kubernetes.client.CustomObjectsApi``; by default ``custom_objects_api()``.
        clock: Monotonic seconds (tests pass a fake clock).
        sleep: Waits between checks.

    Returns:
        ``name``, ``namespace``, ``action`` (``created``, ``patched`` or ``unchanged``),
        ``storage_uri``, ``runtime_version``, ``generation``, ``url`` (``status.url``),
        ``predict_url``, ``internal_url`` (``status.address.url``, empty if none),
        ``traffic`` (the predictor's traffic targets) and ``canary_traffic_percent``
        (the spec's, None when it has none, e.g. a created service).

    Raises:
        KServeDeployError: when the model cannot load.
        TimeoutError: when the service is not Ready within ``timeout_s``.
    """
    if not 0 <= traffic_percent <= 100:
        raise ValueError(f"traffic_percent must be in [0, 100], got {traffic_percent}")
    if not io.exists(io.join(export_dir, model_repository.SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"no SavedModel at {export_dir}")
    storage_uri = stage_model(export_dir, model_repository_uri, name)
    predictor = predictor_spec(
        storage_uri,
        runtime_version=runtime_version,
        cpu=cpu,
        memory=memory,
        gpu_count=gpu_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        service_account_name=service_account_name,
    )
    manifest = inference_service(name, namespace, predictor)
    api = api or custom_objects_api()
    applied, action = apply(api, manifest, traffic_percent)
    ready = wait_until_ready(api, namespace, name, timeout_s, poll_interval_s, clock, sleep)
    status = ready.get("status", {})
    url = status.get("url") or ""
    if not url:
        raise KServeDeployError(f"InferenceService {namespace}/{name} is Ready without a URL")
    predictor_status = (status.get("components") or {}).get("predictor") or {}
    return {
        "name": name,
        "namespace": namespace,
        "action": action,
        "storage_uri": storage_uri,
        "runtime_version": predictor["tensorflow"]["runtimeVersion"],
        "generation": ready.get("metadata", {}).get("generation"),
        "url": url,
        "predict_url": f"{url.rstrip('/')}/v1/models/{name}:predict",
        "internal_url": (status.get("address") or {}).get("url", ""),
        "traffic": predictor_status.get("traffic", []),
        "canary_traffic_percent": ready.get("spec", {})
        .get("predictor", {})
        .get("canaryTrafficPercent"),
    }
