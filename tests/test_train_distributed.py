"""Distributed training: the strategy a cluster gets, Vertex AI's CLUSTER_SPEC, and a real
two-worker MultiWorkerMirroredStrategy run on loopback."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.common import model_dir as model_dir_lib
from components.train import distribution

REPO = Path(__file__).resolve().parents[1]

VERTEX_CLUSTER_SPEC = {
    "cluster": {
        "workerpool0": ["cmle-training-workerpool0-1a2b-0:2222"],
        "workerpool1": [
            "cmle-training-workerpool1-1a2b-0:2222",
            "cmle-training-workerpool1-1a2b-1:2222",
        ],
    },
    "environment": "cloud",
    "task": {"type": "workerpool1", "index": 1},
    "job": '{"python_module":"","package_uris":[]}',
}


def test_vertex_cluster_spec_becomes_tf_config():
    environ = {"CLUSTER_SPEC": json.dumps(VERTEX_CLUSTER_SPEC)}
    config = distribution.load_tf_config(environ)
    assert config == {
        "cluster": {
            "chief": ["cmle-training-workerpool0-1a2b-0:2222"],
            "worker": [
                "cmle-training-workerpool1-1a2b-0:2222",
                "cmle-training-workerpool1-1a2b-1:2222",
            ],
        },
        "task": {"type": "worker", "index": 1},
        "environment": "cloud",
    }
    assert json.loads(environ["TF_CONFIG"]) == config  # where tf.distribute reads it
    assert distribution.num_workers(config) == 3 and not distribution.is_chief(config)
    assert distribution.strategy_kind(config, num_gpus=1) == "multi_worker"
    # The primary pool's replica is the chief.
    primary = {**VERTEX_CLUSTER_SPEC, "task": {"type": "workerpool0", "index": 0}}
    assert distribution.is_chief(distribution.tf_config_from_cluster_spec(primary))


def test_an_existing_tf_config_wins_and_no_cluster_means_one_machine():
    tf_config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    environ = {
        "TF_CONFIG": json.dumps(tf_config),
        "CLUSTER_SPEC": json.dumps(VERTEX_CLUSTER_SPEC),
    }
    assert distribution.load_tf_config(environ) == tf_config
    assert distribution.is_chief(tf_config)  # worker 0 of a cluster without chief
    assert not distribution.is_chief({**tf_config, "task": {"type": "worker", "index": 1}})
    assert distribution.load_tf_config({}) == {}
    assert distribution.is_chief({}) and distribution.num_workers({}) == 1


def test_strategy_choice():
    one = {"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}
    assert distribution.strategy_kind({}, num_gpus=0) == "default"
    assert distribution.strategy_kind({}, num_gpus=1) == "default"
    assert distribution.strategy_kind({}, num_gpus=4) == "mirrored"
    assert distribution.strategy_kind(one, num_gpus=2) == "mirrored"
    two = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}
    assert distribution.strategy_kind(two, num_gpus=0) == "multi_worker"
    with pytest.raises(ValueError, match="parameter-server clusters are not supported"):
        distribution.strategy_kind({**two, "cluster": {**two["cluster"], "ps": ["c:1"]}}, 0)
    with pytest.raises(ValueError, match="only chief and worker tasks train"):
        distribution.strategy_kind({**two, "task": {"type": "evaluator", "index": 0}}, 0)
    assert distribution.make_strategy({}) is tf.distribute.get_strategy()
    assert distribution.strategy_name(tf.distribute.get_strategy()) == "default strategy"


def test_workers_split_files_when_there_are_enough_of_them():
    policy = tf.data.experimental.AutoShardPolicy
    assert distribution.autoshard_policy(num_files=8, workers=2) == policy.FILE
    assert distribution.autoshard_policy(num_files=2, workers=2) == policy.FILE
    assert distribution.autoshard_policy(num_files=1, workers=2) == policy.DATA


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_one_model_written_by_the_chief(tfrecord_dataset, tmp_path):
    model_dir = tmp_path / "model"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    command = [
        *[sys.executable, "-m", "components.train"],
        *["--dataset-dir", tfrecord_dataset, "--model-dir", str(model_dir)],
        *["--backbone", "MobileNetV3Small", "--weights", "none", "--image-size", "32"],
        *["--batch-size", "4", "--epochs", "1", "--early-stopping-patience", "0"],
        *["--curves-path", str(tmp_path / "curves.html")],
    ]
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("CLUSTER_SPEC", None)
        with (
            open(tmp_path / f"worker{index}.out", "w") as out,
            open(tmp_path / f"worker{index}.err", "w") as err,
        ):
            workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err))
    try:
        for process in workers:
            process.wait(timeout=420)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
    outs = [(tmp_path / f"worker{i}.out").read_text() for i in range(2)]
    errs = [(tmp_path / f"worker{i}.err").read_text() for i in range(2)]
    assert [p.returncode for p in workers] == [0, 0], "\n".join(
        f"--- worker {i} (exit {p.returncode}):\n{errs[i][-3000:]}" for i, p in enumerate(workers)
    )

    chief_pid = workers[0].pid
    assert sorted(os.listdir(model_dir)) == sorted(
        [
            "checkpoints",
            "curves.html",
            "history.csv",
            "labels.txt",
            "logs",
            "model.keras",
            "training_config.json",
        ]
    )
    # TensorBoard names its event files after the writing process: only the chief's.
    events = [f for _, _, files in os.walk(model_dir / "logs") for f in files]
    assert events and all(f".{chief_pid}." in f for f in events), events
    config = model_dir_lib.read_config(str(model_dir))
    settings = config["training"]
    assert settings["strategy"] == "MultiWorkerMirroredStrategy"
    assert settings["workers"] == 2 and settings["replicas"] == 2
    assert settings["global_batch_size"] == 8 and settings["steps_per_execution"] == 1
    assert config["history"]["epoch"] == [1]
    # Both workers saw the same, globally reduced, epoch metrics.
    results = [json.loads(out[out.index("\n{") :]) for out in outs]
    assert results[0]["val_loss"] == results[1]["val_loss"] == config["metrics"]["val_loss"]
    assert (tmp_path / "curves.html").read_text() == (model_dir / "curves.html").read_text()

    model = model_dir_lib.load_model(str(model_dir))
    probs = model.predict(np.full((3, 32, 32, 3), 100.0, np.float32), verbose=0)
    assert probs.shape == (3, len(config["labels"]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert re.search(r"strategy MultiWorkerMirroredStrategy: 2 replica", errs[1])
