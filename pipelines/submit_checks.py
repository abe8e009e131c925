"""The checks pipelines.submit makes before anything is sent.

They take what the user gave (a params file, the compiled pipeline and its images, a KFP
host URL, a project, region, bucket, service account, labels, a Cloud KMS key, a VPC
network, a failure policy), return what to send, and raise ``SubmitError`` with a
one-line message for what would fail. None sends anything but ``check_kfp_host`` (one GET
of the host's health route); ``check_gcp_credentials`` looks up Google Cloud
application-default credentials.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import yaml

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a list",
    "STRUCT": "a mapping",
}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_PROJECT_RE = re.compile(r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+(-[a-z]+)+[0-9]+$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_KMS_KEY_RE = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
_NETWORK_RE = re.compile(r"^projects/[0-9]+/global/networks/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
FAILURE_POLICIES = ("slow", "fast")


class SubmitError(Exception):
    """A problem found before anything was sent; the message is one line."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Reads pipeline parameters from a YAML or JSON file holding a mapping."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SubmitError(f"params file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise SubmitError(f"params file {path} is not valid {kind}: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SubmitError(
            f"params file {path} must hold a mapping of parameter names to values, "
            f"not a {type(data).__name__}"
        )
    return data


def load_pipeline_spec(pipeline_file: str | os.PathLike) -> dict[str, Any]:
    """Reads a compiled pipeline (the first YAML document: the pipeline spec)."""
    pipeline_file = os.fspath(pipeline_file)
    if not os.path.isfile(pipeline_file):
        raise SubmitError(f"pipeline file not found: {pipeline_file}")
    try:
        with open(pipeline_file, encoding="utf-8") as f:
            # A pipeline using platform config (kfp-kubernetes) is two documents.
            spec = next(iter(yaml.safe_load_all(f)), None)
    except yaml.YAMLError as e:
        raise SubmitError(f"pipeline file {pipeline_file} is not YAML: {_one_line(e)}") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise SubmitError(
            f"{pipeline_file} is not a compiled KFP v2 pipeline (no root/pipelineInfo)"
        )
    return spec


def pipeline_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters (``root.inputDefinitions.parameters``): name -> definition."""
    return dict((spec.get("root", {}).get("inputDefinitions") or {}).get("parameters") or {})


def resolve_params(params: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """Parameter values given as a mapping, a YAML/JSON file (see ``load_params``) or None."""
    if params is None:
        return {}
    if isinstance(params, str | os.PathLike):
        return load_params(params)
    if not isinstance(params, Mapping):
        raise SubmitError(
            f"pipeline parameters must be a mapping or a file path, not a {type(params).__name__}"
        )
    return dict(params)


def _check_type(value: Any, parameter_type: str) -> tuple[bool, Any]:
    """Whether ``value`` fits ``parameter_type``, and the value to send."""
    if parameter_type == "STRING":
        return isinstance(value, str), value
    if parameter_type == "NUMBER_INTEGER":
        if isinstance(value, bool):
            return False, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int), value
    if parameter_type == "NUMBER_DOUBLE":
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if parameter_type == "BOOLEAN":
        return isinstance(value, bool), value
    if parameter_type == "LIST":
        return isinstance(value, list), value
    if parameter_type == "STRUCT":
        return isinstance(value, dict), value
    return True, value  # a type this check does not know: leave it to the server


def validate_params(
    params: Mapping[str, Any], parameters: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Checks parameter values against the pipeline's declared parameters.

    Args:
        params: Parameter values by name.
        parameters: The pipeline's parameter definitions (see ``pipeline_parameters``).

    Returns:
        The values to send (integral floats given for integer parameters become ints).

    Raises:
        SubmitError: For a non-mapping, an unknown name (the message lists the valid
            ones), a value of the wrong type, or a required parameter left out.
    """
    if not isinstance(params, Mapping):
        raise SubmitError(
            f"pipeline parameters must be a mapping of names to values, not a {type(params).__name__}"
        )
    valid = sorted(parameters)
    unknown = sorted(str(name) for name in params if name not in parameters)
    if unknown:
        raise SubmitError(
            f"unknown pipeline parameter(s): {', '.join(unknown)}; "
            f"the pipeline's parameters are: {', '.join(valid)}"
        )
    errors, values = [], {}
    for name, value in params.items():
        parameter_type = parameters[name].get("parameterType", "STRING")
        ok, values[name] = _check_type(value, parameter_type)
        if not ok:
            errors.append(
                f"{name} must be {_TYPE_NAMES.get(parameter_type, parameter_type)} "
                f"({parameter_type}), got {type(value).__name__} {value!r}"
            )
    missing = [
        name
        for name, definition in parameters.items()
        if name not in params
        and not definition.get("isOptional")
        and "defaultValue" not in definition
    ]
    if missing:
        errors.append(f"missing required parameter(s): {', '.join(sorted(missing))}")
    if errors:
        raise SubmitError("; ".join(errors))
    return values


def settings_into_params(
    values: Mapping[str, Any],
    parameters: Mapping[str, Any],
    settings: Mapping[str, tuple[str, str | None]],
) -> dict[str, Any]:
    """Job settings also given to the pipeline's parameters of the same name.

    The pipeline passes them on to the jobs it starts (Vertex custom jobs, batch
    predictions, endpoints), which would otherwise run without them.

    Args:
        values: The user's parameter values.
        parameters: The compiled pipeline's parameters.
        settings: Parameter name -> (flag, the flag's value or None).

    Raises:
        SubmitError: A parameter set to a value other than its flag's.
    """
    values = dict(values)
    for name, (flag, value) in settings.items():
        if not value or name not in parameters:
            continue
        if name in values and values[name] != value:
            raise SubmitError(
                f"{flag} is {value!r} but the pipeline parameter {name} is {values[name]!r}: "
                f"leave {name} out of the parameters (the flag sets it) or give both the same value"
            )
        values[name] = value
    return values


def local_images(spec: Mapping[str, Any]) -> list[str]:
    """Executor images of the pipeline that no cluster can pull (``localhost/...``)."""
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    images = {(executor.get("container") or {}).get("image", "") for executor in executors.values()}
    return sorted(image for image in images if image.startswith("localhost/"))


def check_images(spec: Mapping[str, Any], pipeline_file: str) -> None:
    """Refuses a pipeline that names ``localhost/`` images (see ``local_images``)."""
    images = local_images(spec)
    if images:
        more = f" and {len(images) - 1} more" if len(images) > 1 else ""
        raise SubmitError(
            f"{pipeline_file} uses local images no cluster can pull ({images[0]}{more}): "
            "set IMAGE_REGISTRY and IMAGE_TAG to the pushed stage images (Cloud Build tags "
            "them with the commit SHA) and compile again, or pass --allow-local-images"
        )


def check_host_url(host: str | None) -> str:
    """The KFP host (argument, else ``KFPHOST``) as an http(s) URL without a trailing slash."""
    host = (host or os.environ.get("KFPHOST") or "").strip()
    if not host:
        raise SubmitError(
            "no KFP host: pass --host or set KFPHOST "
            "(e.g. https://<id>.pipelines.googleusercontent.com or http://localhost:8080)"
        )
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SubmitError(
            f"KFP host must be an http:// or https:// URL (e.g. http://localhost:8080), got {host!r}"
        )
    return host.rstrip("/")


def check_kfp_host(host: str, timeout: float = 5.0) -> None:
    """Pre-flight: the host answers ``GET <host>/apis/v2beta1/healthz``.

    Any HTTP answer counts (an auth proxy may answer 302/401/403); no answer raises.
    Environment proxies are ignored, as kfp.Client ignores them.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{host}/apis/v2beta1/healthz", timeout=timeout):
            return
    except urllib.error.HTTPError as answer:
        answer.close()
        return
    except urllib.error.URLError as e:
        reason = e.reason
    except (OSError, http.client.HTTPException) as e:
        reason = e
    raise SubmitError(f"cannot reach KFP host {host}: {_one_line(reason) or type(reason).__name__}")


def check_gcp_credentials() -> Any:
    """Google Cloud application-default credentials, or a clear ``SubmitError``."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except DefaultCredentialsError as e:
        raise SubmitError(
            "no Google Cloud credentials found: run `gcloud auth application-default login`, "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file "
            f"({_one_line(e)})"
        ) from None
    return credentials


def bucket_name(bucket: str) -> str:
    """The bucket name from ``my-bucket`` or ``gs://my-bucket``."""
    name = bucket.strip().removeprefix("gs://").rstrip("/")
    if "/" in name:
        raise SubmitError(
            f"--bucket takes a bucket name, got {bucket!r}; pass a folder as --pipeline-root gs://..."
        )
    if not _BUCKET_RE.match(name) or ".." in name:
        raise SubmitError(
            f"invalid bucket name {bucket!r}: 3-222 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (e.g. my-bucket or gs://my-bucket)"
        )
    return name


def check_vertex_project(
    project: str | None, region: str | None, bucket: str | None, pipeline_root: str | None
) -> tuple[str, str, str]:
    """The project, region and pipeline root of a Vertex AI submission, checked.

    The pipeline root is ``pipeline_root`` (a gs:// URI) if given, else
    ``gs://<bucket>/pipeline_root``.
    """
    project, region = (project or "").strip(), (region or "").strip()
    missing = [
        flag
        for flag, value in (
            ("--project", project),
            ("--region", region),
            ("--bucket (or --pipeline-root)", bucket or pipeline_root),
        )
        if not value
    ]
    if missing:
        raise SubmitError(f"missing {', '.join(missing)} for a Vertex AI submission")
    if not _PROJECT_RE.match(project):
        raise SubmitError(f"invalid project id {project!r}")
    if not _REGION_RE.match(region):
        raise SubmitError(f"invalid region {region!r} (e.g. us-central1, europe-west4)")
    if pipeline_root:
        if not pipeline_root.startswith("gs://"):
            raise SubmitError(f"--pipeline-root must be a gs:// URI, got {pipeline_root!r}")
        bucket_name(pipeline_root.removeprefix("gs://").split("/")[0])
    else:
        pipeline_root = f"gs://{bucket_name(bucket)}/pipeline_root"
    return project, region, pipeline_root


def check_service_account(service_account: str) -> str:
    """A service account email for the job to run as."""
    if not _EMAIL_RE.match(service_account):
        raise SubmitError(
            f"--service-account takes a service account email, got {service_account!r}"
        )
    return service_account


def parse_labels(labels: str | Mapping[str, str] | None) -> dict[str, str]:
    """Vertex labels from ``key=value,key2=value2`` (or a mapping), checked."""
    if not labels:
        return {}
    if isinstance(labels, str):
        pairs = {}
        for item in filter(None, (part.strip() for part in labels.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise SubmitError(f"labels are key=value pairs separated by commas, got {item!r}")
            pairs[key.strip()] = value.strip()
        labels = pairs
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(str(key)) or not _LABEL_VALUE_RE.match(str(value)):
            raise SubmitError(
                f"invalid label {key}={value}: keys start with a lowercase letter; keys and "
                "values use lowercase letters, digits, '_' and '-' (at most 63 characters)"
            )
    return dict(labels)


def check_encryption_key(key: str, region: str) -> str:
    """A Cloud KMS key name for Vertex AI's CMEK, in the job's region.

    Vertex AI requires the key to be in the same region as the resource it protects, so
    a key in another location (``global`` included) is refused here, not by the API.
    """
    key = key.strip()
    match = _KMS_KEY_RE.match(key)
    if not match:
        raise SubmitError(
            "--encryption-key takes a Cloud KMS key name "
            f"projects/<project>/locations/{region}/keyRings/<ring>/cryptoKeys/<key>"
            f"{' (the key, not one of its versions)' if '/cryptoKeyVersions/' in key else ''}, "
            f"got {key!r}"
        )
    if match["location"] != region:
        raise SubmitError(
            f"--encryption-key is in location {match['location']!r} but the job runs in "
            f"{region!r}: Vertex AI needs a key in the same region as the job"
        )
    return key


def check_network(network: str) -> str:
    """A VPC network name for Vertex AI peering: ``projects/<number>/global/networks/<name>``."""
    network = network.strip()
    if not _NETWORK_RE.match(network):
        raise SubmitError(
            "--network takes projects/<project number>/global/networks/<name> (the number, "
            "not the project id: gcloud projects describe <id> --format='value(projectNumber)'), "
            f"got {network!r}"
        )
    return network


def check_failure_policy(policy: str) -> str:
    """``slow`` (run every task that can still run) or ``fast`` (stop scheduling tasks
    after the first failure)."""
    if policy not in FAILURE_POLICIES:
        raise SubmitError(f"--failure-policy takes slow or fast, got {policy!r}")
    return policy
