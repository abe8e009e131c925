"""The Pub/Sub emulator on loopback, for the streaming demo and tests.

``gcloud beta emulators pubsub start`` runs Google's emulator (Java). Clients reach it when
``PUBSUB_EMULATOR_HOST`` names it: google-cloud-pubsub, and through it Beam's
``ReadFromPubSub``/``WriteToPubSub``.

    with PubSubEmulator() as emulator:
        emulator.create_topic("images", subscription="images-sub")
        ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

DEFAULT_PROJECT = "local-project"
_START_TIMEOUT_S = 90


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topic_path(project: str, topic: str) -> str:
    """``projects/<project>/topics/<topic>``."""
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    """``projects/<project>/subscriptions/<subscription>``."""
    return f"projects/{project}/subscriptions/{subscription}"


class PubSubEmulator:
    """A Pub/Sub emulator process on ``127.0.0.1:<port>`` with its own data directory.

    While started, ``PUBSUB_EMULATOR_HOST`` names it in this process's environment (so
    child processes inherit it); ``stop`` restores the previous value and kills the
    emulator and its Java child.
    """

    def __init__(self, project: str = DEFAULT_PROJECT, port: int = 0):
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._data_dir = ""
        self._log = None
        self._previous_host: str | None = None

    def start(self) -> PubSubEmulator:
        """Starts the emulator and waits until it answers.

        Raises:
            RuntimeError: when gcloud is missing or the emulator does not start in time
                (its log is in the message).
        """
        gcloud = shutil.which("gcloud")
        if not gcloud:
            raise RuntimeError(
                "the Pub/Sub emulator needs the Google Cloud CLI: install it and "
                "`gcloud components install pubsub-emulator beta` (Java 11+ too)"
            )
        self._data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
        self._log = open(os.path.join(self._data_dir, "emulator.log"), "w+b")  # noqa: SIM115
        command = [gcloud, "beta", "emulators", "pubsub", "start"]
        command += [f"--host-port={self.host}", f"--data-dir={self._data_dir}"]
        command += [f"--project={self.project}", "--quiet"]
        # Its own process group: gcloud starts Java as a child, and stop() kills both.
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._previous_host = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        log = self.log_text()
        self.stop()
        raise RuntimeError(f"the Pub/Sub emulator did not start on {self.host}:\n{log[-3000:]}")

    def log_text(self) -> str:
        """What the emulator has logged so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stops the emulator (and its Java process) and restores the environment."""
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=15)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = ""
        if self._previous_host is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = self._previous_host

    def create_topic(self, topic: str, subscription: str = "") -> str:
        """Creates a topic (and a subscription to it, when named); returns the topic's path."""
        from google.cloud import pubsub_v1

        path = topic_path(self.project, topic)
        pubsub_v1.PublisherClient().create_topic(name=path)
        if subscription:
            pubsub_v1.SubscriberClient().create_subscription(
                name=subscription_path(self.project, subscription), topic=path
            )
        return path

    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
