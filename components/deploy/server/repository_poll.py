"""The model repository's poll: versions published while the server runs are served,
versions removed are not, as TF Serving does with ``--file_system_poll_wait_seconds``.

Every ``--file-system-poll-wait-seconds`` (``ServerLimits.file_system_poll_wait_seconds``;
0: no poll) ``RepositoryPoll`` lists the versions that hold a SavedModel. A new one loads
in a thread, the event loop serving meanwhile, and is served once loaded: the latest (and
``stable``, unless given) moves to it. One that fails to load is logged and not served;
it is tried again when its files change (on gs://, where a published version appears
object by object, a load can start before the last file arrives). A version gone from the
repository is no longer served, once the new ones are loaded; the last one served stays
while the repository holds none that loads (an empty listing changes nothing).
"""

from __future__ import annotations

import asyncio
import logging

import tensorflow as tf

from components.common import io, model_repository
from components.deploy.server.model import ImageModel, ServedVersion

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int], ...]


def fingerprint(directory: str) -> Fingerprint:
    """Every file under ``directory`` (local or gs://) with its size: what tells whether
    a version's files changed since it failed to load."""
    files = []
    for parent, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = io.join(parent, name)
            files.append((path, tf.io.gfile.stat(path).length))
    return tuple(sorted(files))


def repository_versions(model: ImageModel) -> dict[int, str]:
    """The versions of ``model`` that its repository holds now (with a SavedModel), and
    their directories; empty when it holds none."""
    try:
        return model_repository.saved_model_versions(model.repository, model.name)
    except FileNotFoundError:
        return {}


class RepositoryPoll:
    """Keeps the versions ``model`` serves in step with its repository (``refresh``, or
    ``run`` every few seconds). ``failed`` holds the versions that did not load, each with
    its files' fingerprint when it was tried."""

    def __init__(self, model: ImageModel):
        if not model.follows_repository:
            raise ValueError(
                f"model {model.name!r} serves one version, not its repository's every version"
            )
        self.model = model
        self.failed: dict[int, Fingerprint] = {}

    async def run(self, wait_s: float) -> None:
        """Refreshes every ``wait_s`` seconds until cancelled; a poll that fails (a
        repository out of reach) is logged and the next one tries again."""
        while True:
            await asyncio.sleep(wait_s)
            try:
                await self.refresh()
            except Exception as e:
                log.warning("polling the model repository %s failed: %s", self.model.repository, e)

    async def refresh(self) -> None:
        """Loads the versions new in the repository, then stops serving those gone."""
        model, loop = self.model, asyncio.get_running_loop()
        found = await loop.run_in_executor(None, repository_versions, model)
        if not found:
            log.warning(
                "the model repository %s holds no version of %r: still serving %s",
                model.repository,
                model.name,
                sorted(model.versions),
            )
            return
        self.failed = {n: files for n, files in self.failed.items() if n in found}
        for number in sorted(set(found) - set(model.versions)):
            await self._load(number, found[number])
        for number in sorted(set(model.versions) - set(found)):
            if len(model.versions) == 1:
                log.warning(
                    "version %s of %r left the repository, but no version there loads: "
                    "still serving it",
                    number,
                    model.name,
                )
                break
            model.remove_version(number)
            log.info("version %s of %r left the repository: no longer served", number, model.name)

    async def _load(self, number: int, directory: str) -> None:
        loop = asyncio.get_running_loop()
        # Taken before the load: files that change during a failed load are tried again.
        files = await loop.run_in_executor(None, fingerprint, directory)
        if self.failed.get(number) == files:
            return
        served = ServedVersion(number, directory)
        try:
            await loop.run_in_executor(None, self.model.load_version, served)
        except Exception as e:
            self.failed[number] = files
            log.error(
                "version %s of %r (%s) failed to load, not served (tried again when its "
                "files change): %s",
                number,
                self.model.name,
                directory,
                e,
            )
            return
        self.failed.pop(number, None)
        self.model.add_version(served)
        log.info(
            "serving version %s of %r; the latest is %s",
            number,
            self.model.name,
            self.model.version,
        )
