"""Benchmark: training throughput of the train stage's classifier, by precision and XLA.

Trains ``components.train.backbones.build_classifier(backbone, classes, size,
weights="none")`` with Keras ``fit`` in four configurations, in one process:

* float32 and mixed precision (``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU),
* each with XLA (``jit_compile``) off and on,

on synthetic batches (random pixels and labels made once, repeated by ``tf.data``, on a
GPU prefetched into its memory), so the input pipeline is not what is measured. Each
configuration runs one warm-up epoch (tracing, XLA compilation, autotuning) and then one
timed epoch of ``--steps`` steps; it reports images per second, milliseconds per step and,
on an NVIDIA GPU, the GPU's utilisation and memory sampled every 200 ms during the timed
epoch (pynvml when installed, else ``nvidia-smi``). Between configurations the Keras
session and the global mixed-precision policy are reset.

On a machine without a GPU it runs on the CPU (use small settings) and reports the
utilisation as unavailable: a smoke test of the script.

Usage::

    .venv/bin/python bench/train_gpu.py                        # EfficientNetB0, 224 px, batch 128
    .venv/bin/python bench/train_gpu.py --backbone ConvNeXtTiny --batch-size 64
    .venv/bin/python bench/train_gpu.py --backbone MobileNetV3Small --image-size 64 \\
        --batch-size 16 --steps 5                                # CPU smoke test
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.train import backbones  # noqa: E402

SAMPLE_MS = 200


class GpuSampler:
    """Samples one GPU's utilisation (%) and memory used (MiB) in a background thread."""

    def __init__(self, index: int):
        self.index = index
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self.source = self._pick_source()

    def _pick_source(self) -> str:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return "pynvml"
        except Exception:  # not installed, or no NVIDIA driver
            pass
        if shutil.which("nvidia-smi"):
            return "nvidia-smi"
        return ""

    def start(self) -> None:
        """Starts sampling (a no-op without a source)."""
        self.samples = []
        self._stop.clear()
        if self.source == "pynvml":
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        elif self.source == "nvidia-smi":
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self.index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    f"-lms={SAMPLE_MS}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        if self._thread:
            self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        """Stops sampling; the ``(utilisation %, memory MiB)`` samples taken."""
        self._stop.set()
        if self._process:
            self._process.terminate()
            self._process.wait()
            self._process = None
        if self._thread:
            self._thread.join()
            self._thread = None
        return self.samples

    def _poll_nvml(self) -> None:
        import pynvml

        while not self._stop.wait(SAMPLE_MS / 1000):
            rates = pynvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.samples.append((float(rates.gpu), memory.used / 2**20))

    def _read_smi(self) -> None:
        for line in self._process.stdout:
            try:
                utilisation, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((utilisation, memory))


@dataclasses.dataclass
class Result:
    precision: str
    jit: bool
    seconds: float
    images: int
    steps: int
    loss: float
    samples: list[tuple[float, float]]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    def utilisation(self) -> str:
        if not self.samples:
            return "unavailable"
        values = [u for u, _ in self.samples]
        return f"{statistics.mean(values):.0f} / {max(values):.0f}"

    def memory(self) -> str:
        return f"{max(m for _, m in self.samples):,.0f}" if self.samples else "unavailable"


class _Timer(keras.callbacks.Callback):
    """Times every epoch after the first and samples the GPU meanwhile."""

    def __init__(self, sampler: GpuSampler):
        super().__init__()
        self.sampler = sampler
        self.seconds = 0.0
        self.samples: list[tuple[float, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= 1:
            self.sampler.start()
            self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Keras turns the epoch's logs into numbers first, so the device work is done.
        if epoch >= 1:
            self.seconds += time.perf_counter() - self._start
            self.samples += self.sampler.stop()


def synthetic_batches(
    batch_size: int, image_size: int, classes: int, device: str | None
) -> tf.data.Dataset:
    """One random batch of ``[0, 255]`` pixels and labels, repeated without end."""
    images = tf.random.uniform([batch_size, image_size, image_size, 3], 0.0, 255.0, seed=0)
    labels = tf.random.uniform([batch_size], 0, classes, dtype=tf.int64, seed=1)
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat()
    if device:
        return ds.apply(tf.data.experimental.prefetch_to_device(device, buffer_size=2))
    return ds.prefetch(tf.data.AUTOTUNE)


def run_config(args, precision: str, jit: bool, device: str | None, sampler) -> Result:
    """Builds, compiles and fits the classifier in one configuration."""
    keras.backend.clear_session()
    gc.collect()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model, _ = backbones.build_classifier(
            args.backbone, args.classes, args.image_size, weights="none"
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            jit_compile=jit,
            steps_per_execution=args.steps_per_execution,
        )
        timer = _Timer(sampler)
        history = model.fit(
            synthetic_batches(args.batch_size, args.image_size, args.classes, device),
            epochs=2,
            steps_per_epoch=args.steps,
            callbacks=[timer],
            shuffle=False,  # a tf.data.Dataset is not shuffled by Keras; silences its warning
            verbose=0,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return Result(
        precision,
        jit,
        timer.seconds,
        args.steps * args.batch_size,
        args.steps,
        float(history.history["loss"][-1]),
        timer.samples,
    )


def describe_device(gpus: list) -> str:
    if not gpus:
        cpu = "unknown CPU"
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(
                    (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                    cpu,
                )
        except OSError:
            pass
        return f"CPU only: {cpu}, {os.cpu_count()} logical CPUs"
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = ".".join(map(str, details.get("compute_capability", ())))
    return (
        f"{len(gpus)} GPU(s), benchmarked on the first: {details.get('device_name', '?')} "
        f"(compute capability {capability or '?'})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="EfficientNetB0", choices=list(backbones.BACKBONES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=256, help="timed steps (and warm-up steps)")
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=0,
        help="batches per compiled call; 0: 32 on a GPU, 1 on a CPU (at most --steps)",
    )
    parser.add_argument(
        "--mixed",
        default="",
        help="mixed policy to compare with float32 (default: mixed_float16 on a GPU, "
        "mixed_bfloat16 on a CPU)",
    )
    parser.add_argument(
        "--jit",
        choices=("both", "off", "on"),
        default="both",
        help="XLA compilation of the train step: compare off and on (default), or one",
    )
    parser.add_argument(
        "--input-on-device",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a GPU, prefetch the synthetic batches into GPU memory",
    )
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch_size, args.classes, args.steps) < 1:
        parser.error("sizes and counts must be >= 1")

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # so memory.used means use
    if args.steps_per_execution <= 0:
        args.steps_per_execution = 32 if gpus else 1
    args.steps_per_execution = min(args.steps_per_execution, args.steps)
    mixed = args.mixed or ("mixed_float16" if gpus else "mixed_bfloat16")
    device = "/gpu:0" if gpus and args.input_on_device else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    sampler = GpuSampler(int(visible) if visible.isdigit() else 0)
    if not gpus:
        sampler.source = ""  # a driver without a GPU for TensorFlow says nothing useful

    jits = {"both": (False, True), "off": (False,), "on": (True,)}[args.jit]
    results = []
    for precision in ("float32", mixed):
        for jit in jits:
            print(f"running {precision}, jit_compile={jit} ...", flush=True)
            results.append(run_config(args, precision, jit, device, sampler))

    print(f"\ncommand: {' '.join(shlex.quote(a) for a in ['python', *sys.argv])}")
    print(f"device: {describe_device(gpus)}")
    print(
        f"platform: {platform.platform()}, python {platform.python_version()}, "
        f"tensorflow {tf.__version__}, keras {keras.__version__}"
    )
    print(
        f"model: {args.backbone}, {args.image_size} px, {args.classes} classes, batch "
        f"{args.batch_size}, steps_per_execution {args.steps_per_execution}; synthetic "
        f"batches {'in GPU memory' if device else 'in host memory'}; "
        f"{args.steps} timed steps after a warm-up epoch of as many; GPU sampled every "
        f"{SAMPLE_MS} ms ({sampler.source or 'unavailable'})"
    )
    print(
        f"\n{'precision':<16} {'XLA':<4} {'images/s':>9} {'ms/step':>8} "
        f"{'GPU util % mean / max':>22} {'GPU MiB max':>12} {'loss':>8}"
    )
    for r in results:
        print(
            f"{r.precision:<16} {'on' if r.jit else 'off':<4} {r.images_per_second:>9,.1f} "
            f"{1000 * r.seconds / r.steps:>8.1f} {r.utilisation():>22} {r.memory():>12} "
            f"{r.loss:>8.3f}"
        )
    by_key = {(r.precision, r.jit): r for r in results}
    print()
    for jit in jits:
        ratio = by_key[(mixed, jit)].images_per_second / by_key[("float32", jit)].images_per_second
        print(f"{mixed} / float32, XLA {'on' if jit else 'off'}: {ratio:.2f}x")
    if len(jits) == 2:
        for precision in ("float32", mixed):
            ratio = (
                by_key[(precision, True)].images_per_second
                / by_key[(precision, False)].images_per_second
            )
            print(f"XLA on / off, {precision}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
