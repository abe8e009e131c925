"""Streaming predictions end to end on this machine (``make demo-stream``, after ``make demo``).

Starts the Pub/Sub emulator and the stream_predict pipeline (DirectRunner) on the model
the demo deployed, publishes every test-split image (its bytes; every other one by URI)
and one message that is not an image, reads every prediction and dead letter back, prints
the end-to-end latency (publish to prediction received) and stops everything it started.
Exits non-zero unless each image got a prediction and the bad message a dead letter.

    python -m pipelines.stream_demo --work-dir work/demo [--rate 10] [--timeout-s 240]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from components.common import io, schema
from pipelines.pubsub_emulator import PubSubEmulator, subscription_path

WARM_UP_ID = "warm-up"
BAD_ID = "not-an-image"


class Inbox:
    """The messages a subscription receives (streaming pull), keyed by their ``id``."""

    def __init__(self, subscription: str):
        from google.cloud import pubsub_v1

        self.received: dict[str, tuple[float, bytes, dict[str, str]]] = {}
        self._changed = threading.Condition()
        self._client = pubsub_v1.SubscriberClient()
        self._future = self._client.subscribe(subscription, callback=self._on_message)

    def _on_message(self, message) -> None:
        message.ack()
        with self._changed:
            key = message.attributes.get("id", message.message_id)
            self.received[key] = (time.time(), message.data, dict(message.attributes))
            self._changed.notify_all()

    def wait_for(self, count: int, deadline: float) -> bool:
        """Waits until ``count`` messages arrived or the deadline (``time.time()``) passes."""
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._changed.wait(timeout=min(left, 1))
            return True

    def close(self) -> None:
        """Stops pulling."""
        self._future.cancel()
        self._client.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of the values, nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def test_images(work_dir: str) -> list[tuple[str, str]]:
    """``(uri, label)`` of the test split of the demo's dataset."""
    summary = io.read_json(os.path.join(work_dir, "summary.json"))
    dataset_dir = os.path.dirname(summary["errors_file"])
    return schema.read_manifest(schema.manifest_path(dataset_dir, "test"))


def run_demo(work_dir: str, rate: float, timeout_s: float, model_name: str) -> dict:
    """Runs the demo; returns its report (raises nothing for a shortfall: see ``ok``)."""
    repository = os.path.join(work_dir, "model_repository")
    images = test_images(work_dir)
    started = time.time()
    with PubSubEmulator() as emulator:
        images_topic = emulator.create_topic("images", subscription="images-sub")
        predictions_topic = emulator.create_topic("predictions", subscription="predictions-sub")
        dead_topic = emulator.create_topic("dead-letters", subscription="dead-letters-sub")
        command = [
            sys.executable, "-m", "components.stream_predict",
            "--input-subscription", subscription_path(emulator.project, "images-sub"),
            "--output-topic", predictions_topic,
            "--dead-letter-topic", dead_topic,
            "--model-repository", repository,
            "--model-name", model_name,
            "--max-run-seconds", str(timeout_s),
        ]  # fmt: skip
        log_path = os.path.join(work_dir, "stream_predict.log")
        with open(log_path, "wb") as log:
            pipeline = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        predictions = Inbox(subscription_path(emulator.project, "predictions-sub"))
        dead = Inbox(subscription_path(emulator.project, "dead-letters-sub"))
        try:
            from google.cloud import pubsub_v1

            publisher = pubsub_v1.PublisherClient()
            deadline = started + timeout_s
            publisher.publish(images_topic, _read(images[0][0]), id=WARM_UP_ID).result()
            if not predictions.wait_for(1, deadline):
                raise RuntimeError(f"no prediction for the warm-up message; see {log_path}")
            ready = time.time()
            sent: dict[str, float] = {}
            for i, (uri, label) in enumerate(images):
                key = f"test-{i}"
                sent[key] = time.time()
                if i % 2:
                    publisher.publish(images_topic, uri.encode(), id=key, true_label=label)
                else:
                    publisher.publish(images_topic, _read(uri), id=key, true_label=label)
                time.sleep(1 / rate)
            publisher.publish(images_topic, b"these bytes are not an image\xff", id=BAD_ID).result()
            complete = predictions.wait_for(len(images) + 1, deadline)
            dead.wait_for(1, deadline)
        finally:
            predictions.close()
            dead.close()
            pipeline.terminate()
            try:
                pipeline.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pipeline.kill()
    latencies = [
        predictions.received[key][0] - at for key, at in sent.items() if key in predictions.received
    ]
    correct = sum(
        json.loads(predictions.received[f"test-{i}"][1])["label"] == label
        for i, (_, label) in enumerate(images)
        if f"test-{i}" in predictions.received
    )
    dead_reasons = [attributes.get("error_reason") for _, _, attributes in dead.received.values()]
    return {
        "published": len(images),
        "predicted": len(latencies),
        "correct": correct,
        "dead_letters": len(dead.received),
        "dead_letter_reasons": dead_reasons,
        "latency_ms_p50": round(1000 * percentile(latencies, 50), 1) if latencies else None,
        "latency_ms_p99": round(1000 * percentile(latencies, 99), 1) if latencies else None,
        "rate_per_s": rate,
        "start_up_s": round(ready - started, 1),
        "seconds": round(time.time() - started, 1),
        "ok": complete and len(latencies) == len(images) and len(dead.received) == 1,
        "log": log_path,
    }


def _read(uri: str) -> bytes:
    return io.read_bytes(uri)


def main(argv: list[str] | None = None) -> int:
    """Runs the demo, prints its report; 0 when every message was answered."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.stream_demo", description=__doc__)
    parser.add_argument("--work-dir", default="work/demo", help="where `make demo` ran")
    parser.add_argument("--model-name", default="image-classifier")
    parser.add_argument("--rate", type=float, default=10, help="images published per second")
    parser.add_argument("--timeout-s", type=float, default=240, help="the whole demo's limit")
    args = parser.parse_args(argv)
    report = run_demo(args.work_dir, args.rate, args.timeout_s, args.model_name)
    print(json.dumps(report, indent=2))
    print(
        f"stream demo: {report['predicted']}/{report['published']} predicted "
        f"({report['correct']} correct), {report['dead_letters']} dead letter(s) "
        f"{report['dead_letter_reasons']}, latency p50 {report['latency_ms_p50']} ms, "
        f"p99 {report['latency_ms_p99']} ms at {report['rate_per_s']:g} images/s"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
