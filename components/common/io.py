"""One way to read and write paths: local paths and ``gs://`` URIs alike.

Everything goes through ``tf.io.gfile``, which speaks both (and the other filesystems
TensorFlow registers), so stage code never branches on where its data lives. TensorFlow is
imported at the first file operation, not with this module: importing it takes seconds and
loads Keras, which the serving and batch-prediction paths and every CLI's ``--help`` do
without.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

REMOTE_SCHEMES = ("gs://",)


def is_remote(uri: str) -> bool:
    """True for URIs a worker on another machine can reach (e.g. ``gs://``)."""
    return uri.startswith(REMOTE_SCHEMES)


def artifact_location(artifact: Any) -> str:
    """Where a stage should write an output artifact's files.

    On Vertex AI an artifact's ``uri`` is ``gs://...``: writing there directly lets
    distributed workers (Dataflow, several trainers) reach it. Elsewhere (``kfp local``,
    KFP on GKE with MinIO) the launcher uploads the local ``path`` after the step, so
    the local path is the one to write.
    """
    return artifact.uri if is_remote(artifact.uri) else artifact.path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(*parts: str) -> str:
    """Joins path parts for local paths and URIs."""
    return os.path.join(*parts)


def exists(path: str) -> bool:
    return _gfile().exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path)


def makedirs(path: str) -> None:
    _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    """Entries of a directory, without trailing slashes, sorted."""
    return sorted(name.rstrip("/") for name in _gfile().listdir(path))


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern))


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; with ``max_bytes``, a ``ValueError`` for a larger file, read no
    further than one byte past the limit."""
    with _gfile().GFile(path, "rb") as f:
        if max_bytes is None:
            return f.read()
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is more than {max_bytes} bytes")
    return data


def write_bytes(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    if parent:
        makedirs(parent)
    with _gfile().GFile(path, "wb") as f:
        f.write(data)


def remove(path: str) -> None:
    """Deletes a file or a directory tree; nothing if it does not exist."""
    if _gfile().isdir(path):
        _gfile().rmtree(path)
    elif _gfile().exists(path):
        _gfile().remove(path)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(paths: str | Iterable[str]) -> Iterator[dict]:
    """Yields the objects of one JSON Lines file, or of several (e.g. shards)."""
    for path in [paths] if isinstance(paths, str) else paths:
        with _gfile().GFile(path, "r") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def copy_tree(src: str, dst: str, overwrite: bool = False) -> None:
    """Copies a directory tree, e.g. a SavedModel into a model repository."""
    for dirpath, _, filenames in _gfile().walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else join(dst, rel)
        makedirs(target_dir)
        for name in filenames:
            _gfile().copy(join(dirpath, name), join(target_dir, name), overwrite=overwrite)
