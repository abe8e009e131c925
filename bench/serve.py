"""Benchmark: the local model server under concurrent clients, batching off and on, and
by protocol (REST JSON, KServe v2 binary, v2 gRPC, TF Serving gRPC).

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

``--protocols`` runs each level once per protocol, against each configuration (every
client of a level speaks the same one): ``rest`` (TF Serving's REST row format, base64 in
JSON, the baseline), ``v2-binary`` (KServe v2 over HTTP with the binary tensor extension:
raw JPEG bytes in, binary outputs back, what ``tritonclient.http`` sends by default),
``v2-grpc`` (KServe v2 ``ModelInfer`` with raw input contents, what ``tritonclient.grpc``
sends) and ``tfs-grpc`` (TF Serving's ``PredictionService/Predict``). Each client holds one
connection (HTTP keep-alive, or a gRPC channel); each request body is built once. The
table's last column is throughput relative to ``rest`` at the same level and configuration.

The model is built here, like the tests' ``exported_model``: an untrained MobileNetV3Small
(``--backbone``, ``--image-size``; 96 px is what ``make demo`` trains), exported and
published to a temporary repository; with ``--task detection`` an untrained detector
instead (the default CenterNet-style head on the same backbone, at ``--image-size``,
exported with the Object Detection API's signatures, up to 100 detections an image); or pass
``--model-repository`` and ``--model-name``. The requests name the served signature's
input (``image_bytes``, a detector's ``inputs``), read from ``GET /v2/models/<name>``.

The model's own compute rate is measured in the same run, before the levels: its
``serving_default`` signature called in this process on batches of 1, 8 and
``--batch-max-size`` copies of the request image, for ``--compute-seconds`` each, with the
servers idle. Each level's images per second are also shown as a fraction of the best of
those rates ("vs compute"): how much of the model's own rate a server delivers to its
clients.
The request image is a generated ``--image-px`` square JPEG with noise, like the sample
data. Client and server share the machine: on few cores the client's own CPU time is part
of what is measured.

Usage::

    .venv/bin/python bench/serve.py                      # about 2 minutes
    .venv/bin/python bench/serve.py --seconds 20 --batch-timeout-ms 0,5
    .venv/bin/python bench/serve.py --no-off --protocols rest,v2-binary,v2-grpc,tfs-grpc
    .venv/bin/python bench/serve.py --model-repository work/demo/model_repository \\
        --model-name image-classifier
    .venv/bin/python bench/serve.py --task detection --no-off --concurrency 1,32
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


PROTOCOLS = ("rest", "v2-binary", "v2-grpc", "tfs-grpc")


@dataclasses.dataclass
class Level:
    """One load level against one server configuration, in one protocol."""

    config: str
    protocol: str
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


def build_detector(work: str, backbone: str, image_size: int) -> tuple[str, str]:
    """An untrained 4-class detector exported and published; (repository, model name).

    Untrained, its detections are arbitrary, but an image costs what a trained one's
    does: decoding, the network, the top candidates and their suppression, all in the
    exported graph (score threshold 0.05, the export's default).
    """
    from components.common import serving
    from components.deploy.model_repository import publish
    from components.detection import centernet, export
    from components.train.backbones import build_backbone
    from pipelines.sample_data import CLASSES

    model = centernet.build_detector(build_backbone(backbone, image_size, "none"), len(CLASSES))
    export_dir = os.path.join(work, "export")
    archive = export.build_archive(model, list(CLASSES), image_size, score_threshold=0.05)
    archive.write_out(export_dir, verbose=False)
    serving.write_export_labels(export_dir, list(CLASSES))
    repository = os.path.join(work, "repo")
    publish(export_dir, repository, "bench")
    return repository, "bench"


@dataclasses.dataclass
class Compute:
    """The model's own rate: its serving signature called directly, at one batch size."""

    batch: int
    calls: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.batch * self.calls / self.seconds

    @property
    def ms_per_call(self) -> float:
        return 1000.0 * self.seconds / self.calls


def measure_compute(model_dir: str, jpeg: bytes, batches: list[int], seconds: float) -> list:
    """The serving signature's rate on ``jpeg`` at each batch size, called in this
    process (after a warm-up call) for ``seconds`` each."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    _, specs = signature.structured_input_signature
    [input_name] = specs
    rates = []
    for batch in batches:
        images = tf.constant([jpeg] * batch)
        signature(**{input_name: images})
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            signature(**{input_name: images})
            calls += 1
        rates.append(Compute(batch, calls, time.perf_counter() - start))
    return rates


def served_input_name(port: int, model_name: str) -> str:
    """The served signature's input, from KServe's v2 model metadata."""
    connection = http.client.HTTPConnection(local.LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", f"/v2/models/{model_name}")
        [tensor] = json.loads(connection.getresponse().read())["inputs"]
    finally:
        connection.close()
    return tensor["name"]


def request_jpeg(px: int) -> bytes:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, px * px * 3).reshape(px, px, 3)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class HttpCaller:
    """One keep-alive connection that POSTs one prepared body; ``call`` returns the status."""

    def __init__(self, port: int, path: str, body: bytes, headers: dict[str, str]):
        self.port, self.path, self.body, self.headers = port, path, body, headers
        self.connection = http.client.HTTPConnection(
            local.LOOPBACK, port, timeout=REQUEST_TIMEOUT_S
        )

    def call(self) -> int | str:
        try:
            self.connection.request("POST", self.path, self.body, self.headers)
            response = self.connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException) as e:
            self.connection.close()
            return type(e).__name__

    def close(self) -> None:
        self.connection.close()


class GrpcCaller:
    """One channel that sends one prepared request to one unary method."""

    def __init__(self, target: str, method: str, request: bytes):
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
        self.call_method = self.channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        self.request = request

    def call(self) -> int | str:
        try:
            self.call_method(self.request, timeout=REQUEST_TIMEOUT_S)
        except self.grpc.RpcError as e:
            return e.code().name
        return 200

    def close(self) -> None:
        self.channel.close()


def v2_binary_body(
    jpeg: bytes, images: int, input_name: str = "image_bytes"
) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request with the binary tensor extension, both ways."""
    tensor = b"".join(len(jpeg).to_bytes(4, "little") + jpeg for _ in range(images))
    header = {
        "inputs": [
            {
                "name": input_name,
                "datatype": "BYTES",
                "shape": [images],
                "parameters": {"binary_data_size": len(tensor)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    encoded = json.dumps(header).encode("utf-8")
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(encoded)),
    }
    return encoded + tensor, headers


def v2_grpc_request(
    model_name: str, jpeg: bytes, images: int, input_name: str = "image_bytes"
) -> bytes:
    """A serialized KServe v2 ModelInferRequest with raw input contents (Triton's protos,
    which a client imports; the server's are KServe's, the same messages)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model_name)
    request.inputs.add(name=input_name, datatype="BYTES", shape=[images])  # data: raw
    request.raw_input_contents.append(
        b"".join(len(jpeg).to_bytes(4, "little") + jpeg for _ in range(images))
    )
    return request.SerializeToString()


def tfs_grpc_request(
    model_name: str, jpeg: bytes, images: int, input_name: str = "image_bytes"
) -> bytes:
    """A serialized TF Serving PredictRequest."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs[input_name].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=images)]
            ),
            string_val=[jpeg] * images,
        )
    )
    return request.SerializeToString()


def caller_factory(
    protocol: str,
    port: int,
    grpc_port: int,
    model_name: str,
    jpeg: bytes,
    images: int,
    input_name: str = "image_bytes",
):
    """A function that opens one client connection of ``protocol``, whose requests name
    the signature's input ``input_name``."""
    if protocol == "rest":
        body = request_body(jpeg, images)
        path = f"/v1/models/{model_name}:predict"
        return lambda: HttpCaller(port, path, body, {"Content-Type": "application/json"})
    if protocol == "v2-binary":
        body, headers = v2_binary_body(jpeg, images, input_name)
        path = f"/v2/models/{model_name}/infer"
        return lambda: HttpCaller(port, path, body, headers)
    target = f"{local.LOOPBACK}:{grpc_port}"
    if protocol == "v2-grpc":
        request = v2_grpc_request(model_name, jpeg, images, input_name)
        return lambda: GrpcCaller(target, "/inference.GRPCInferenceService/ModelInfer", request)
    if protocol == "tfs-grpc":
        request = tfs_grpc_request(model_name, jpeg, images, input_name)
        return lambda: GrpcCaller(target, "/tensorflow.serving.PredictionService/Predict", request)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def request_body(jpeg: bytes, images: int) -> bytes:
    b64 = base64.b64encode(jpeg).decode("ascii")
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


def client(open_caller, deadline: float, latencies, errors, lock):
    caller = open_caller()
    mine, my_errors = [], Counter()
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            status = caller.call()
            if status == 200:
                mine.append((time.perf_counter() - start) * 1000.0)
            else:
                my_errors[status] += 1
    finally:
        caller.close()
        with lock:
            latencies.extend(mine)
            errors.update(my_errors)


def run_level(
    config: str,
    protocol: str,
    port: int,
    open_caller,
    images: int,
    clients: int,
    seconds: float,
) -> Level:
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    before = model_calls(port)
    start = time.perf_counter()
    threads = [
        threading.Thread(
            target=client,
            args=(open_caller, start + seconds, latencies, errors, lock),
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
    return Level(config, protocol, clients, elapsed, latencies, errors, images, per_call)


def start_server(
    config: str,
    server_args: list[str],
    repository: str,
    model_name: str,
    max_clients: int,
    log_dir: str,
) -> tuple[subprocess.Popen, int, int, str]:
    """Starts one server configuration on free ports; (process, port, gRPC port, log)."""
    port, grpc_port = local.free_port(), local.free_port()
    command = local.server_command(repository, model_name, port, grpc_port=grpc_port)
    command += server_args
    command += ["--max-inflight", str(2 * max_clients)]  # no refusals: measure latency
    print(f"[{config}] {shlex.join(command[1:])}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    log_path = os.path.join(log_dir, f"server-{len(os.listdir(log_dir))}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return process, port, grpc_port, log_path


def measure(
    configs: list[tuple[str, list[str]]],
    protocols: list[str],
    repository: str,
    model_name: str,
    jpeg: bytes,
    images: int,
    levels: list[int],
    seconds: float,
    log_dir: str,
    compute_batches: list[int] = (),
    compute_seconds: float = 0.0,
) -> tuple[list[Level], list[Compute]]:
    """Runs every configuration's server at once, idle but for the one under load, and
    the levels in turn, each level against every configuration and protocol before the
    next level: the load of a shared machine drifts, and this spreads the drift over all
    of them. Before the levels, with every server ready and idle, the model's own rate
    at ``compute_batches`` (``measure_compute``)."""
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
        callers = {}
        for config, process, port, grpc_port, log_path in servers:
            local.wait_until_ready(process, model_name, port, 300, log_path)
            input_name = served_input_name(port, model_name)
            for protocol in protocols:
                callers[config, protocol] = caller_factory(
                    protocol, port, grpc_port, model_name, jpeg, images, input_name
                )
                # Warm-up: the first calls, then a burst.
                open_caller = callers[config, protocol]
                run_level(config, protocol, port, open_caller, images, 1, 1.0)
                run_level(config, protocol, port, open_caller, images, max(levels), 1.0)
        from components.common.model_repository import latest_version

        model_dir = latest_version(repository, model_name)[1]
        compute = measure_compute(model_dir, jpeg, list(compute_batches), compute_seconds)
        for rate in compute:
            print(
                f"[compute] batch {rate.batch}: {rate.images_per_s:.1f} images/s "
                f"({rate.ms_per_call:.1f} ms a call, {rate.calls} calls)",
                flush=True,
            )
        results = []
        for clients in levels:
            for config, _, port, _, _ in servers:
                for protocol in protocols:
                    level = run_level(
                        config, protocol, port, callers[config, protocol], images, clients, seconds
                    )
                    print(f"[{config}, {protocol}] {row(level)}", flush=True)
                    results.append(level)
        order = [c for c, _ in configs]
        return sorted(
            results, key=lambda lv: (order.index(lv.config), protocols.index(lv.protocol))
        ), compute
    finally:
        for _, process, _, _, _ in servers:
            local.stop_server(process)


def row(level: Level, baseline: Level | None = None, compute: Compute | None = None) -> str:
    """A level as a Markdown table row; ratios to the REST ``baseline`` and the model's
    batched ``compute`` rate where given."""
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(level.errors.items(), key=str)) or "0"
    per_call = "-" if level.images_per_call is None else f"{level.images_per_call:.1f}"
    ratio = (
        f"{level.requests_per_s / baseline.requests_per_s:.2f}"
        if baseline is not None and baseline.requests_per_s
        else "-"
    )
    of_compute = f"{level.images_per_s / compute.images_per_s:.2f}" if compute else "-"
    return (
        f"| {level.config} | {level.protocol} | {level.clients} | {level.ok} | {errors} | "
        f"{level.percentile(50):.1f} | {level.percentile(99):.1f} | "
        f"{level.requests_per_s:.1f} | {level.images_per_s:.1f} | {per_call} | {ratio} | "
        f"{of_compute} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", help="serve this repository's model")
    parser.add_argument("--model-name", help="the model's name in --model-repository")
    parser.add_argument(
        "--task",
        choices=("classification", "detection"),
        default="classification",
        help="the model to build: a classifier or a detector (default: %(default)s)",
    )
    parser.add_argument("--backbone", default="MobileNetV3Small", help="model to build")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="model input size (px; default: 96 for a classifier, 192 for a detector, "
        "the train stages' defaults)",
    )
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
    parser.add_argument(
        "--compute-seconds",
        type=float,
        default=8.0,
        help="how long the model's own rate is measured at each batch size",
    )
    parser.add_argument(
        "--protocols",
        default="rest",
        help=f"comma-separated, of {', '.join(PROTOCOLS)}; rest is the ratio's baseline",
    )
    args = parser.parse_args(argv)
    protocols = args.protocols.split(",")
    if not set(protocols) <= set(PROTOCOLS):
        parser.error(f"--protocols: expected some of {', '.join(PROTOCOLS)}")
    if bool(args.model_repository) != bool(args.model_name):
        parser.error("--model-repository and --model-name go together")
    levels = [int(v) for v in args.concurrency.split(",")]
    if args.image_size is None:
        args.image_size = 192 if args.task == "detection" else 96
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
        elif args.task == "detection":
            repository, model_name = build_detector(work, args.backbone, args.image_size)
            print(
                f"model: untrained detector on {args.backbone} at {args.image_size} px, "
                "4 classes, up to 100 detections an image"
            )
        else:
            repository, model_name = build_model(work, args.backbone, args.image_size)
            print(f"model: untrained {args.backbone} at {args.image_size} px, 4 classes")
        jpeg = request_jpeg(args.image_px)
        body = request_body(jpeg, args.images_per_request)
        print(
            f"request: {args.images_per_request} x {args.image_px} px JPEG ({len(jpeg)} bytes), "
            f"{len(body)} bytes as REST JSON; {args.seconds:g} s per level"
        )
        results, compute = measure(
            configs,
            protocols,
            repository,
            model_name,
            jpeg,
            args.images_per_request,
            levels,
            args.seconds,
            work,
            compute_batches=sorted({1, 8, args.batch_max_size}),
            compute_seconds=args.compute_seconds,
        )
    print(f"load average at the end: {load_average()}\n")
    print("| model compute | batch | calls | ms/call | images/s |")
    print("|---|---|---|---|---|")
    for rate in compute:
        print(
            f"| signature in-process | {rate.batch} | {rate.calls} | {rate.ms_per_call:.1f} | "
            f"{rate.images_per_s:.1f} |"
        )
    print()
    print(
        "| batching | protocol | clients | requests | errors | p50 ms | p99 ms | req/s | "
        "images/s | images/call | req/s vs rest | images/s vs compute |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    baselines = {(lv.config, lv.clients): lv for lv in results if lv.protocol == "rest"}
    batched = max(compute, key=lambda rate: rate.images_per_s)
    for level in results:
        print(row(level, baselines.get((level.config, level.clients)), batched))


if __name__ == "__main__":
    main()
