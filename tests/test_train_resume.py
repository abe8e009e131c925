"""Resuming training: a run killed mid-way (preemption) and restarted, and a new run that
continues from a previous run's model."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.common import model_dir as model_dir_lib
from components.train import backbones, training

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "MobileNetV3Small", "--image-size", "32", "--batch-size", "8"]


def _train_command(dataset_dir: str, model_dir: Path, epochs: int) -> list[str]:
    return [
        *[sys.executable, "-m", "components.train"],
        *["--dataset-dir", dataset_dir, "--model-dir", str(model_dir)],
        *["--weights", "none", "--epochs", str(epochs), "--early-stopping-patience", "0"],
        *TINY,
    ]


def test_a_killed_run_resumes_at_its_next_epoch(tfrecord_dataset, tmp_path):
    model_dir = tmp_path / "model"
    metadata = model_dir / "backup" / "phase1" / "training_metadata.json"
    command = _train_command(tfrecord_dataset, model_dir, epochs=4)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        # BackupAndRestore writes its metadata once an epoch is complete and backed up.
        while not metadata.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    backed_up = json.loads(metadata.read_text())["epoch"]  # epochs completed before the kill
    assert 1 <= backed_up < 4
    assert not (model_dir / "model.keras").exists()

    second = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr
    # Keras prints "Epoch n/4" as each epoch starts: the restart begins after the backup.
    assert re.findall(r"^Epoch (\d+)/4", second.stdout, re.M) == [
        str(e) for e in range(backed_up + 1, 5)
    ]
    assert f"phase 1: resuming from its backup at epoch {backed_up + 1}" in second.stderr
    config = model_dir_lib.read_config(str(model_dir))
    assert config["history"]["epoch"] == [1, 2, 3, 4]  # each epoch once, across both runs
    assert all(np.isfinite(config["history"]["val_loss"]))
    assert config["metrics"]["epochs_run"] == 4
    assert json.loads(second.stdout[second.stdout.index("{") :])["epochs_run"] == 4
    rows = (model_dir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    assert (model_dir / "model.keras").exists() and not (model_dir / "backup").exists()


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> str:
    """A no-top MobileNetV3Small weights file: "pretrained" weights without a download."""
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v3_small_notop.weights.h5")
    backbones.build_backbone("MobileNetV3Small", 32, "none").save_weights(path)
    return path


def test_training_continues_from_a_previous_runs_model(
    tfrecord_dataset, backbone_weights, tmp_path, capsys
):
    settings = dict(
        backbone="MobileNetV3Small",
        weights=backbone_weights,
        image_size=32,
        batch_size=8,
        fine_tune_epochs=0,
        early_stopping_patience=0,
    )
    first = str(tmp_path / "first")
    training.train(tfrecord_dataset, first, epochs=1, **settings)
    capsys.readouterr()

    # Learning rate 0 with a frozen backbone: the continued model must equal the first.
    second = str(tmp_path / "second")
    metrics = training.train(
        tfrecord_dataset, second, epochs=2, learning_rate=0.0, initial_model=first, **settings
    )
    assert re.findall(r"Epoch (\d+)/2", capsys.readouterr().out) == ["2"]
    before = model_dir_lib.load_model(first).get_weights()
    after = model_dir_lib.load_model(second).get_weights()
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    first_history = model_dir_lib.read_config(first)["history"]
    config = model_dir_lib.read_config(second)
    assert config["training"]["initial_epoch"] == 1 and config["training"]["initial_model"] == first
    assert config["history"]["epoch"] == [1, 2]
    assert config["history"]["val_loss"][0] == first_history["val_loss"][0]
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 2

    with pytest.raises(ValueError, match="initial_model does not match.*image_size: 32 there"):
        training.train(
            tfrecord_dataset,
            str(tmp_path / "third"),
            epochs=3,
            initial_model=first,
            **{**settings, "image_size": 40},
        )
