"""The served model: the versions of an exported image model, as one ``kserve.Model``.

The server knows no task: what a request names its input, and what the answer holds,
come from the export's ``serving_default`` signature once it is loaded
(``structured_input_signature``: one string input of encoded images, whatever its name;
``structured_outputs``: every output, with its dtype and shape). A classifier's export
(``image_bytes`` -> ``probabilities``, ``label``, ...) and a detector's (``inputs`` ->
``detection_boxes``, ``detection_labels``, ...) are served alike, each version with
its own signature (``ServedVersion``). The versions served change while the server
runs when it polls its repository (``repository_poll``): ``add_version`` and
``remove_version``, which move the latest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

# First: protocol imports kserve with sys.argv hidden from it (kserve parses sys.argv when
# it is imported); kserve is only imported below, after it.
from components.deploy.server.protocol import (
    PredictRequest,
    decode_error_message,
    format_answer,
    parse_request,
    parse_v2_request,
)

# isort: split
import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from prometheus_client import Histogram
from tensorflow.core.protobuf import saved_model_pb2

from components.common import io, model_repository
from components.common.serving import SIGNATURE
from components.deploy.server.batching import Batcher
from components.deploy.server.limits import DEFAULT_LIMITS, ServerLimits
from components.deploy.server.uris import UriReader

log = logging.getLogger(__name__)

MODEL_CALL_IMAGES = Histogram(
    "image_classifier_model_call_images",
    "Images per call of the serving signature (a batch of one or more requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def image_input(signature) -> tuple[str, tf.TensorSpec]:
    """The name and spec of a signature's one input of encoded images (a string vector).

    Raises:
        ValueError: for a signature that takes something else (the server serves only
            models of encoded images).
    """
    _, specs = signature.structured_input_signature  # a signature's inputs are keywords
    if len(specs) == 1:
        [(name, spec)] = specs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name, spec
    described = {name: f"{spec.dtype.name} {spec.shape}" for name, spec in specs.items()}
    raise ValueError(
        f"the {SIGNATURE!r} signature must take one string [batch] input of encoded images; "
        f"it takes {described}"
    )


class VersionNotFound(ModelNotFound):
    """A request names a version or label that is not served (404, NOT_FOUND)."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


def parse_version(model_name: str, text: str | None) -> int | None:
    """The version number a request names as text (a path's ``versions/<N>``, KServe v2's
    ``model_version``); None when it names none (absent or empty: the latest).

    Raises:
        VersionNotFound: (404, NOT_FOUND) for text that is not a version number.
    """
    if not text:
        return None
    if not text.isdecimal():
        raise VersionNotFound(f"model {model_name!r}: version {text!r} is not a version number")
    return int(text)


@dataclasses.dataclass
class ServedVersion:
    """One version of the served model: its number and directory, and once loaded its
    ``serving_default`` signature, the signature's input name and the version's batcher."""

    number: int
    directory: str
    signature: Any = None
    input_name: str | None = None
    batcher: Batcher | None = None
    # Keep the loaded object: its variables must outlive the signature function.
    loaded: Any = None
    _signature_defs: Any = None

    @property
    def available(self) -> bool:
        """Whether the version is loaded and answers requests."""
        return self.signature is not None

    def signature_defs(self) -> dict:
        """The SavedModel's own SignatureDefs by name (``saved_model.pb``, read once)."""
        if self._signature_defs is None:
            saved_model = saved_model_pb2.SavedModel()
            saved_model.ParseFromString(io.read_bytes(io.join(self.directory, "saved_model.pb")))
            self._signature_defs = saved_model.meta_graphs[0].signature_def
        return self._signature_defs


class ImageModel(kserve.Model):
    """Serves the versions of an exported image model (a classifier, a detector: any
    whose ``serving_default`` takes encoded images) from a model repository, or the
    SavedModel directory ``model_dir`` (then ``repository`` is empty; Vertex AI's
    ``AIP_STORAGE_URI``, SageMaker's ``/opt/ml/model``).

    Versions, as TF Serving's: every version the repository holds is loaded (only
    ``version`` when given); a request that names none gets the latest (``version``
    after ``resolve``), ``served`` finds the one a request names by number or by label.
    ``version_labels`` maps labels to versions; ``stable`` is the latest unless given.
    A lone ``model_dir`` is one version: its directory's number, or 1. Only a model that
    serves every version of a repository (``follows_repository``) takes versions
    published later (``add_version``) and drops removed ones (``remove_version``).

    ``input_name`` is the latest version's signature input (None until loaded): requests
    name it.

    ``limits`` gives the request checks (``max_instances``, ``max_image_bytes``) and the
    batching (``batch_max_size``, 0 for none, and ``batch_timeout_ms``, a batcher per
    version); ``uri_reader`` reads the files requests name (by default none: such
    requests get 403).
    """

    def __init__(
        self,
        name: str,
        repository: str = "",
        version: int | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
        model_dir: str | None = None,
        uri_reader: UriReader | None = None,
        version_labels: dict[str, int] | None = None,
    ):
        super().__init__(name)
        if bool(repository) == bool(model_dir):
            raise ValueError("serve a model repository or a SavedModel directory, not both")
        self.repository = repository
        self.version = version
        self.model_dir: str | None = model_dir
        self.limits = limits
        self.uri_reader = uri_reader or UriReader()
        # Replaced, never changed in place: threads read it while the event loop swaps it.
        self.versions: dict[int, ServedVersion] = {}
        self.version_labels: dict[str, int] = dict(version_labels or {})
        self.follows_repository = bool(repository) and version is None
        self._stable_given = "stable" in self.version_labels

    def resolve(self) -> str:
        """Finds the versions to serve (cheap: no TensorFlow), checks the labels; returns
        the latest version's directory.

        Raises:
            FileNotFoundError: when the repository holds no such version, or
                ``model_dir`` no SavedModel.
            ValueError: for a label of a version that is not served.
        """
        if self.versions:
            return self.model_dir
        if not self.repository:
            if not io.exists(io.join(self.model_dir, model_repository.SAVED_MODEL_FILE)):
                raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {self.model_dir}")
            if self.version is None:
                self.version = model_repository.version_of(self.model_dir) or 1
            directories = {self.version: self.model_dir}
        elif self.version is not None:
            directories = {
                self.version: model_repository.version_dir(self.repository, self.name, self.version)
            }
        else:
            directories = model_repository.saved_model_versions(self.repository, self.name)
            self.version = max(directories)
        self.model_dir = directories[self.version]
        self.version_labels.setdefault("stable", self.version)
        unserved = {
            label: number
            for label, number in self.version_labels.items()
            if number not in directories
        }
        if unserved:
            raise ValueError(
                f"version labels {unserved} name versions that are not served; served: "
                f"{sorted(directories)}"
            )
        self.versions = {
            number: ServedVersion(number, directory)
            for number, directory in sorted(directories.items())
        }
        return self.model_dir

    @property
    def input_name(self) -> str | None:
        """The latest version's signature input (None until loaded)."""
        latest = self.versions.get(self.version)
        return None if latest is None else latest.input_name

    def served(self, version: int | None = None, label: str = "") -> ServedVersion:
        """The version a request names by number or by label (a label wins; TF Serving's
        ``ModelSpec`` holds one or the other); the latest when neither.

        Raises:
            ModelNotFound: (404, NOT_FOUND) for a version or label that is not served.
        """
        if label:
            if label not in self.version_labels:
                raise VersionNotFound(
                    f"model {self.name!r} has no version label {label!r}; labels: "
                    f"{dict(sorted(self.version_labels.items()))}"
                )
            version = self.version_labels[label]
        number = self.version if version is None else version
        if number not in self.versions:
            raise VersionNotFound(
                f"model {self.name!r} has no version {version} served; versions: "
                f"{sorted(self.versions)}"
            )
        return self.versions[number]

    def load(self) -> bool:
        """Loads every served version's SavedModel, the latest first (seconds each);
        readiness turns true when all are loaded."""
        self.resolve()
        for number in sorted(self.versions, key=lambda n: n != self.version):
            self.load_version(self.versions[number])
        self.ready = True
        return self.ready

    def load_version(self, served: ServedVersion) -> None:
        """Loads one version's SavedModel into ``served`` (blocking, seconds), ready to
        answer once served.

        Raises:
            ValueError: for a SavedModel without a ``serving_default`` signature of
                encoded images; TensorFlow's errors for one that does not load.
        """
        loaded = tf.saved_model.load(served.directory)
        if SIGNATURE not in loaded.signatures:
            raise ValueError(
                f"the SavedModel in {served.directory} has no {SIGNATURE!r} signature, only "
                f"{sorted(loaded.signatures)}"
            )
        signature = loaded.signatures[SIGNATURE]
        served.input_name, _ = image_input(signature)
        served.loaded = loaded
        if self.limits.batch_max_size > 0:
            served.batcher = Batcher(
                lambda images: self.run_signature(images, served),
                self.limits.batch_max_size,
                self.limits.batch_timeout_ms / 1000.0,
            )
        served.signature = signature
        log.info(
            "loaded model %s version %s from %s: input %r, outputs %s",
            self.name,
            served.number,
            served.directory,
            served.input_name,
            sorted(signature.structured_outputs),
        )

    def add_version(self, served: ServedVersion) -> None:
        """Serves a loaded version besides the others; the latest (and ``stable``, unless
        it was given) moves to the newest."""
        self.versions = dict(sorted({**self.versions, served.number: served}.items()))
        self._move_latest()

    def remove_version(self, number: int) -> None:
        """Stops serving a version (requests already given it still finish); the latest
        (and ``stable``, unless it was given) moves to the newest left.

        Raises:
            ValueError: for the last version served: a model serves at least one.
        """
        if set(self.versions) == {number}:
            raise ValueError(f"version {number} is the only version of {self.name!r} served")
        versions = dict(self.versions)
        removed = versions.pop(number)
        self.versions = versions
        self._move_latest()
        if removed.batcher is not None:
            removed.batcher.close()

    def _move_latest(self) -> None:
        self.version = max(self.versions)
        self.model_dir = self.versions[self.version].directory
        if not self._stable_given:
            self.version_labels = {**self.version_labels, "stable": self.version}

    def run_signature(
        self, images: list[bytes], version: int | ServedVersion | None = None
    ) -> dict[str, np.ndarray]:
        """One call of a version's serving signature (the latest's by default; a version
        by number, or the ``ServedVersion`` itself, which answers even once removed) on
        encoded images (blocking)."""
        served = version if isinstance(version, ServedVersion) else self.served(version)
        MODEL_CALL_IMAGES.observe(len(images))
        try:
            outputs = served.signature(**{served.input_name: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as e:
            # The header looked right but the image does not decode (e.g. truncated).
            raise InvalidInput(decode_error_message(images, e)) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    async def read_request(self, payload: Any, version: int | None = None) -> PredictRequest:
        """The checked images of a request to one version (the latest by default): a TF
        Serving REST body or a KServe v2 ``InferRequest``; files it names are read."""
        served = self.served(version)
        limits = self.limits
        if isinstance(payload, InferRequest):
            request = parse_v2_request(
                payload, served.input_name, limits.max_instances, limits.max_image_bytes
            )
        else:
            request = parse_request(
                payload, served.input_name, limits.max_instances, limits.max_image_bytes
            )
        request.version = served.number
        if request.uris:
            await asyncio.get_running_loop().run_in_executor(
                None, self.uri_reader.read_request, request, self.limits.max_image_bytes
            )
        return request

    async def preprocess(
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> PredictRequest:
        # KServe v2 names a version in the request (gRPC's model_version; the REST
        # route's /versions/<N>, which v2_rest copies there).
        version = None
        if isinstance(payload, InferRequest):
            version = parse_version(self.name, payload.model_version)
        return await self.read_request(payload, version)

    async def predict_images(
        self, images: list[bytes], version: int | None = None
    ) -> dict[str, np.ndarray]:
        """A version's signature outputs (the latest's by default) for checked images,
        batched with other requests' to that version."""
        served = self.served(version)
        if served.batcher is not None:
            return await served.batcher.predict(images)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.run_signature, images, served)

    async def predict(
        self, payload: PredictRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        outputs = await self.predict_images(payload.images, payload.version)
        version = self.version if payload.version is None else payload.version
        return format_answer(payload, outputs, self.name, version)

    def get_input_types(self, version: int | None = None) -> list[dict]:
        """A version's input (the latest's by default) as KServe's v2 metadata describes
        it; none until it is loaded."""
        served = self.versions.get(self.version if version is None else version)
        if served is None or served.signature is None:
            return []
        name, spec = image_input(served.signature)
        return [_tensor_type(name, spec)]

    def get_output_types(self, version: int | None = None) -> list[dict]:
        """A version's outputs (the latest's by default) as KServe's v2 metadata describes
        them; none until it is loaded."""
        served = self.versions.get(self.version if version is None else version)
        if served is None or served.signature is None:
            return []
        specs = served.signature.structured_outputs
        return [_tensor_type(name, specs[name]) for name in sorted(specs)]


def _tensor_type(name: str, spec: tf.TensorSpec) -> dict:
    """A tensor as KServe's v2 metadata describes it (``BYTES`` for strings, -1 for the
    batch and other unknown dimensions)."""
    return {
        "name": name,
        "datatype": from_np_dtype(np.dtype(spec.dtype.as_numpy_dtype)),
        "shape": [-1 if d is None else d for d in spec.shape.as_list()],
    }
