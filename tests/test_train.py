"""The train stage: backbones, settings, learning curves, real (tiny) training runs in
one and two phases, and the KFP component."""

import logging
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from kfp import dsl

from components.common import labels as label_io, model_dir as model_dir_lib
from components.common.io import read_json
from components.train import backbones, curves, data, hardware, phases, training
from components.train.component import train as train_component
from pipelines.run_local import output_artifact, run_pipeline, task_outputs

TINY = {"backbone": "MobileNetV3Small", "image_size": 32, "batch_size": 8}


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


def test_unfreezing_the_top_layers_keeps_batchnorm_frozen():
    _, base = backbones.build_classifier("MobileNetV3Small", 3, 32, "none", pretrained=True)
    base.trainable = False
    unfrozen = backbones.unfreeze_top_layers(base, 10)
    assert unfrozen == [
        "expanded_conv_10_squeeze_excite_conv_1",
        "expanded_conv_10_project",
        "conv_1",
    ]
    trainable = [layer for layer in base.layers if layer.trainable]
    assert trainable and set(trainable) <= set(base.layers[-10:])
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    all_layers = backbones.unfreeze_top_layers(base, -1)
    bn = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(all_layers) == sum(1 for layer in base.layers if layer.weights) - len(bn)


def test_precision_jit_and_steps_per_execution_follow_the_hardware():
    cpu, volta, pascal = [], [(7, 0)], [(6, 1)]
    assert hardware.resolve_precision("auto", cpu) == "float32"
    assert hardware.resolve_precision("auto", volta + [(8, 9)]) == "mixed_float16"
    assert hardware.resolve_precision("auto", pascal) == "float32"
    assert hardware.resolve_precision("mixed_bfloat16", cpu) == "mixed_bfloat16"
    assert hardware.resolve_jit_compile("auto", cpu) is False
    assert hardware.resolve_jit_compile("auto", volta) is True
    assert hardware.resolve_jit_compile("False", volta) is False
    assert hardware.resolve_steps_per_execution(0, 100, cpu) == 1
    assert hardware.resolve_steps_per_execution(0, 100, volta) == 25  # 4 calls, not 32+32+32+4
    assert hardware.resolve_steps_per_execution(0, 128, volta) == 32
    assert hardware.resolve_steps_per_execution(0, 5, volta) == 5
    assert hardware.resolve_steps_per_execution(8, 100, cpu) == 8  # 13 calls: 104 steps
    assert hardware.resolve_steps_per_execution(0, 33, volta) == 17
    with pytest.raises(ValueError, match="precision must be one of auto, float32"):
        hardware.resolve_precision("float64", cpu)
    with pytest.raises(ValueError, match="jit_compile must be one of auto, true, false"):
        hardware.resolve_jit_compile("maybe", cpu)
    with pytest.raises(ValueError, match="steps_per_execution must be 0"):
        hardware.resolve_steps_per_execution(-1, 10, cpu)


def test_mixed_float16_scales_the_loss_and_keeps_float32_probabilities():
    with hardware.dtype_policy("mixed_float16"):
        model, base = backbones.build_classifier("MobileNetV3Small", 3, 32, "none")
        phases.compile_model(model, 1e-3, jit_compile=False, steps_per_execution=1)
    assert keras.config.dtype_policy().name == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert base.get_layer("conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"precision": "float64"}, "precision must be one of"),
        ({"jit_compile": "sometimes"}, "jit_compile must be one of"),
        ({"steps_per_execution": -2}, "steps_per_execution must be 0"),
        ({"fine_tune_layers": -3}, "fine_tune_layers must be -1"),
        ({"epochs": 0}, "nothing to train: epochs"),
    ],
)
def test_invalid_settings_are_clear_errors(tfrecord_dataset, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        training.train(tfrecord_dataset, str(tmp_path / "model"), weights="none", **TINY, **setting)


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


def _history(epochs=4, boundary=2):
    return {
        "epoch": list(range(1, epochs + 1)),
        "phase": [1 if e <= boundary else 2 for e in range(1, epochs + 1)],
        "loss": [1.5, 1.2, float("nan"), 0.8][:epochs],
        "val_loss": [1.4, 1.3, 1.0, 1.1][:epochs],
        "accuracy": [0.3, 0.5, 0.6, 0.7][:epochs],
        "val_accuracy": [0.25, 0.5, 0.75, 0.7][:epochs],
        "learning_rate": [1e-3, 1e-3, 1e-4, 0.0][:epochs],
    }


def test_curves_page_is_self_contained_with_both_splits_and_the_phase_boundary():
    page = curves.render_html(
        _history(), title="Demo <run>", phase_boundary=2, best_epoch=3, facts={"batch": 8}
    )
    assert page.startswith("<!DOCTYPE html>") and "Demo &lt;run&gt;" in page
    assert page.count("<svg") == 2
    # Train and validation lines in both charts; the NaN splits the train loss in two.
    assert re.findall(r'data-name="(\w+)"', page) == [
        *["train", "train", "validation"],
        *["train", "validation"],
    ]
    assert page.count('class="phase-boundary"') == 2 and "fine-tuning" in page
    assert page.count('class="best-epoch"') == 2
    assert re.search(r'<tr class="best"><td>3</td><td>2</td>', page)
    assert "<script" not in page and "src=" not in page and "href=" not in page
    one_phase = curves.render_html(_history(epochs=1), phase_boundary=None)
    assert "phase-boundary" not in one_phase and one_phase.count("<svg") == 2


@pytest.fixture(scope="module")
def trained_model_dir(tfrecord_dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    model_dir = str(base / "model")
    metrics = training.train(
        tfrecord_dataset,
        model_dir,
        weights="none",
        epochs=2,
        early_stopping_patience=0,
        curves_path=str(base / "curves.html"),
        **TINY,
    )
    return model_dir, metrics


def test_train_writes_a_complete_model_directory(trained_model_dir, tfrecord_dataset):
    model_dir, metrics = trained_model_dir
    for name in (
        "model.keras",
        "labels.txt",
        "training_config.json",
        "history.csv",
        "curves.html",
        "checkpoints/best.weights.h5",
    ):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed once saved
    events = [f for _, _, fs in os.walk(os.path.join(model_dir, "logs")) for f in fs]
    assert any(f.startswith("events.out.tfevents") for f in events)
    config = model_dir_lib.read_config(model_dir)
    assert config["labels"] == label_io.read_labels(os.path.join(tfrecord_dataset, "labels.txt"))
    assert config["image_size"] == 32 and config["history"]["epoch"] == [1, 2]
    assert config["history"]["phase"] == [1, 1]
    assert config["training"]["precision"] == "float32" and not config["training"]["jit_compile"]
    assert metrics["epochs_run"] == 2 and 1 <= metrics["best_epoch"] <= 2
    assert metrics["phase_two_epochs"] == 0 and metrics["images_per_second"] > 0
    # The kept epoch is the one with the lowest validation loss.
    assert metrics["val_loss"] == min(config["history"]["val_loss"])
    page = Path(os.path.dirname(model_dir), "curves.html").read_text()
    assert page == Path(os.path.join(model_dir, "curves.html")).read_text()
    assert "phase-boundary" not in page and f"{config['history']['val_loss'][0]:.4g}" in page


def test_saved_model_reloads_with_the_best_weights(trained_model_dir, tfrecord_dataset):
    model_dir, metrics = trained_model_dir
    model = model_dir_lib.load_model(model_dir)
    valid = data.make_dataset(tfrecord_dataset, "valid", 32, 8)
    _, accuracy = model.evaluate(valid, verbose=0)
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-6)


def test_mixed_bfloat16_trains_on_cpu_and_saves_a_float32_model(tfrecord_dataset, tmp_path):
    model_dir = str(tmp_path / "model")
    metrics = training.train(
        tfrecord_dataset,
        model_dir,
        weights="none",
        epochs=1,
        precision="mixed_bfloat16",
        jit_compile="false",
        **TINY,
    )
    assert keras.config.dtype_policy().name == "float32"  # restored after training
    settings = model_dir_lib.read_config(model_dir)["training"]
    assert settings["precision"] == "mixed_bfloat16" and settings["steps_per_execution"] == 1
    assert np.isfinite(metrics["loss"]) and metrics["epochs_run"] == 1
    model = model_dir_lib.load_model(model_dir)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    probs = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> str:
    """A no-top MobileNetV3Small weights file: "pretrained" weights without a download."""
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v3_small_notop.weights.h5")
    backbones.build_backbone("MobileNetV3Small", 32, "none").save_weights(path)
    return path


def _weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Each layer's weights by name, the backbone's layers included."""
    layers = []
    for layer in model.layers:
        layers += layer.layers if isinstance(layer, keras.Model) else [layer]
    return {
        layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers if layer.weights
    }


def _changed(before: dict, after: dict) -> set[str]:
    return {
        name
        for name, weights in before.items()
        if any(not np.array_equal(a, b) for a, b in zip(weights, after[name], strict=True))
    }


def test_two_phases_and_a_restart_that_skips_the_finished_phase_one(
    tfrecord_dataset, backbone_weights, tmp_path, monkeypatch, capsys, caplog
):
    """Phase one trains the head on the frozen backbone; phase two only the top layers
    but BatchNormalization; a run restarted after phase one goes on with phase two."""
    model_dir = str(tmp_path / "model")
    settings = dict(
        weights=backbone_weights,
        epochs=2,
        learning_rate=1e-2,
        fine_tune_layers=10,
        fine_tune_epochs=2,
        fine_tune_learning_rate=1e-3,
        warmup_epochs=1,
        early_stopping_patience=0,
        **TINY,
    )
    # The model's weights whenever it is compiled: at the start of each phase it trains.
    snapshots = []
    compile_model = phases.compile_model

    def snapshot_and_compile(model, *args, **kwargs):
        snapshots.append(_weights_by_layer(model))
        compile_model(model, *args, **kwargs)

    monkeypatch.setattr(phases, "compile_model", snapshot_and_compile)
    # And before each load of saved weights: the last is the end of phase two.
    before_loads = []
    load_weights = phases.load_weights

    def snapshot_and_load(model, path):
        before_loads.append(_weights_by_layer(model))
        load_weights(model, path)

    monkeypatch.setattr(phases, "load_weights", snapshot_and_load)

    def preempted(*args, **kwargs):
        raise RuntimeError("preempted")

    with monkeypatch.context() as m:
        m.setattr(backbones, "unfreeze_top_layers", preempted)
        with pytest.raises(RuntimeError, match="preempted"):
            training.train(tfrecord_dataset, model_dir, **settings)
    assert read_json(os.path.join(model_dir, "backup", "phase1.json")) == {"end_epoch": 2}
    first_run = capsys.readouterr().out
    assert "Epoch 1/2" in first_run and "Epoch 2/2" in first_run
    initial = snapshots[0]

    with caplog.at_level(logging.INFO, logger="components.train.training"):
        metrics = training.train(tfrecord_dataset, model_dir, **settings)
    second_run = capsys.readouterr().out
    assert "phase 1 finished before a restart" in caplog.text
    assert re.findall(r"Epoch (\d+)/4", second_run) == ["3", "4"]
    # snapshots[1]: the restarted run's model as phase two compiles it, on phase one's
    # weights (the restart skips phase one, so nothing compiles for it).
    after_phase_one, after_phase_two = snapshots[1], before_loads[-1]

    head = {"probs"}
    batchnorm = {
        layer.name
        for layer in backbones.build_backbone("MobileNetV3Small", 32, "none").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert batchnorm and all(len(initial[name]) == 4 for name in batchnorm)  # moving stats too
    # Phase one: the backbone, moving statistics included, as loaded; the head trained.
    assert _changed(initial, after_phase_one) == head
    # Phase two: the top 10 layers that have weights, BatchNormalization excepted.
    top = {"expanded_conv_10_squeeze_excite_conv_1", "expanded_conv_10_project", "conv_1"}
    assert _changed(after_phase_one, after_phase_two) - head == top
    assert not batchnorm & _changed(initial, after_phase_two)
    # The model kept is the best epoch's, from either phase.
    final = _weights_by_layer(model_dir_lib.load_model(model_dir))
    assert _changed(initial, final) <= head | top and not batchnorm & _changed(initial, final)

    config = model_dir_lib.read_config(model_dir)
    history = config["history"]
    assert history["epoch"] == [1, 2, 3, 4] and history["phase"] == [1, 1, 2, 2]
    assert config["training"]["phase_boundary"] == 2
    # Warm-up to the peak at the end of phase two's first epoch, then cosine decay to 0.
    assert history["learning_rate"][2] == pytest.approx(1e-3)
    assert history["learning_rate"][3] == pytest.approx(0.0, abs=1e-9)
    assert metrics["phase_one_epochs"] == 2 and metrics["phase_two_epochs"] == 2
    assert metrics["epochs_run"] == 4
    assert metrics["val_loss"] == min(history["val_loss"])
    assert 'class="phase-boundary"' in Path(os.path.join(model_dir, "curves.html")).read_text()
    assert not os.path.exists(os.path.join(model_dir, "backup"))


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
        steps_per_execution=2,
        cache=True,
    )


def test_train_component_under_kfp_local(kfp_local, tfrecord_dataset):
    run_dir = run_pipeline(_train_pipeline, str(kfp_local), dataset_dir=tfrecord_dataset)
    outputs = task_outputs(run_dir, "train")
    model = output_artifact(outputs, "model")
    metrics = output_artifact(outputs, "metrics")["metadata"]
    curves_artifact = output_artifact(outputs, "curves")
    assert os.path.exists(os.path.join(model["uri"], "model.keras"))
    assert model["metadata"]["backbone"] == "MobileNetV3Small"
    assert metrics["epochs_run"] == 1 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["phase_one_epochs"] == 1 and metrics["phase_two_epochs"] == 0
    assert metrics["replicas"] == 1 and metrics["global_batch_size"] == 16
    assert metrics["images_per_second"] > 0 and metrics["train_seconds"] > 0
    page = Path(curves_artifact["uri"]).read_text()
    assert page.count("<svg") == 2 and "MobileNetV3Small training curves" in page
    assert page == Path(os.path.join(model["uri"], "curves.html")).read_text()
    settings = model_dir_lib.read_config(model["uri"])["training"]
    assert settings["steps_per_execution"] == 2 and settings["cache"] is True
    # An epoch is whole calls of 2 steps, at least one pass over the train split.
    steps = settings["steps_per_epoch"]
    assert steps % 2 == 0 and steps >= data.steps_per_epoch(
        read_json(os.path.join(tfrecord_dataset, "stats.json"))["splits"]["train"], 16
    )
