"""The export stage: a serving SavedModel that carries preprocessing and labels."""

import io as stdio
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from kfp import dsl
from PIL import Image

from components.common import labels as label_io, preprocessing
from components.export import saved_model
from components.export.component import export as export_component
from components.train import training
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.sample_data import CLASSES


def _jpeg_bytes(paths):
    return [Path(p).read_bytes() for p in paths]


def test_signature_takes_image_bytes_and_returns_named_outputs(exported_model):
    serve = saved_model.load_signature(exported_model)
    (inputs,) = serve.structured_input_signature[1].values()
    assert inputs.name == "image_bytes" and inputs.dtype == tf.string
    assert set(serve.structured_outputs) == set(saved_model.OUTPUT_NAMES)


def test_labels_travel_with_the_model(exported_model):
    path = os.path.join(exported_model, "assets.extra", "labels.txt")
    assert label_io.read_labels(path) == list(CLASSES)


def test_served_predictions_match_the_keras_model(exported_model, sample_data):
    """Preprocessing inside the SavedModel is exactly the training preprocessing."""
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(sample_data.image_dir) for f in fs)[
        :6
    ]
    out = saved_model.load_signature(exported_model)(image_bytes=tf.constant(_jpeg_bytes(paths)))
    model = training.load_model(os.path.join(os.path.dirname(exported_model), "model"))
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
    out = saved_model.load_signature(exported_model)(image_bytes=tf.constant(encoded))
    assert out["probabilities"].shape == (2, len(CLASSES))


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
    assert os.path.exists(os.path.join(exported["uri"], "saved_model.pb"))
    serve = saved_model.load_signature(exported["uri"])
    buf = stdio.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buf, "JPEG")
    out = serve(image_bytes=tf.constant([buf.getvalue()]))
    assert out["label"].numpy()[0].decode() in CLASSES
