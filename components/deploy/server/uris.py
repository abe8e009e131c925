"""Images a request names by path or URI, read only under the prefixes the operator allows.

A request may name its images instead of sending them (``{"filenames": "gs://..."}``, the
book's serving signature); the server then reads files on the caller's behalf, so it
reads only under the prefixes given with ``--allow-uri-prefix`` (none by default: every
such request is refused with 403 and a message saying how to allow it). A local path is
resolved first (``..`` and symbolic links), so neither leads out of a prefix; a ``gs://``
URI with a ``.`` or ``..`` segment is refused (object names are not paths, but other
readers may treat them as such). Files are read through ``components.common.io`` with the
same size and pixel limits as images sent inline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from components.common import io
from components.deploy.server.protocol import InvalidInput, PredictRequest, check_image


class ForbiddenUri(Exception):
    """A request names a file outside the allowed prefixes (HTTP 403)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _local(path: str) -> str:
    return os.path.realpath(path.removeprefix("file://"))


def normalize_prefix(prefix: str) -> str:
    """A prefix as the reader compares it: a local one resolved, without a trailing ``/``.

    Raises:
        ValueError: for a prefix that is neither an absolute local path nor ``gs://...``.
    """
    if io.is_remote(prefix):
        if prefix.rstrip("/").count("/") < 2:
            raise ValueError(f"--allow-uri-prefix {prefix!r}: name at least a bucket")
        return prefix.rstrip("/")
    if not os.path.isabs(prefix.removeprefix("file://")):
        raise ValueError(f"--allow-uri-prefix {prefix!r}: expected an absolute path or a gs:// URI")
    return _local(prefix).rstrip("/") or "/"


class UriReader:
    """Reads the images a request names, under ``prefixes`` only (see the module)."""

    def __init__(self, prefixes: Sequence[str] = ()):
        self.prefixes = [normalize_prefix(prefix) for prefix in prefixes]

    def resolve(self, uri: str, index: int) -> str:
        """The path to read for ``uri``, once allowed.

        Raises:
            ForbiddenUri: when no prefix is allowed, or ``uri`` is not under one.
            InvalidInput: for a URI of another scheme or a relative path.
        """
        if not self.prefixes:
            raise ForbiddenUri(
                f"instance {index}: this server reads no files; its operator allows "
                "requests that name files under a prefix with --allow-uri-prefix PREFIX "
                '(or send the image itself as {"b64": "<base64 image>"})'
            )
        if io.is_remote(uri):
            segments = uri.split("://", 1)[1].split("/")
            path = None if {".", ".."} & set(segments) else uri
        elif "://" in uri and not uri.startswith("file://"):
            raise InvalidInput(
                f"instance {index}: {uri.split('://')[0]}:// is not read; name a local "
                "path or a gs:// URI"
            )
        elif not os.path.isabs(uri.removeprefix("file://")):
            raise InvalidInput(f"instance {index}: {uri!r} is not an absolute path")
        else:
            path = _local(uri)
        if path is None or not any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in self.prefixes
        ):
            raise ForbiddenUri(
                f"instance {index}: {uri} is not under a prefix this server allows "
                "(--allow-uri-prefix)"
            )
        return path

    def read(self, uri: str, index: int, max_bytes: int) -> bytes:
        """The bytes of the image ``uri`` names, checked like an image sent inline.

        Raises:
            ForbiddenUri: (403) outside the allowed prefixes.
            InvalidInput: (400) no such file, too large, or not an image.
        """
        path = self.resolve(uri, index)
        try:
            data = io.read_bytes(path, max_bytes)
        except ValueError:
            raise InvalidInput(
                f"instance {index}: {uri} is more than the limit of {max_bytes} bytes"
            ) from None
        except Exception as e:  # tf.errors.NotFoundError and the like, by filesystem
            if not io.exists(path):
                raise InvalidInput(f"instance {index}: no such file: {uri}") from None
            raise InvalidInput(f"instance {index}: {uri} cannot be read: {e}") from None
        if not data:
            raise InvalidInput(f"instance {index}: {uri} is empty")
        check_image(data, index, max_bytes)
        return data

    def read_request(self, request: PredictRequest, max_bytes: int) -> None:
        """Reads the files ``request`` names into its images (blocking: run it in a thread)."""
        for index, uri in request.uris.items():
            request.images[index] = self.read(uri, index, max_bytes)
