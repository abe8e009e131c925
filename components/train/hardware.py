"""Fast-math settings of a training run, resolved for the machine it runs on.

``"auto"`` values pick what pays off on the hardware found: mixed precision and XLA on a
GPU, plain float32 and no XLA on CPU, where both cost more than they bring.
"""

from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", "true", "false")
# Steps per tf.function call on a GPU: enough to hide the per-call Python overhead of
# small models, few enough that per-batch callbacks still fire now and then.
GPU_STEPS_PER_EXECUTION = 32


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU; empty on a CPU-only machine."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return capabilities


def resolve_precision(precision: str, capabilities: list[tuple[int, int]]) -> str:
    """The Keras dtype policy name for the ``precision`` parameter.

    ``"auto"`` is ``"mixed_float16"`` when every GPU has Tensor Cores (compute capability
    7.0 or more), else ``"float32"`` (always on CPU).

    Raises:
        ValueError: for a value outside ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if capabilities and all(c >= (7, 0) for c in capabilities):
        return "mixed_float16"
    return "float32"


def resolve_jit_compile(jit_compile: str, capabilities: list[tuple[int, int]]) -> bool:
    """Whether to compile the train step with XLA: ``"auto"`` means on a GPU only.

    Raises:
        ValueError: for a value outside ``JIT_COMPILE``.
    """
    value = str(jit_compile).strip().lower()
    if value not in JIT_COMPILE:
        raise ValueError(
            f"jit_compile must be one of {', '.join(JIT_COMPILE)}; got {jit_compile!r}"
        )
    if value == "auto":
        return bool(capabilities)
    return value == "true"


def resolve_steps_per_execution(
    steps_per_execution: int, steps_per_epoch: int, capabilities: list[tuple[int, int]]
) -> int:
    """Training steps per tf.function call: ``0`` picks 1 on CPU and
    ``GPU_STEPS_PER_EXECUTION`` on a GPU, never more than an epoch's steps.

    An epoch runs whole calls, so the value is evened out over the calls an epoch needs
    (100 steps at 32 a call: 4 calls of 25): an epoch then overruns its steps by less
    than one step per call.

    Raises:
        ValueError: for a negative value.
    """
    if steps_per_execution < 0:
        raise ValueError(f"steps_per_execution must be 0 (auto) or more; got {steps_per_execution}")
    if steps_per_execution == 0:
        steps_per_execution = GPU_STEPS_PER_EXECUTION if capabilities else 1
    steps_per_epoch = max(1, steps_per_epoch)
    calls = math.ceil(steps_per_epoch / max(1, steps_per_execution))
    return math.ceil(steps_per_epoch / calls)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets Keras' global dtype policy for what is built inside, then restores it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
