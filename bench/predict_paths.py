"""Benchmark: batch prediction images per second along five paths, on the same images and
the same exported model, in one run; a classifier's (the default) or, with ``--task
detection``, a detector's.

    a  beam-in-worker   batch_predict's Beam pipeline with the SavedModel loaded in the
                        workers (the default path): listing -> read -> RunInference -> JSON
                        Lines, batches of ``--batch-size``
    b  plain-loop       no Beam: ``tf.saved_model.load`` and the ``serving_default``
                        signature on batches of ``--batch-size`` encoded files read here
                        (the model.predict-style loop people write first; its outputs
                        left as arrays, no per-image record)
    c  rest-per-image   no Beam: one ``requests.post`` per image to the local model server,
                        TF Serving's REST body, a new connection each (the book's loop)
    d  beam-remote      batch_predict with ``endpoint=`` the local server: one request per
                        batch of ``--batch-size`` images (``remote_handler``)
    e  beam-remote-1    the same with batch size 1: one request per image, through Beam

Every path starts from the listing of image files and ends with each image's class
probabilities (a detector's outputs); the Beam paths (a, d, e) also write their JSON
Lines, errors and stats (a detector's lines: its detections, boxes in pixels too, which
reads each image's header). Each
path's time is wall clock from its start to its last prediction, what a user waits for:
Beam's pipeline start-up and (a, b) the model's load are inside it (printed apart for b).
The server (c, d, e) is started once before any path and is not timed; it and the client
share the machine's cores. TensorFlow and Beam are imported before the first path.
``--repeats`` runs every path that many times, in turn, and keeps each one's best time.
Then, in the same run, streaming latency (``--stream-rates``): ``make demo-stream``'s
measurement (``pipelines.stream_demo``) at each rate.

The model is ``make demo``'s (the latest version in ``work/demo/model_repository``,
MobileNetV3Small at 96 px) unless ``--model-dir`` names an export; the images are the
sample set (``work/sample/images.csv``, 400 generated JPEGs, each listed ``--copies`` times:
1,600 predictions by default) unless ``--listing`` names a ``uri[,label]`` file. With
``--task detection``: ``make demo-detection``'s detector (``work/detection/run``) and its
400 generated pictures (``work/detection/sample/voc/JPEGImages``); no streaming run.

Usage::

    .venv/bin/python bench/predict_paths.py                 # about 2-3 minutes
    .venv/bin/python bench/predict_paths.py --count 200 --batch-size 16 --repeats 1
    .venv/bin/python bench/predict_paths.py --model-dir EXPORT --listing images.csv
    .venv/bin/python bench/predict_paths.py --task detection --count 200 --copies 1
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import base64  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import cpu_model, load_average, usable_cpus  # noqa: E402  (bench/machine.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(ROOT, "work", "demo")
SERVED_NAME_OF_DEMO = "image-classifier"  # The model name `make demo` deploys under.
SAMPLE_LISTING = os.path.join(ROOT, "work", "sample", "images.csv")
# `make demo-detection`'s run: its model repository and its pictures.
DETECTION_DEMO_DIR = os.path.join(ROOT, "work", "detection", "run")
SERVED_NAME_OF_DETECTION_DEMO = "object-detector"
DETECTION_IMAGES = os.path.join(ROOT, "work", "detection", "sample", "voc", "JPEGImages")
SERVED_NAME = "bench-model"
RUNNER = "FnApiRunner"  # Beam's in-process runner (DirectRunner's fallback, no Prism)
PATHS = ("a", "b", "c", "d", "e")
NAMES = {
    "a": "beam-in-worker",
    "b": "plain-loop",
    "c": "rest-per-image",
    "d": "beam-remote",
    "e": "beam-remote-1",
}


def default_model_dir(demo_dir: str, name: str = SERVED_NAME_OF_DEMO) -> str:
    """The newest version of ``name`` a demo deployed in ``demo_dir``'s model repository."""
    from components.common import model_repository

    repository = os.path.join(demo_dir, "model_repository")
    try:
        return model_repository.latest_version(repository, name)[1]
    except FileNotFoundError:
        sys.exit(f"no demo model in {repository}: run its demo first, or pass --model-dir")


def read_listing(path: str, count: int) -> list[str]:
    """The listing's image URIs (the first ``count``; 0: all); a folder: its JPEGs."""
    from components.common.schema import read_manifest

    if os.path.isdir(path):
        uris = sorted(glob.glob(os.path.join(path, "*.jpg")))
    else:
        uris = [uri for uri, _ in read_manifest(path)]
    if count:
        uris = uris[:count]
    if not uris:
        sys.exit(f"no image in {path}")
    return uris


def read_files(uris: list[str]) -> list[bytes]:
    images = []
    for uri in uris:
        with open(uri, "rb") as f:
            images.append(f.read())
    return images


# --------------------------------------------------------------------------- paths


def beam_path(
    listing: str,
    model_dir: str,
    out: str,
    batch_size: int,
    endpoint: str = "",
) -> Callable[[], dict]:
    def run() -> dict:
        from components.batch_predict import beam_pipeline

        summary = beam_pipeline.run(
            model_dir,
            out,
            input_uris=listing,
            batch_size=batch_size,
            runner=RUNNER,
            endpoint=endpoint,
            max_error_fraction=0.0,
        )
        return {
            "predicted": summary["rows"],
            "requests": summary["counters"].get("remote_requests"),
        }

    return run


def plain_loop(uris: list[str], model_dir: str, batch_size: int) -> Callable[[], dict]:
    def run() -> dict:
        import tensorflow as tf

        from components.common import serving

        start = time.perf_counter()
        loaded = tf.saved_model.load(model_dir)
        signature = loaded.signatures[serving.SIGNATURE]
        # A classifier's "image_bytes", a detector's "inputs": the signature's one input.
        (input_name,) = signature.structured_input_signature[1]
        load_s = time.perf_counter() - start
        predicted = 0
        for i in range(0, len(uris), batch_size):
            images = read_files(uris[i : i + batch_size])
            outputs = signature(**{input_name: tf.constant(images, tf.string)})
            predicted += int(next(iter(outputs.values())).shape[0])
        return {"predicted": predicted, "load_s": round(load_s, 2)}

    return run


def rest_per_image(uris: list[str], predict_url: str) -> Callable[[], dict]:
    def run() -> dict:
        import requests

        predicted = 0
        for uri in uris:
            with open(uri, "rb") as f:
                b64 = base64.b64encode(f.read()).decode("ascii")
            response = requests.post(predict_url, json={"instances": [{"b64": b64}]}, timeout=60)
            response.raise_for_status()
            predicted += len(response.json()["predictions"])
        return {"predicted": predicted, "requests": len(uris)}

    return run


# --------------------------------------------------------------------------- server


def start_server(model_dir: str, log_path: str) -> tuple[subprocess.Popen, int]:
    from components.deploy import local

    port = local.free_port()
    command = [
        sys.executable, "-m", "components.deploy.server", "--model-dir", model_dir,
        "--model-name", SERVED_NAME, "--http-port", str(port), "--grpc-port", "0",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
    local.wait_until_ready(process, SERVED_NAME, port, 180.0, log_path)
    return process, port


def versions() -> str:
    from importlib.metadata import version

    names = ("tensorflow-cpu", "apache-beam", "kserve", "requests")
    return ", ".join(f"{name} {version(name)}" for name in names)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task",
        choices=("classification", "detection"),
        default="classification",
        help="whose demo model and images are the defaults",
    )
    parser.add_argument("--model-dir", default="", help="exported SavedModel (default: demo)")
    parser.add_argument(
        "--listing",
        default="",
        help="uri[,label] file of images, or a folder of JPEGs (default: the task's sample)",
    )
    parser.add_argument("--count", type=int, default=0, help="first N images (0: all)")
    parser.add_argument(
        "--copies", type=int, default=4, help="list each image this many times (more work)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per call/request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path (best kept)")
    parser.add_argument("--paths", default=",".join(PATHS), help="which of a,b,c,d,e")
    parser.add_argument(
        "--stream-rates",
        default=None,
        help="streaming latency at these images/s (make demo-stream's run; needs `make "
        "demo` and gcloud's Pub/Sub emulator; empty: skip; default: 10,40 for a "
        "classifier, none for a detector)",
    )
    parser.add_argument("--demo-dir", default=DEMO_DIR, help="where `make demo` ran")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    detection = args.task == "detection"
    if detection:
        default_model = default_model_dir(DETECTION_DEMO_DIR, SERVED_NAME_OF_DETECTION_DEMO)
    else:
        default_model = default_model_dir(args.demo_dir)
    model_dir = os.path.abspath(args.model_dir or default_model)
    listing_in = args.listing or (DETECTION_IMAGES if detection else SAMPLE_LISTING)
    uris = read_listing(listing_in, args.count) * args.copies
    stream_rates = args.stream_rates
    if stream_rates is None:
        stream_rates = "" if detection else "10,40"
    elif stream_rates and detection:
        sys.exit("--stream-rates: the streaming run is make demo-stream's classifier")
    paths = [p for p in args.paths.split(",") if p]
    if set(paths) - set(PATHS) or "a" not in paths:
        sys.exit(f"--paths: a subset of {','.join(PATHS)} that includes a (the baseline)")

    import apache_beam  # noqa: F401  (imported before any path is timed)
    import tensorflow  # noqa: F401

    work = tempfile.mkdtemp(prefix="predict_paths-")
    listing = os.path.join(work, "listing.txt")
    with open(listing, "w") as f:
        f.write("".join(f"{uri}\n" for uri in uris))
    process, port = start_server(model_dir, os.path.join(work, "server.log"))
    model_url = f"http://127.0.0.1:{port}/v1/models/{SERVED_NAME}"
    runs = {
        "a": beam_path(listing, model_dir, os.path.join(work, "a"), args.batch_size),
        "b": plain_loop(uris, model_dir, args.batch_size),
        "c": rest_per_image(uris, model_url + ":predict"),
        "d": beam_path(listing, model_dir, os.path.join(work, "d"), args.batch_size, model_url),
        "e": beam_path(listing, model_dir, os.path.join(work, "e"), 1, model_url),
    }
    best: dict[str, dict] = {}
    print(
        f"{len(uris)} images, batch size {args.batch_size}, {args.task} model {model_dir}\n"
        f"machine: {cpu_model()}, {usable_cpus()} usable CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, {versions()}; load {load_average()} at start",
        flush=True,
    )
    try:
        for repeat in range(args.repeats):
            for path in paths:
                start = time.perf_counter()
                info = runs[path]()
                seconds = time.perf_counter() - start
                if info["predicted"] != len(uris):
                    raise RuntimeError(f"path {path} predicted {info['predicted']} of {len(uris)}")
                print(f"  repeat {repeat + 1} {path} {NAMES[path]}: {seconds:.2f} s {info}",
                      flush=True)  # fmt: skip
                if path not in best or seconds < best[path]["seconds"]:
                    best[path] = {"seconds": seconds, **info}
    finally:
        from components.deploy import local

        local.stop_server(process)
    print(f"load {load_average()} at end\n")
    print("| path | what | images | seconds | images/s | vs a |")
    print("|---|---|---|---|---|---|")
    baseline = len(uris) / best["a"]["seconds"]
    result = {}
    for path in paths:
        rate = len(uris) / best[path]["seconds"]
        result[path] = {"name": NAMES[path], "images_per_s": round(rate, 1), **best[path]}
        print(
            f"| {path} | {NAMES[path]} | {len(uris)} | {best[path]['seconds']:.2f} | "
            f"{rate:.1f} | {rate / baseline:.2f} |"
        )
    for rate in [float(r) for r in stream_rates.split(",") if r]:
        from pipelines.stream_demo import run_demo

        report = run_demo(args.demo_dir, rate, 240, SERVED_NAME_OF_DEMO)
        result[f"stream_{rate:g}_per_s"] = report
        print(
            f"streaming at {rate:g} images/s: {report['predicted']}/{report['published']} "
            f"predicted, latency p50 {report['latency_ms_p50']} ms, "
            f"p99 {report['latency_ms_p99']} ms"
        )
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
