"""The train stage: backbones, the tf.data input pipeline, a real (tiny) training run."""

import os

import numpy as np
import pytest
from kfp import dsl

from components.common import labels as label_io
from components.common.io import read_json
from components.train import backbones, data, training
from components.train.component import train as train_component
from pipelines.run_local import output_artifact, run_pipeline, task_outputs


def test_classifier_outputs_float32_probabilities_per_class():
    model, base = backbones.build_classifier("MobileNetV3Small", 5, 32, weights="none")
    probs = model.predict(np.random.uniform(0, 255, (2, 32, 32, 3)), verbose=0)
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("probs").dtype_policy.compute_dtype == "float32"
    assert base.name in {layer.name for layer in model.layers}


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported backbone 'ResNet9000'.*EfficientNetB0"):
        backbones.build_classifier("ResNet9000", 3, 32, weights="none")


def test_weights_from_a_file(tmp_path):
    source = backbones.build_backbone("MobileNetV3Small", 32, "none")
    path = str(tmp_path / "mobilenet_notop.weights.h5")
    source.save_weights(path)
    loaded = backbones.build_backbone("MobileNetV3Small", 32, path)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        backbones.resolve_weights(str(tmp_path / "missing.h5"))


def test_input_pipeline_yields_resized_batches_with_labels(tfrecord_dataset):
    labels = label_io.read_labels(os.path.join(tfrecord_dataset, "labels.txt"))
    images, y = next(iter(data.make_dataset(tfrecord_dataset, "train", 40, 8, training=True)))
    assert images.shape[1:] == (40, 40, 3) and images.dtype.name == "float32"
    assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 255.0
    assert set(y.numpy()) <= set(range(len(labels)))
    eval_count = sum(
        int(b[1].shape[0]) for b in data.make_dataset(tfrecord_dataset, "valid", 40, 8)
    )
    stats = read_json(os.path.join(tfrecord_dataset, "stats.json"))
    assert eval_count == stats["splits"]["valid"]


@pytest.fixture(scope="module")
def trained_model_dir(tfrecord_dataset, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("train") / "model")
    metrics = training.train(
        tfrecord_dataset,
        model_dir,
        backbone="MobileNetV3Small",
        weights="none",
        image_size=32,
        batch_size=8,
        epochs=2,
        early_stopping_patience=0,
    )
    return model_dir, metrics


def test_train_writes_a_complete_model_directory(trained_model_dir, tfrecord_dataset):
    model_dir, metrics = trained_model_dir
    for name in (
        "model.keras",
        "labels.txt",
        "training_config.json",
        "checkpoints/best.weights.h5",
    ):
        assert os.path.exists(os.path.join(model_dir, name)), name
    events = [f for _, _, fs in os.walk(os.path.join(model_dir, "logs")) for f in fs]
    assert any(f.startswith("events.out.tfevents") for f in events)
    config = training.read_config(model_dir)
    assert config["labels"] == label_io.read_labels(os.path.join(tfrecord_dataset, "labels.txt"))
    assert config["image_size"] == 32 and len(config["history"]["loss"]) == 2
    assert metrics["epochs_run"] == 2 and 1 <= metrics["best_epoch"] <= 2
    # The kept epoch is the one with the lowest validation loss.
    assert metrics["val_loss"] == min(config["history"]["val_loss"])


def test_saved_model_reloads_with_the_best_weights(trained_model_dir, tfrecord_dataset):
    model_dir, metrics = trained_model_dir
    model = training.load_model(model_dir)
    valid = data.make_dataset(tfrecord_dataset, "valid", 32, 8)
    _, accuracy = model.evaluate(valid, verbose=0)
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-6)


@dsl.pipeline(name="train-only")
def _train_pipeline(dataset_dir: str):
    dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset, reimport=False)
    train_component(
        dataset=dataset.output,
        backbone="MobileNetV3Small",
        weights="none",
        image_size=32,
        batch_size=16,
        epochs=1,
    )


def test_train_component_under_kfp_local(kfp_local, tfrecord_dataset):
    run_dir = run_pipeline(_train_pipeline, str(kfp_local), dataset_dir=tfrecord_dataset)
    outputs = task_outputs(run_dir, "train")
    model = output_artifact(outputs, "model")
    metrics = output_artifact(outputs, "metrics")["metadata"]
    assert os.path.exists(os.path.join(model["uri"], "model.keras"))
    assert model["metadata"]["backbone"] == "MobileNetV3Small"
    assert metrics["epochs_run"] == 1 and 0.0 <= metrics["val_accuracy"] <= 1.0
