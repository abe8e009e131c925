"""Publishing exports to a versioned model repository (the layout TensorFlow Serving and
KServe serve, ``components.common.model_repository``).

``publish`` copies an export into a temporary, non-numeric directory
next to the versions and renames it into place, so a server scanning the repository
never picks up a half-copied version. On ``gs://`` the rename is object by object (GCS
has no directory rename), the temporary name still keeps a copy in progress invisible
until its rename starts.

Publishing is idempotent: re-publishing the content of the latest version (the same
files, byte for byte) returns that version instead of adding one. An older version's
content published again (a roll-back) becomes a new latest version, so that what was
published last is what the repository serves.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import tensorflow as tf

from components.common import io
from components.common.model_repository import (
    SAVED_MODEL_FILE,
    latest_version,
    list_versions,
    model_base,
)

TMP_PREFIX = ".publishing-"
_CHUNK = 1 << 20
_RENAME_ATTEMPTS = 5


def _files(root: str) -> dict[str, int]:
    """Relative path -> size of every file under ``root``."""
    files = {}
    for dirpath, _, filenames in tf.io.gfile.walk(root):
        for name in filenames:
            path = io.join(dirpath, name)
            files[os.path.relpath(path, root)] = tf.io.gfile.stat(path).length
    return files


def content_digest(root: str, files: dict[str, int] | None = None) -> str:
    """sha256 over the sorted relative paths and bytes of every file under ``root``."""
    files = _files(root) if files is None else files
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode("utf-8") + b"\0" + str(files[rel]).encode() + b"\0")
        with tf.io.gfile.GFile(io.join(root, rel), "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def publish(export_dir: str, repository: str, model_name: str) -> dict:
    """Publishes an exported SavedModel as a version of ``model_name`` in ``repository``.

    Args:
        export_dir: A SavedModel written by the export stage (``saved_model.pb`` at its
            root); local path or ``gs://``.
        repository: The model repository's root; local path or ``gs://``. Created when
            missing.
        model_name: The model's name: the directory under the repository, and the name
            a server serves it as.

    Returns:
        ``model_name``, ``version`` (int), ``model_dir`` (the version directory),
        ``model_repository``, ``digest`` (of the SavedModel's files) and ``reused``
        (True when the latest version already held this content).
    """
    if not io.exists(io.join(export_dir, SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"no SavedModel at {export_dir} (expected {SAVED_MODEL_FILE} at its root)"
        )
    base = model_base(repository, model_name)
    files = _files(export_dir)
    digest = content_digest(export_dir, files)

    def result(version: int, reused: bool) -> dict:
        return {
            "model_name": model_name,
            "version": version,
            "model_dir": io.join(base, str(version)),
            "model_repository": repository,
            "digest": digest,
            "reused": reused,
        }

    latest = _latest_or_none(repository, model_name)
    if latest is not None:
        version, path = latest
        # Sizes first: a cheap test that rules out most different exports unread.
        if _files(path) == files and content_digest(path, files) == digest:
            return result(version, reused=True)

    io.makedirs(base)
    tmp = io.join(base, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        io.copy_tree(export_dir, tmp)
        for _ in range(_RENAME_ATTEMPTS):
            version = max(list_versions(repository, model_name), default=0) + 1
            try:
                tf.io.gfile.rename(tmp, io.join(base, str(version)), overwrite=False)
            except tf.errors.AlreadyExistsError:
                continue  # another publisher took this number: take the next one
            return result(version, reused=False)
        raise RuntimeError(
            f"could not publish {export_dir} to {base}: every version number tried "
            f"was taken by concurrent publishers ({_RENAME_ATTEMPTS} attempts)"
        )
    finally:
        if io.exists(tmp):
            tf.io.gfile.rmtree(tmp)


def _latest_or_none(repository: str, model_name: str) -> tuple[int, str] | None:
    try:
        return latest_version(repository, model_name)
    except FileNotFoundError:
        return None
