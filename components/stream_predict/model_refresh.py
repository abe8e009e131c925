"""Serve the newest version in a model repository, and pick up new ones while streaming.

The policy is TF Serving's: the model repository (``<repository>/<model>/<version>/``, the
layout deploy publishes, components/common/model_repository.py) is polled, and the highest
version that holds a SavedModel serves. A worker checks again every ``refresh_seconds``
when a batch arrives; a newer version is loaded beside the current one, by one thread
while the others' batches go on with the current one, and swapped in between batches, so
no message waits for a restart or for a load, or is lost to one.

Each worker process loads a model once: Beam shares a loaded model across a process's
threads, but the Python DirectRunner's streaming engine creates its DoFns again for each
bundle, which reloaded the SavedModel (about a second) for every few messages; the loaded
models are kept per process here (``_PROCESS_MODELS``).

Why not Beam's ``WatchFilePattern`` side input: its ``MatchContinuously`` is a splittable
DoFn, which the Python DirectRunner cannot run in streaming mode ("was not replaced as
expected"), and a Pub/Sub side input never becomes ready there, so the pipeline could
not refresh on one machine. Polling in the handler behaves the same on every runner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult

from components.common import model_repository, serving
from components.common.model_handler import LoadedModel, SavedModelHandler, load_saved_model

_log = logging.getLogger(__name__)
_PROCESS_MODELS: dict[tuple, Any] = {}
_PROCESS_MODELS_LOCK = threading.Lock()


def _process_model(key: tuple, load: Any) -> Any:
    """The model ``load()`` returns, loaded once per process for ``key``."""
    with _PROCESS_MODELS_LOCK:
        if key not in _PROCESS_MODELS:
            _PROCESS_MODELS[key] = load()
        return _PROCESS_MODELS[key]


def load_version(model_dir: str) -> LoadedModel:
    """Loads one exported SavedModel and checks it against its own label file.

    Raises:
        ValueError: when its class count differs from its label count.
    """
    return load_saved_model(model_dir, len(serving.read_export_labels(model_dir)))


class NewestVersion:
    """The newest loadable version of one model in a repository, re-checked when due.

    ``current()`` is safe to call from the threads of a worker process; a version that
    fails to load is logged and counted, the current one keeps serving, and it is tried
    again at the next check (an upload may still be arriving).
    """

    def __init__(self, repository: str, model_name: str, refresh_seconds: float, namespace: str):
        self._repository = repository
        self._model_name = model_name
        self._refresh_seconds = refresh_seconds
        self._namespace = namespace
        self._lock = threading.Lock()  # guards the swap of (model, version)
        # Held by the one thread that checks and loads; the others keep serving meanwhile.
        self._refreshing = threading.Lock()
        self.version, path = model_repository.latest_version(repository, model_name)
        self._model = load_version(path)
        self._checked = time.monotonic()
        _log.info("%s: serving version %d of %s", namespace, self.version, model_name)

    def current(self) -> LoadedModel:
        """The model to run now: a newer version when one was published since last check.

        A newer version is loaded (seconds) by the first thread to find the check due,
        outside ``_lock``: batches go on with the current model until it is swapped in.
        """
        if self._due() and self._refreshing.acquire(blocking=False):
            try:
                if self._due():  # another thread may have just finished a check
                    self._refresh()
                    self._checked = time.monotonic()
            finally:
                self._refreshing.release()
        with self._lock:
            return self._model

    def _due(self) -> bool:
        return (
            self._refresh_seconds > 0 and time.monotonic() - self._checked >= self._refresh_seconds
        )

    def _refresh(self) -> None:
        try:
            version, path = model_repository.latest_version(self._repository, self._model_name)
        except FileNotFoundError as e:
            _log.warning("%s: %s; keeping version %d", self._namespace, e, self.version)
            return
        if version <= self.version:
            return
        try:
            model = load_version(path)
        # A broken or half-copied upload (gs:// has no atomic rename) must not stop the
        # stream; it is tried again at the next check.
        except Exception as e:
            Metrics.counter(self._namespace, "model_refresh_failures").inc()
            _log.error(
                "%s: version %d of %s cannot be loaded (yet), keeping version %d: %s",
                self._namespace,
                version,
                self._model_name,
                self.version,
                e,
            )
            return
        _log.info("%s: now serving version %d (was %d)", self._namespace, version, self.version)
        Metrics.counter(self._namespace, "model_refreshes").inc()
        with self._lock:
            self._model, self.version = model, version


class RepositoryModelHandler(SavedModelHandler):
    """``SavedModelHandler`` over the newest version of a model in a model repository."""

    def __init__(
        self,
        repository: str,
        model_name: str,
        batch_size: int = 32,
        refresh_seconds: float = 60,
        metrics_namespace: str = "inference",
    ):
        """Configures the handler.

        Args:
            repository: The model repository (local path or ``gs://``).
            model_name: The model's directory in it.
            batch_size: Most images per signature call; a batch never waits to fill
                (streaming: a message does not wait for others).
            refresh_seconds: How often a worker looks for a newer version (0: never).
            metrics_namespace: Namespace of the handler's Beam counters.
        """
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds must be >= 0, got {refresh_seconds}")
        super().__init__(
            model_repository.model_base(repository, model_name),
            batch_size,
            min_batch_size=1,
            metrics_namespace=metrics_namespace,
        )
        self._repository = repository
        self._model_name = model_name
        self._refresh_seconds = refresh_seconds

    def load_model(self) -> NewestVersion:  # type: ignore[override]
        """Loads the newest version (once per worker process)."""
        key = ("repository", self._repository, self._model_name, self._refresh_seconds)
        return _process_model(
            key,
            lambda: NewestVersion(
                self._repository, self._model_name, self._refresh_seconds, self._namespace
            ),
        )

    def run_inference(  # type: ignore[override]
        self,
        batch: Sequence[bytes],
        model: NewestVersion,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Runs the newest version on the batch (``model_id``: that version's directory)."""
        return super().run_inference(batch, model.current(), inference_args)


class FixedModelHandler(SavedModelHandler):
    """``SavedModelHandler`` over one SavedModel, loaded once per worker process."""

    def load_model(self) -> LoadedModel:
        """Loads the SavedModel (once per worker process)."""
        return _process_model(("fixed", self._model_dir), lambda: load_version(self._model_dir))


def keyed_repository_handler(
    repository: str,
    model_name: str,
    batch_size: int = 32,
    refresh_seconds: float = 60,
    metrics_namespace: str = "inference",
) -> KeyedModelHandler:
    """A ``RepositoryModelHandler`` over ``(key, image bytes)`` elements that keeps the keys."""
    return KeyedModelHandler(
        RepositoryModelHandler(
            repository,
            model_name,
            batch_size,
            refresh_seconds=refresh_seconds,
            metrics_namespace=metrics_namespace,
        )
    )


def keyed_fixed_handler(
    model_dir: str, batch_size: int = 32, metrics_namespace: str = "inference"
) -> KeyedModelHandler:
    """A ``FixedModelHandler`` over ``(key, image bytes)`` elements (no batch waits to fill)."""
    return KeyedModelHandler(
        FixedModelHandler(
            model_dir, batch_size, min_batch_size=1, metrics_namespace=metrics_namespace
        )
    )
