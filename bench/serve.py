"""Benchmark: the local model server under concurrent clients, batching off and on.

Starts ``python -m components.deploy.server`` on free loopback ports, one per server
configuration (batching off: ``--batch-max-size 0``; batching on: ``--batch-max-size N``
with each ``--batch-timeout-ms`` value), all at once, and loads them in turn with 1, 8
and 32 concurrent clients for ``--seconds`` each (each level against every configuration
before the next level, so that a shared machine's drifting load spreads over all). Every client is a thread with its own keep-alive connection that
sends the same TF Serving row-format request (``{"instances": [{"b64": ...}]}``) again
and again until the time is up. Per level it prints successful requests, errors (by HTTP
status), p50 and p99 latency (client side, send to last byte), throughput in requests and
images per second, and the mean number of images per signature call (from the server's
``/metrics``: how much batching happened).

The model is built here, like the tests' ``exported_model``: an untrained MobileNetV3Small
(``--backbone``, ``--image-size``; 96 px is what ``make demo`` trains), exported and
published to a temporary repository; or pass ``--model-repository`` and ``--model-name``.
The request image is a generated ``--image-px`` square JPEG with noise, like the sample
data. Client and server share the machine: on few cores the client's own CPU time is part
of what is measured.

Usage::

    .venv/bin/python bench/serve.py                      # about 2 minutes
    .venv/bin/python bench/serve.py --seconds 20 --batch-timeout-ms 0,5
    .venv/bin/python bench/serve.py --model-repository work/demo/model_repository \\
        --model-name image-classifier
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import base64  # noqa: E402
import dataclasses  # noqa: E402
import http.client  # noqa: E402
import io as bytes_io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from machine import cpu_model, load_average, usable_cpus  # noqa: E402  (bench/machine.py)
from PIL import Image  # noqa: E402

from components.deploy import local  # noqa: E402

REQUEST_TIMEOUT_S = 120.0


@dataclasses.dataclass
class Level:
    """One load level against one server configuration."""

    config: str
    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: Counter
    images_per_request: int
    images_per_call: float | None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request


def versions() -> str:
    from importlib import metadata

    installed = {
        dist.metadata["Name"].lower().replace("_", "-"): dist.version
        for dist in metadata.distributions()
    }
    names = ("tensorflow", "tensorflow-cpu", "kserve", "uvicorn", "fastapi")
    return ", ".join(f"{name} {installed[name]}" for name in names if name in installed)


def build_model(work: str, backbone: str, image_size: int) -> tuple[str, str]:
    """An untrained 4-class classifier exported and published; (repository, model name)."""
    from components.deploy.model_repository import publish
    from components.export.saved_model import export_saved_model
    from components.train.backbones import build_classifier
    from components.train.training import save_model_dir
    from pipelines.sample_data import CLASSES

    model, _ = build_classifier(backbone, len(CLASSES), image_size, weights="none")
    config = {"backbone": backbone, "image_size": image_size}
    save_model_dir(model, os.path.join(work, "model"), list(CLASSES), config)
    export_saved_model(os.path.join(work, "model"), os.path.join(work, "export"))
    repository = os.path.join(work, "repo")
    publish(os.path.join(work, "export"), repository, "bench")
    return repository, "bench"


def request_body(images: int, px: int) -> bytes:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, px * px * 3).reshape(px, px, 3)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    b64 = base64.b64encode(buffer.getvalue()).decode("ascii")
    return json.dumps({"instances": [{"b64": b64}] * images}).encode("utf-8")


def model_calls(port: int) -> tuple[float, float]:
    """(images, calls) of the serving signature so far, from the server's /metrics."""
    connection = http.client.HTTPConnection(local.LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode("utf-8")
    finally:
        connection.close()
    values = {}
    for line in text.splitlines():
        if line.startswith("image_classifier_model_call_images_"):
            name, value = line.split()
            values[name] = float(value)
    return (
        values.get("image_classifier_model_call_images_sum", 0.0),
        values.get("image_classifier_model_call_images_count", 0.0),
    )


def client(port: int, path: str, body: bytes, deadline: float, latencies, errors, lock):
    connection = http.client.HTTPConnection(local.LOOPBACK, port, timeout=REQUEST_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    mine, my_errors = [], Counter()
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                my_errors[type(e).__name__] += 1
                connection.close()
                continue
            if status == 200:
                mine.append((time.perf_counter() - start) * 1000.0)
            else:
                my_errors[status] += 1
    finally:
        connection.close()
        with lock:
            latencies.extend(mine)
            errors.update(my_errors)


def run_level(
    config: str, port: int, path: str, body: bytes, images: int, clients: int, seconds: float
) -> Level:
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    before = model_calls(port)
    start = time.perf_counter()
    threads = [
        threading.Thread(
            target=client,
            args=(port, path, body, start + seconds, latencies, errors, lock),
            daemon=True,
        )
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    after = model_calls(port)
    calls = after[1] - before[1]
    per_call = (after[0] - before[0]) / calls if calls else None
    return Level(config, clients, elapsed, latencies, errors, images, per_call)


def start_server(
    config: str,
    server_args: list[str],
    repository: str,
    model_name: str,
    max_clients: int,
    log_dir: str,
) -> tuple[subprocess.Popen, int, str]:
    """Starts one server configuration on a free port; (process, port, log path)."""
    port = local.free_port()
    command = local.server_command(repository, model_name, port) + server_args
    command += ["--max-inflight", str(2 * max_clients)]  # no refusals: measure latency
    print(f"[{config}] {shlex.join(command[1:])}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    log_path = os.path.join(log_dir, f"server-{len(os.listdir(log_dir))}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return process, port, log_path


def measure(
    configs: list[tuple[str, list[str]]],
    repository: str,
    model_name: str,
    body: bytes,
    images: int,
    levels: list[int],
    seconds: float,
    log_dir: str,
) -> list[Level]:
    """Runs every configuration's server at once, idle but for the one under load, and
    the levels in turn, each level against every configuration before the next level:
    the load of a shared machine drifts, and this spreads the drift over all of them."""
    servers = []
    try:
        for config, server_args in configs:
            servers.append(
                (
                    config,
                    *start_server(
                        config, server_args, repository, model_name, max(levels), log_dir
                    ),
                )
            )
        path = f"/v1/models/{model_name}:predict"
        for config, process, port, log_path in servers:
            local.wait_until_ready(process, model_name, port, 300, log_path)
            run_level(config, port, path, body, images, 1, 1.0)  # warm-up: first calls
            run_level(config, port, path, body, images, max(levels), 1.0)
        results = []
        for clients in levels:
            for config, _, port, _ in servers:
                level = run_level(config, port, path, body, images, clients, seconds)
                print(f"[{config}] {row(level)}", flush=True)
                results.append(level)
        return sorted(results, key=lambda level: [c for c, _ in configs].index(level.config))
    finally:
        for _, process, _, _ in servers:
            local.stop_server(process)


def row(level: Level) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(level.errors.items(), key=str)) or "0"
    per_call = "-" if level.images_per_call is None else f"{level.images_per_call:.1f}"
    return (
        f"| {level.config} | {level.clients} | {level.ok} | {errors} | "
        f"{level.percentile(50):.1f} | {level.percentile(99):.1f} | "
        f"{level.requests_per_s:.1f} | {level.images_per_s:.1f} | {per_call} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", help="serve this repository's model")
    parser.add_argument("--model-name", help="the model's name in --model-repository")
    parser.add_argument("--backbone", default="MobileNetV3Small", help="model to build")
    parser.add_argument("--image-size", type=int, default=96, help="model input size (px)")
    parser.add_argument("--image-px", type=int, default=224, help="request JPEG size (px)")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each level")
    parser.add_argument("--batch-max-size", type=int, default=32, help="for batching on")
    parser.add_argument(
        "--batch-timeout-ms",
        default="0",
        help="batching-on configurations to run, one per value (comma-separated)",
    )
    parser.add_argument("--no-off", action="store_true", help="skip the batching-off run")
    args = parser.parse_args(argv)
    if bool(args.model_repository) != bool(args.model_name):
        parser.error("--model-repository and --model-name go together")
    levels = [int(v) for v in args.concurrency.split(",")]
    configs = [] if args.no_off else [("off", ["--batch-max-size", "0"])]
    for timeout in args.batch_timeout_ms.split(","):
        configs.append(
            (
                f"on, {timeout} ms",
                ["--batch-max-size", str(args.batch_max_size), "--batch-timeout-ms", timeout],
            )
        )

    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({usable_cpus()} usable), "
        f"load average {load_average()} at the start"
    )
    print(f"software: {platform.platform()}, python {platform.python_version()}, {versions()}")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        if args.model_repository:
            repository, model_name = args.model_repository, args.model_name
            print(f"model: {model_name} in {repository}")
        else:
            repository, model_name = build_model(work, args.backbone, args.image_size)
            print(f"model: untrained {args.backbone} at {args.image_size} px, 4 classes")
        body = request_body(args.images_per_request, args.image_px)
        print(
            f"request: {args.images_per_request} x {args.image_px} px JPEG, "
            f"{len(body)} bytes of JSON; {args.seconds:g} s per level"
        )
        results = measure(
            configs,
            repository,
            model_name,
            body,
            args.images_per_request,
            levels,
            args.seconds,
            work,
        )
    print(f"load average at the end: {load_average()}\n")
    print(
        "| batching | clients | requests | errors | p50 ms | p99 ms | req/s | images/s | "
        "images/call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for level in results:
        print(row(level))


if __name__ == "__main__":
    main()
