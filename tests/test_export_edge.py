"""The export_edge stage: TFLite and TensorFlow.js models of the export, carrying its
preprocessing and labels, each checked against the SavedModel on the test split."""

import base64
import io as stdio
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from kfp import dsl
from PIL import Image

from components.common import labels as label_io, preprocessing, serving
from components.export_edge import edge, tfjs, tflite
from components.export_edge.component import export_edge as export_edge_component
from components.export_edge.resize import resize_batch
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.sample_data import CLASSES

INT8_AGREEMENT = 0.75


@pytest.fixture(scope="module")
def varied_export(tmp_path_factory) -> str:
    """An export whose predictions vary from image to image (the session's untrained
    MobileNetV3Small answers 0.25 for every class, which any converter would match): a
    small CNN with seeded random weights whose classifier also weighs the mean colour
    heavily; its hard sigmoid becomes a convolution with a scalar bias once TF.js fuses
    it."""
    import keras

    from components.common.model_dir import save_model_dir
    from components.export.saved_model import export_saved_model

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    colour = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
    x = keras.layers.Conv2D(16, 1, activation="hard_sigmoid")(x)
    x = keras.layers.Concatenate()([colour, keras.layers.GlobalAveragePooling2D()(x)])
    classify = keras.layers.Dense(len(CLASSES), activation="softmax")
    model = keras.Model(inputs, classify(x))
    kernel, bias = classify.get_weights()
    kernel[:3] = 8 * np.array([[1, -1, 0, 0], [0, 1, -1, 0], [-1, 0, 1, 0]])
    classify.set_weights([kernel, bias])
    base = tmp_path_factory.mktemp("varied")
    save_model_dir(
        model, str(base / "model"), list(CLASSES), {"backbone": "test-cnn", "image_size": 32}
    )
    export_saved_model(str(base / "model"), str(base / "export"))
    return str(base / "export")


@pytest.fixture(scope="module")
def edge_run(varied_export, tfrecord_dataset, tmp_path_factory):
    """export_edge of ``varied_export``: (result, TFLite folder, TF.js folder)."""
    out = tmp_path_factory.mktemp("edge")
    tflite_dir, tfjs_dir = str(out / "tflite"), str(out / "tfjs")
    # The test split has 9 images, so one close call moves int8's agreement by 0.11: the
    # floats keep the stage's 0.99, int8 gets 7 of 9 here (0.9 holds on the demo's 42).
    result = edge.export_edge(
        varied_export, tfrecord_dataset, tflite_dir, tfjs_dir, int8_min_agreement=INT8_AGREEMENT
    )
    return result, tflite_dir, tfjs_dir


def _encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = stdio.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_int8_ties_count_only_where_the_saved_model_itself_is_within_a_step():
    """int8 outputs probabilities in steps of 1/256: a barely trained model's near-equal
    classes tie there (class_index takes the first). That tie agrees; a tie of classes
    the SavedModel tells apart (a broken quantization) does not, nor any tie of a float
    format."""
    step = 1 / 256
    expected = np.array([2, 2, 1, 0])
    reference = np.array(
        [
            [0.2500, 0.2490, 0.2510, 0.2500],  # near-uniform: within a step
            [0.0100, 0.0100, 0.9700, 0.0100],  # confident
            [0.3000, 0.4000, 0.2000, 0.1000],  # confident
            [0.9000, 0.0500, 0.0300, 0.0200],  # confident
        ]
    )
    int8 = (
        np.array(
            [
                [64, 64, 64, 64],  # tie, int8 says class 0: agrees (unresolvable)
                [64, 64, 64, 64],  # tie of classes the SavedModel tells apart: broken
                [0, 102, 103, 51],  # plain disagreement
                [230, 13, 8, 5],  # plain agreement
            ]
        )
        * step
    )
    classes = int8.argmax(axis=1)
    assert edge.top1_agreement(expected, reference, classes, int8, step) == (0.5, 1)
    assert edge.top1_agreement(expected, reference, classes, int8, 0.0) == (0.25, 0)


@pytest.mark.parametrize(
    "height, width", [(32, 32), (50, 70), (20, 40), (100, 17), (33, 31), (480, 640), (7, 7)]
)
def test_portable_resize_is_the_serving_resize(height, width):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    expected = preprocessing.resize(tf.constant(image), 32).numpy()
    got = resize_batch(tf.constant(image[None]), 32).numpy()[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_every_format_is_written_with_its_labels(edge_run):
    result, tflite_dir, tfjs_dir = edge_run
    assert sorted(os.listdir(tflite_dir)) == sorted([*edge.TFLITE_FILES.values(), "labels.txt"])
    files = os.listdir(tfjs_dir)
    assert "model.json" in files and any(f.endswith(".bin") for f in files)
    for folder in (tflite_dir, tfjs_dir):
        assert label_io.read_labels(os.path.join(folder, "labels.txt")) == list(CLASSES)
    with open(os.path.join(tfjs_dir, "model.json")) as f:
        model = json.load(f)
    assert model["userDefinedMetadata"]["labels"] == list(CLASSES)
    assert model["userDefinedMetadata"]["image_size"] == 32
    assert set(model["signature"]["outputs"]) == {"probabilities", "class_index", "score"}
    assert result["labels"] == list(CLASSES) and result["image_size"] == 32
    for kind, name in edge.TFLITE_FILES.items():
        assert result["sizes"][kind] == os.path.getsize(os.path.join(tflite_dir, name))


def test_every_format_agrees_with_the_saved_model(edge_run, varied_export, tfrecord_dataset):
    result, _, _ = edge_run
    reference = serving.load_signature(varied_export)
    encoded = [e for e, _ in edge.decoded_images(tfrecord_dataset, "test")]
    classes = reference(image_bytes=tf.constant(encoded))["class_index"].numpy()
    assert len(set(classes)) > 1, "the check would be vacuous: one class for every image"
    assert result["examples"] == len(encoded)
    assert set(result["agreement"]) == {"float32", "float16", "int8", "tfjs"}
    for kind in edge.FLOAT_FORMATS:
        assert result["agreement"][kind]["agreement"] >= 0.99, (kind, result["agreement"])
        assert result["agreement"][kind]["max_probability_difference"] < 1e-3
    assert result["agreement"]["int8"]["agreement"] >= INT8_AGREEMENT
    if shutil.which("node"):  # a machine with Node.js runs TensorFlow.js itself
        assert result["tfjs_check"] == "node", result["tfjs_check"]
        assert "@tensorflow/tfjs-core 4.22.0" in result["tfjs_runtime"]


def test_tflite_takes_pixels_of_any_size_and_returns_the_label(edge_run, varied_export):
    """Same outputs as the SavedModel on the PNG of the same pixels, at any size."""
    _, tflite_dir, _ = edge_run
    reference = serving.load_signature(varied_export)
    rng = np.random.default_rng(0)
    with open(os.path.join(tflite_dir, "model_float32.tflite"), "rb") as f:
        run = tflite.Runner(f.read())
    for height, width in ((50, 70), (300, 200), (32, 32), (16, 24)):
        pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
        expected = reference(image_bytes=tf.constant([_encoded(pixels)]))
        got = run(pixels[None])
        np.testing.assert_allclose(
            got["probabilities"], expected["probabilities"].numpy(), atol=1e-5
        )
        assert got["label"][0] == expected["label"].numpy()[0]
        assert got["class_index"][0] == expected["class_index"].numpy()[0]


def test_int8_quantizes_the_classifier_and_keeps_the_resize_float(edge_run):
    _, tflite_dir, _ = edge_run
    with open(os.path.join(tflite_dir, "model_int8.tflite"), "rb") as f:
        details = tflite.interpreter(f.read()).get_tensor_details()
    resize = [t for t in details if "edge_resize/" in t["name"]]
    quantized = [t["name"] for t in resize if t["dtype"] == np.int8]
    # Only its result is int8: the classifier's input, quantized once.
    assert resize and all("clip_by_value" in name for name in quantized), quantized
    assert sum(t["dtype"] == np.int8 for t in details) > 10  # weights and activations


def test_python_check_of_the_tfjs_files_matches_the_saved_model(edge_run, varied_export):
    """Where Node.js is absent (the stage images): model.json's graph and weights in
    TensorFlow, TF.js' fused ops (a scalar bias here) written out."""
    _, _, tfjs_dir = edge_run
    with open(os.path.join(tfjs_dir, "model.json")) as f:
        ops = {n["op"] for n in json.load(f)["modelTopology"]["node"]}
    assert ops & set(tfjs._FUSED), "no fused op: the test would not exercise defuse"
    check = tfjs.PythonCheck(tfjs_dir, ("class_index", "probabilities"))
    reference = serving.load_signature(varied_export)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in ((40, 60), (90, 90))]
    for image in images:
        check.add(image[None])
    values, runtime = check.results()
    expected = [reference(image_bytes=tf.constant([_encoded(i)])) for i in images]
    np.testing.assert_allclose(
        np.array(values["probabilities"]),
        np.concatenate([e["probabilities"].numpy() for e in expected]),
        atol=1e-5,
    )
    assert [int(c) for c in values["class_index"]] == [int(e["class_index"][0]) for e in expected]
    assert "TensorFlow" in runtime


def test_auto_falls_back_to_python_without_node(edge_run, monkeypatch, tmp_path):
    _, _, tfjs_dir = edge_run
    monkeypatch.setattr(tfjs.shutil, "which", lambda name: None)
    check, why = tfjs.make_check("auto", tfjs_dir, str(tmp_path), ["class_index"])
    assert check.name == "python" and "no node executable" in why
    with pytest.raises(RuntimeError, match="tfjs_check='node' cannot run"):
        tfjs.make_check("node", tfjs_dir, str(tmp_path), ["class_index"])


def test_ops_and_fused_activations_tfjs_lacks_are_found(tmp_path):
    """oneDNN's graph optimiser fuses Keras' hard swish into _FusedConv2D, which
    TensorFlow.js cannot run (tfjs.convert turns oneDNN off); the check names it."""

    def node(name, op, *fused):
        attr = {
            "fused_ops": {"list": {"s": [base64.b64encode(f.encode()).decode() for f in fused]}}
        }
        return {"name": name, "op": op, "attr": attr if fused else {}}

    nodes = [
        node("a", "Placeholder"),
        node("b", "_FusedConv2D", "BiasAdd", "Relu6"),
        node("c", "_FusedConv2D", "BiasAdd", "_FusedHardSwish"),
        node("d", "DecodeJpeg"),
    ]
    (tmp_path / "model.json").write_text(json.dumps({"modelTopology": {"node": nodes}}))
    assert tfjs.unsupported(str(tmp_path)) == ["DecodeJpeg", "_FusedConv2D with _FusedHardSwish"]
    with pytest.raises(ValueError, match="TensorFlow.js lacks.*_FusedHardSwish"):
        tfjs.make_check("python", str(tmp_path), str(tmp_path), ["class_index"])


def test_a_bad_dataset_path_is_a_clear_error(exported_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no test shards under .*nowhere"):
        edge.export_edge(
            exported_model, str(tmp_path / "nowhere"), str(tmp_path / "t"), str(tmp_path / "j")
        )
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        edge.export_edge(str(tmp_path), str(tmp_path), str(tmp_path / "t"), str(tmp_path / "j"))
    with pytest.raises(ValueError, match="int8_min_agreement"):
        edge.export_edge(exported_model, str(tmp_path), "t", "j", int8_min_agreement=1.5)
    with pytest.raises(ValueError, match="max_examples"):
        edge.export_edge(exported_model, str(tmp_path), "t", "j", max_examples=-1)
    with pytest.raises(ValueError, match="unknown tfjs_check 'browser'"):
        edge.export_edge(exported_model, str(tmp_path), "t", "j", tfjs_check="browser")


def test_a_model_below_its_minimum_fails_with_every_figure():
    figures = {"float32": 1.0, "float16": 0.985, "int8": 0.8, "tfjs": 1.0}
    result = {
        "agreement": {k: {"agreement": v} for k, v in figures.items()},
        "split": "test",
        "examples": 200,
        "tfjs_check": "node",
    }
    with pytest.raises(ValueError) as error:
        edge._enforce(result, 0.99, 0.9)
    message = str(error.value)
    assert "float16 agrees on 0.9850 < 0.99" in message and "int8 agrees on 0.8000 < 0.9" in message
    assert "float32 1.0000" in message and "200 images" in message
    edge._enforce(result, 0.98, 0.8)  # at the minimum: passes


@dsl.pipeline(name="export-edge-only")
def _export_edge_pipeline(model_dir: str, dataset_dir: str):
    model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model, reimport=False)
    dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset, reimport=False)
    export_edge_component(
        exported_model=model.output,
        dataset=dataset.output,
        representative_images=8,
        tfjs_check="python",
    )


def test_export_edge_component_under_kfp_local(kfp_local, exported_model, tfrecord_dataset):
    run_dir = run_pipeline(
        _export_edge_pipeline,
        str(kfp_local),
        model_dir=exported_model,
        dataset_dir=tfrecord_dataset,
    )
    outputs = task_outputs(run_dir, "export-edge")
    metrics = output_artifact(outputs, "agreement")["metadata"]
    # The step's own figures, as the stage computes them (the float bar is the stage's).
    for kind in ("float32", "float16", "tfjs"):
        assert metrics[kind] >= 0.99, metrics
    assert set(metrics["unresolved_ties"]) == {"float32", "float16", "int8", "tfjs"}
    test_images = sum(1 for _ in edge.decoded_images(tfrecord_dataset, "test"))
    assert metrics["examples"] == test_images and metrics["tfjs_check"] == "python"
    assert metrics["representative_images"] == 8
    assert set(metrics["sizes"]) == {"float32", "float16", "int8", "tfjs"}
    tflite_model = output_artifact(outputs, "tflite_model")
    assert tflite_model["metadata"]["labels"] == list(CLASSES)
    for name in tflite_model["metadata"]["files"].values():
        assert os.path.getsize(os.path.join(tflite_model["uri"], name)) > 0
    tfjs_model = output_artifact(outputs, "tfjs_model")
    assert os.path.exists(os.path.join(tfjs_model["uri"], "model.json"))
    assert label_io.read_labels(os.path.join(tfjs_model["uri"], "labels.txt")) == list(CLASSES)
