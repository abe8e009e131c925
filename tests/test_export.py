"""The export stage: a serving SavedModel that carries preprocessing and labels."""

import io as stdio
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from kfp import dsl
from PIL import Image

from components.classification import signature
from components.common import labels as label_io, model_dir as model_dir_lib, preprocessing, serving
from components.common.io import read_json
from components.export import explanation_metadata
from components.export.component import export as export_component
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.sample_data import CLASSES


def _jpeg_bytes(paths):
    return [Path(p).read_bytes() for p in paths]


def test_signature_takes_image_bytes_and_returns_named_outputs(exported_model):
    serve = serving.load_signature(exported_model)
    (inputs,) = serve.structured_input_signature[1].values()
    assert inputs.name == "image_bytes" and inputs.dtype == tf.string
    assert set(serve.structured_outputs) == set(signature.OUTPUT_NAMES)


def test_labels_travel_with_the_model(exported_model):
    path = os.path.join(exported_model, "assets.extra", "labels.txt")
    assert label_io.read_labels(path) == list(CLASSES)


def test_served_predictions_match_the_keras_model(exported_model, sample_data):
    """Preprocessing inside the SavedModel is exactly the training preprocessing."""
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(sample_data.image_dir) for f in fs)[
        :6
    ]
    out = serving.load_signature(exported_model)(image_bytes=tf.constant(_jpeg_bytes(paths)))
    model = model_dir_lib.load_model(os.path.join(os.path.dirname(exported_model), "model"))
    images = tf.stack([preprocessing.decode_and_resize(b, 32) for b in _jpeg_bytes(paths)])
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    index = expected.argmax(axis=1)
    assert out["class_index"].numpy().tolist() == index.tolist()
    assert [s.decode() for s in out["label"].numpy()] == [CLASSES[i] for i in index]
    np.testing.assert_allclose(out["score"].numpy(), expected.max(axis=1), atol=1e-5)


def test_png_and_greyscale_inputs_are_served(exported_model):
    encoded = []
    for mode, fmt in (("RGB", "PNG"), ("L", "JPEG")):
        buf = stdio.BytesIO()
        Image.new(mode, (50, 70), 120).save(buf, fmt)
        encoded.append(buf.getvalue())
    out = serving.load_signature(exported_model)(image_bytes=tf.constant(encoded))
    assert out["probabilities"].shape == (2, len(CLASSES))


@pytest.fixture(scope="module")
def loaded_export(exported_model):
    """The exported SavedModel, loaded once for the tests of its signatures."""
    return tf.saved_model.load(exported_model)


def test_xai_signatures_compose_to_serving_default(loaded_export, sample_data):
    """xai_model(xai_preprocess(bytes)) is what serving_default returns, and xai_model is
    differentiable with respect to the pixels."""
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(sample_data.image_dir) for f in fs)
    encoded = tf.constant(_jpeg_bytes(paths[::12][:4]))
    loaded = loaded_export
    assert {"serving_default", "xai_preprocess", "xai_model"} <= set(loaded.signatures.keys())
    pixels = loaded.signatures["xai_preprocess"](image_bytes=encoded)["pixels"]
    assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == tf.float32
    with tf.GradientTape() as tape:
        tape.watch(pixels)
        probabilities = loaded.signatures["xai_model"](pixels=pixels)["probabilities"]
        first_class = probabilities[:, 0]
    served = loaded.signatures["serving_default"](image_bytes=encoded)["probabilities"]
    np.testing.assert_allclose(probabilities.numpy(), served.numpy(), atol=1e-6)
    gradients = tape.gradient(first_class, pixels)
    assert gradients.shape == pixels.shape and np.isfinite(gradients.numpy()).all()


def test_explanation_spec_names_tensors_of_the_saved_model(exported_model, loaded_export):
    """The spec written with the model names the xai_model signature's real tensors and
    parses as the Vertex AI SDK's types."""
    from google.cloud.aiplatform_v1.types import ExplanationMetadata, ExplanationParameters

    loaded = loaded_export
    xai_model = loaded.signatures["xai_model"]
    extra = os.path.join(exported_model, "assets.extra")
    written = read_json(os.path.join(extra, "explanation_metadata.json"))
    assert read_json(os.path.join(extra, "explanation_parameters.json")) == {
        "integratedGradientsAttribution": {"stepCount": 50}
    }
    metadata, parameters = explanation_metadata.vertex_explanation_spec(exported_model)
    assert isinstance(metadata, ExplanationMetadata)
    assert isinstance(parameters, ExplanationParameters)
    assert metadata == ExplanationMetadata.from_json(json.dumps(written))
    (feature,) = metadata.inputs.values()
    assert feature.input_tensor_name in xai_model.structured_input_signature[1]
    assert feature.modality == "image"
    assert list(feature.input_baselines) == [0.0]
    visualization = feature.visualization
    assert visualization.type_ == visualization.Type.PIXELS
    (output,) = metadata.outputs.values()
    assert output.output_tensor_name in xai_model.structured_outputs
    assert list(output.index_display_name_mapping) == list(CLASSES)
    assert parameters.integrated_gradients_attribution.step_count == 50
    # xai_preprocess feeds exactly that input.
    assert set(loaded.signatures["xai_preprocess"].structured_outputs) == {
        feature.input_tensor_name
    }

    _, xrai = explanation_metadata.vertex_explanation_spec(exported_model, "xrai", 20)
    assert xrai.xrai_attribution.step_count == 20 and "integrated_gradients_attribution" not in xrai
    with pytest.raises(ValueError, match="step_count"):
        explanation_metadata.explanation_spec("pixels", "probabilities", CLASSES, step_count=101)
    with pytest.raises(ValueError, match="unknown explanation method"):
        explanation_metadata.explanation_spec("pixels", "probabilities", CLASSES, "shap")


def test_a_model_without_xai_signatures_has_no_spec(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="no \\['xai_model', 'xai_preprocess'\\]"):
        explanation_metadata.xai_tensor_names(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no explanation spec"):
        explanation_metadata.vertex_explanation_spec(str(tmp_path))


@dsl.pipeline(name="export-only")
def _export_pipeline(model_dir: str):
    model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model, reimport=False)
    export_component(model=model.output)


def test_export_component_under_kfp_local(kfp_local, exported_model):
    model_dir = os.path.join(os.path.dirname(exported_model), "model")
    run_dir = run_pipeline(_export_pipeline, str(kfp_local), model_dir=model_dir)
    exported = output_artifact(task_outputs(run_dir, "export"), "exported_model")
    assert exported["metadata"]["labels"] == list(CLASSES)
    assert exported["metadata"]["input"] == "image_bytes"
    assert exported["metadata"]["explanation_signatures"] == ["xai_preprocess", "xai_model"]
    spec = exported["metadata"]["explanation_metadata"]
    assert spec["inputs"]["image"]["inputTensorName"] == "pixels"
    assert exported["metadata"]["explanation_parameters"] == {
        "integratedGradientsAttribution": {"stepCount": 50}
    }
    extra = os.path.join(exported["uri"], "assets.extra")
    assert read_json(os.path.join(extra, "explanation_metadata.json")) == spec
    assert os.path.exists(os.path.join(exported["uri"], "saved_model.pb"))
    serve = serving.load_signature(exported["uri"])
    buf = stdio.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buf, "JPEG")
    out = serve(image_bytes=tf.constant([buf.getvalue()]))
    assert out["label"].numpy()[0].decode() in CLASSES
