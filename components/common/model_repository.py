"""The model repository layout: what the deploy stage publishes, the model server serves
and evaluation finds the model serving now (the champion) in::

    <repository>/<model_name>/1/saved_model.pb      one exported SavedModel per version
    <repository>/<model_name>/1/variables/...
    <repository>/<model_name>/1/assets.extra/labels.txt
    <repository>/<model_name>/2/...
    <repository>/<model_name>/evaluations/2.json     the evaluation a version was deployed with

Versions are positive integers; a server serves every one, and the highest to a request
that names none (TF Serving's "latest"); other names (``evaluations``) are not versions. Local paths and
``gs://`` alike.
"""

from __future__ import annotations

from components.common import io

SAVED_MODEL_FILE = "saved_model.pb"
EVALUATIONS_DIR = "evaluations"


def model_base(repository: str, model_name: str) -> str:
    """The directory that holds one model's versions."""
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise ValueError(f"invalid model name {model_name!r}: expected a plain directory name")
    return io.join(repository, model_name)


def version_of(model_dir: str) -> int | None:
    """The version a SavedModel directory is, by its name (``<repository>/<model>/3``: 3);
    None when its name is not a version number."""
    name = model_dir.rstrip("/").rsplit("/", 1)[-1]
    return int(name) if name.isdecimal() else None


def list_versions(repository: str, model_name: str) -> list[int]:
    """The model's version numbers (numeric sub-directories), ascending."""
    base = model_base(repository, model_name)
    if not io.isdir(base):
        return []
    versions = (version_of(name) for name in io.listdir(base))
    return sorted(version for version in versions if version is not None)


def latest_version(repository: str, model_name: str) -> tuple[int, str]:
    """The highest version that holds a SavedModel, and its directory.

    Raises:
        FileNotFoundError: when the repository holds no version of the model.
    """
    base = model_base(repository, model_name)
    for version in reversed(list_versions(repository, model_name)):
        path = io.join(base, str(version))
        if io.exists(io.join(path, SAVED_MODEL_FILE)):
            return version, path
    raise _no_version(repository, model_name)


def saved_model_versions(repository: str, model_name: str) -> dict[int, str]:
    """Every version that holds a SavedModel, and its directory, ascending: what a
    server serves.

    Raises:
        FileNotFoundError: when the repository holds no version of the model.
    """
    base = model_base(repository, model_name)
    paths = {
        version: io.join(base, str(version)) for version in list_versions(repository, model_name)
    }
    found = {
        version: path
        for version, path in paths.items()
        if io.exists(io.join(path, SAVED_MODEL_FILE))
    }
    if not found:
        raise _no_version(repository, model_name)
    return found


def _no_version(repository: str, model_name: str) -> FileNotFoundError:
    base = model_base(repository, model_name)
    return FileNotFoundError(
        f"no version of model {model_name!r} in the model repository {repository} "
        f"(expected {base}/<version>/{SAVED_MODEL_FILE}; publish an export first)"
    )


def version_dir(repository: str, model_name: str, version: int) -> str:
    """The directory of one version; a clear error when it holds no SavedModel."""
    path = io.join(model_base(repository, model_name), str(int(version)))
    if not io.exists(io.join(path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"version {version} of model {model_name!r} not found in {repository} "
            f"(no {path}/{SAVED_MODEL_FILE}); versions there: "
            f"{list_versions(repository, model_name)}"
        )
    return path


def evaluation_path(repository: str, model_name: str, version: int) -> str:
    """Where the evaluation a version was deployed with is recorded (JSON)."""
    return io.join(model_base(repository, model_name), EVALUATIONS_DIR, f"{int(version)}.json")


def serving_version(repository: str, model_name: str) -> str:
    """The directory of the version a server serves now (the highest), or "" when the
    repository holds none: the champion a new model is compared with."""
    if not repository:
        return ""
    try:
        return latest_version(repository, model_name)[1]
    except FileNotFoundError:
        return ""
