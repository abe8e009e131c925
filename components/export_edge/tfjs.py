"""The TensorFlow.js graph model of the edge SavedModel, and the two ways it is checked.

Converter: the ``tensorflowjs`` Python package (4.22.0), installed without its declared
dependencies (requirements-no-deps.txt): it requires the full ``tensorflow``
distribution (the suite installs ``tensorflow-cpu``, the same package under another
name), ``tensorflow-decision-forests`` and ``flax``. What its converter module does
import is installed (``tensorflow-hub``, ``tf-keras``, ``jax``); TensorFlow Decision
Forests is not: see :func:`import_converter`.

Checks (``tfjs_check``):

- ``node``: the converted files run in Node.js on the pure-JavaScript TensorFlow.js
  runtime (``@tensorflow/tfjs-core``, ``-backend-cpu``, ``-converter`` 4.22.0, pinned in
  ``tfjs_check/package-lock.json``), exactly as a web page would run them, on the same
  decoded pixels (``tfjs_check/check.cjs``). The runtime is installed on first use with
  ``npm ci`` into the user's cache (``TFJS_CHECK_DIR`` names another folder).
- ``python``: where Node.js is absent (the stage images): every op of model.json is checked
  against the op list of TensorFlow.js (the ops its runtime implements, shipped with the
  converter), then the graph and weights read back from model.json and the shards run in
  TensorFlow, its fused ops (``_FusedConv2D``, ``FusedDepthwiseConv2dNative``,
  ``_FusedMatMul``: TensorFlow.js kernels) written out as the ops they fuse.
- ``auto`` (default): ``node`` when Node.js and npm (or an installed runtime) are there,
  else ``python``; the result says which ran and why.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Sequence

import numpy as np

from components.export_edge.edge_model import NUMERIC_SIGNATURE, PIXELS

CHECKS = ("auto", "node", "python")
CHECK_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfjs_check")
RUNTIME_MODULES = (
    "@tensorflow/tfjs-core",
    "@tensorflow/tfjs-backend-cpu",
    "@tensorflow/tfjs-converter",
)


def import_converter() -> types.ModuleType:
    """``tensorflowjs.converters.tf_saved_model_conversion_v2``, imported beside TF 2.21.

    Its module imports ``tensorflow_decision_forests`` only so that TensorFlow Decision
    Forests' custom ops are registered for converting TF-DF models. TF-DF 1.12 (the
    newest) is built against TF 2.19: under 2.21 its ops library fails to load
    (undefined symbol), and this suite converts no TF-DF model, so an empty module
    stands in for it. Any TF-DF op in a graph would still fail the conversion loudly.
    """
    if "tensorflow_decision_forests" not in sys.modules:
        sys.modules["tensorflow_decision_forests"] = types.ModuleType(
            "tensorflow_decision_forests",
            "Placeholder: TF-DF's ops cannot load under this TensorFlow (see export_edge.tfjs).",
        )
    with warnings.catch_warnings():  # tensorflow_hub's import of pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from tensorflowjs.converters import tf_saved_model_conversion_v2

    return tf_saved_model_conversion_v2


def convert(edge_dir: str, output_dir: str, metadata: dict, timeout: float = 1800) -> None:
    """Converts the edge SavedModel's ``numeric`` signature to a TF.js graph model in
    ``output_dir`` (a local folder): ``model.json`` (topology, signature, ``metadata`` as
    its ``userDefinedMetadata``) and ``group1-shard*of*.bin`` (float32 weights).

    The converter runs in a fresh Python with oneDNN's TensorFlow optimisations off
    (``TF_ENABLE_ONEDNN_OPTS=0``, read once when TensorFlow starts): with them on, the
    graph optimiser it runs fuses Keras' hard swish into ``_FusedConv2D`` as
    ``_FusedHardSwish``, an activation only oneDNN has and TensorFlow.js does not.
    """
    command = [sys.executable, "-m", __name__, edge_dir, output_dir, json.dumps(metadata)]
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"the TF.js conversion failed: {done.stderr.strip()[-3000:]}")


def _convert_here(edge_dir: str, output_dir: str, metadata: str) -> None:
    import_converter().convert_tf_saved_model(
        edge_dir,
        output_dir,
        signature_def=NUMERIC_SIGNATURE,
        saved_model_tags="serve",
        metadata=json.loads(metadata),
    )
    name_outputs(edge_dir, output_dir)


def name_outputs(edge_dir: str, output_dir: str) -> None:
    """Gives every output of model.json's signature its name in the edge SavedModel.

    The converter (4.22) names a graph output by looking for the one signature output of
    its dtype and shape; where two are alike (a detector's ``detection_classes`` and
    ``detection_scores``, both float32 ``[1, 100]``) it keeps the graph's tensor name
    (``Identity_1:0``). The signature's own order says which is which: its function's
    outputs are its outputs flattened, in the order of their names."""
    import tensorflow as tf

    function = tf.saved_model.load(edge_dir).signatures[NUMERIC_SIGNATURE]
    names = dict(
        zip(
            (t.name for t in function.outputs),
            sorted(function.structured_outputs),
            strict=True,
        )
    )
    path = os.path.join(output_dir, "model.json")
    with open(path) as f:
        model = json.load(f)
    outputs = model["signature"]["outputs"]
    for key in [k for k in outputs if k in names]:
        outputs[names[key]] = outputs.pop(key)
    with open(path, "w") as f:
        json.dump(model, f)


def supported_ops() -> set[str]:
    """The TensorFlow op names the TensorFlow.js runtime executes (the converter's list,
    read without importing the converter)."""
    spec = importlib.util.find_spec("tensorflowjs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("tensorflowjs is not installed (requirements-no-deps.txt)")
    ops = set()
    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "op_list", "*.json")):
        with open(path) as f:
            ops |= {op["tfOpName"] for op in json.load(f)}
    return ops


# The activations TensorFlow.js' fused kernels apply (besides a bias and none).
FUSED_STEPS = {"BiasAdd", "NoOp", "Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid", "Prelu"}


def unsupported(model_dir: str) -> list[str]:
    """The ops of model.json TensorFlow.js lacks, and the activations fused into its
    convolutions and matmuls that it lacks (an empty list: it runs them all)."""
    with open(os.path.join(model_dir, "model.json")) as f:
        nodes = json.load(f)["modelTopology"]["node"]
    missing = {node["op"] for node in nodes} - supported_ops()
    for node in nodes:
        for step in node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", []):
            name = base64.b64decode(step).decode()
            if name not in FUSED_STEPS:
                missing.add(f"{node['op']} with {name}")
    return sorted(missing)


# --- the Node.js check ------------------------------------------------------------------


def _lock_digest() -> str:
    with open(os.path.join(CHECK_FILES, "package-lock.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def runtime_dir() -> str:
    """The folder whose ``node_modules`` holds the TensorFlow.js runtime of the check."""
    if os.environ.get("TFJS_CHECK_DIR"):
        return os.environ["TFJS_CHECK_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "kfp-image-classification", f"tfjs-check-{_lock_digest()}")


def runtime_installed(folder: str) -> bool:
    return all(
        os.path.isfile(os.path.join(folder, "node_modules", m, "package.json"))
        for m in RUNTIME_MODULES
    )


def install_runtime(folder: str, timeout: float = 600) -> None:
    """``npm ci`` of tfjs_check/package-lock.json into ``folder`` (beside it, then
    renamed: concurrent runs never see half an install)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tfjs-check-", dir=parent)
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(CHECK_FILES, name), staging)
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        try:
            os.rename(staging, folder)
        except OSError:
            if not runtime_installed(folder):  # not another run's finished install
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def node_runtime() -> tuple[str | None, str]:
    """(the runtime folder, "") when the Node.js check can run, installing the runtime if
    npm is there; else (None, why not)."""
    if not shutil.which("node"):
        return None, "no node executable on PATH"
    folder = runtime_dir()
    if runtime_installed(folder):
        return folder, ""
    if not shutil.which("npm"):
        return None, f"the TensorFlow.js runtime is not in {folder} and npm is not on PATH"
    try:
        install_runtime(folder)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return None, f"npm ci of the TensorFlow.js runtime failed: {detail.strip()[-500:]}"
    return folder, ""


class NodeCheck:
    """Collects images, then runs the graph model on them in Node.js (``check.cjs``),
    fetching the ``outputs`` named; ``milliseconds``: what the model took per image
    (its outputs read back included), once ``results`` ran."""

    name = "node"

    def __init__(self, model_dir: str, runtime: str, work_dir: str, outputs: Sequence[str]):
        self.model_dir, self.runtime, self.work_dir = model_dir, runtime, work_dir
        self.outputs = list(outputs)
        self.milliseconds: list[float] = []
        self.pixels_path = os.path.join(work_dir, "pixels.bin")
        self.count = 0
        self._file = open(self.pixels_path, "wb")  # noqa: SIM115 (closed in results)
        self._file.write(struct.pack("<I", 0))

    def add(self, pixels: np.ndarray) -> None:
        """``pixels``: uint8 ``[1, height, width, 3]``."""
        _, height, width, _ = pixels.shape
        self._file.write(struct.pack("<II", height, width))
        self._file.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        self.count += 1

    def results(self, timeout: float = 3600) -> tuple[dict[str, list[np.ndarray]], str]:
        """(each output's value per image added, in order, without the batch dimension;
        the runtime)."""
        self._file.seek(0)
        self._file.write(struct.pack("<I", self.count))
        self._file.close()
        out = os.path.join(self.work_dir, "tfjs-results.json")
        command = [
            "node",
            os.path.join(CHECK_FILES, "check.cjs"),
            os.path.join(self.model_dir, "model.json"),
            self.pixels_path,
            out,
            ",".join(self.outputs),
        ]
        env = {**os.environ, "NODE_PATH": os.path.join(self.runtime, "node_modules")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(
                f"the TensorFlow.js model failed in Node.js ({' '.join(command)}): "
                f"{done.stderr.strip()[-2000:]}"
            )
        with open(out) as f:
            result = json.load(f)
        runtime = f"{result['runtime']} ({result['backend']} backend), Node.js"
        self.milliseconds = result["milliseconds"]
        values = {
            name: [np.reshape(o["values"], o["shape"])[0] for o in result["outputs"][name]]
            for name in self.outputs
        }
        return values, runtime


# --- the Python check ---------------------------------------------------------------------

# TensorFlow.js' fused kernels, and the TensorFlow op each starts with.
_FUSED = {
    "_FusedConv2D": "Conv2D",
    "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
    "_FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
    "_FusedMatMul": "MatMul",
}
# The fused activations the Python check writes out: TensorFlow.js' own (``unsupported``
# rejects any other first), less Prelu, which TensorFlow has no single op for (a model with a
# fused Prelu gets a clear error from ``defuse``; the Node.js check runs it).
_ACTIVATIONS = FUSED_STEPS - {"BiasAdd", "NoOp", "Prelu"}


def defuse(graph_def):
    """The graph with TensorFlow.js' fused ops written out as the TensorFlow ops they
    stand for (convolution or matmul, then an add of the bias, then the activation).
    TensorFlow.js broadcasts a fused bias; TensorFlow's fused kernels take only a vector
    (Keras' hard sigmoid becomes a scalar bias), hence AddV2 rather than BiasAdd."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import op_def_registry

    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        base = _FUSED.get(node.op)
        if base is None:
            out.node.add().CopyFrom(node)
            continue
        data = [i for i in node.input if not i.startswith("^")]
        control = [i for i in node.input if i.startswith("^")]
        args = data[2 : 2 + node.attr["num_args"].i]
        steps = [s.decode() for s in node.attr["fused_ops"].list.s if s != b"NoOp"]
        allowed = {a.name for a in op_def_registry.get(base).attr}
        previous = node.name if not steps else f"{node.name}/{base}"
        core = out.node.add(name=previous, op=base, device=node.device)
        core.input.extend(data[:2] + control)
        for key, value in node.attr.items():
            if key in allowed:
                core.attr[key].CopyFrom(value)
        for number, op in enumerate(steps):
            name = node.name if number == len(steps) - 1 else f"{node.name}/{op}"
            step = out.node.add(name=name, device=node.device)
            step.attr["T"].CopyFrom(node.attr["T"])
            if op == "BiasAdd":
                step.op = "AddV2"
                step.input.extend([previous, args[0]])
            elif op in _ACTIVATIONS:
                step.op = op
                step.input.append(previous)
                if op == "LeakyRelu":
                    step.attr["alpha"].f = node.attr["leakyrelu_alpha"].f
            else:
                raise ValueError(f"{node.name}: the Python check cannot run fused {op!r}")
            previous = name
    return out


class PythonCheck:
    """Runs the graph model's topology and weights, read back from its files, in
    TensorFlow, one image at a time, fetching the ``outputs`` named."""

    name = "python"

    def __init__(self, model_dir: str, outputs: Sequence[str]):
        import tensorflow as tf
        from google.protobuf import json_format
        from tensorflow.core.framework import graph_pb2
        from tensorflow.python.framework import op_def_registry

        import_converter()
        from tensorflowjs import read_weights

        with open(os.path.join(model_dir, "model.json")) as f:
            model = json.load(f)
        graph_def = defuse(json_format.ParseDict(model["modelTopology"], graph_pb2.GraphDef()))
        nodes = {node.name: node for node in graph_def.node}
        for weight in read_weights.read_weights(model["weightsManifest"], model_dir, flatten=True):
            nodes[weight["name"]].attr["value"].tensor.CopyFrom(
                tf.make_tensor_proto(weight["data"])
            )
        missing = sorted({n.op for n in graph_def.node if op_def_registry.get(n.op) is None})
        if missing:
            raise ValueError(f"the Python check cannot run the TensorFlow.js ops {missing}")
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        self._session = tf.compat.v1.Session(graph=graph)
        signature = model["signature"]
        self._input = signature["inputs"][PIXELS]["name"]
        self._names = list(outputs)
        self._tensors = [signature["outputs"][k]["name"] for k in self._names]
        self._values = {name: [] for name in self._names}

    def add(self, pixels: np.ndarray) -> None:
        """``pixels``: uint8 ``[1, height, width, 3]``."""
        for name, value in zip(
            self._names, self._session.run(self._tensors, {self._input: pixels}), strict=True
        ):
            self._values[name].append(value[0])

    def results(self) -> tuple[dict[str, list[np.ndarray]], str]:
        """(each output's value per image added, in order, without the batch dimension;
        the runtime)."""
        import tensorflow as tf

        self._session.close()
        runtime = f"TensorFlow {tf.__version__} running model.json's graph and weights"
        return self._values, runtime


def make_check(kind: str, model_dir: str, work_dir: str, outputs: Sequence[str]):
    """The check ``kind`` (``auto``, ``node``, ``python``) asks for, fetching the model's
    ``outputs``: (check, note), the note saying why ``auto`` fell back to Python."""
    if kind not in CHECKS:
        raise ValueError(f"unknown tfjs_check {kind!r}; expected one of {CHECKS}")
    lacking = unsupported(model_dir)
    if lacking:
        raise ValueError(f"the TensorFlow.js model uses ops TensorFlow.js lacks: {lacking}")
    if kind == "python":
        return PythonCheck(model_dir, outputs), ""
    runtime, why_not = node_runtime()
    if runtime:
        return NodeCheck(model_dir, runtime, work_dir, outputs), ""
    if kind == "node":
        raise RuntimeError(f"tfjs_check='node' cannot run: {why_not}")
    return PythonCheck(model_dir, outputs), why_not


if __name__ == "__main__":  # convert(): the converter in a fresh Python
    _convert_here(*sys.argv[1:])
