"""Tests of the deploy stage: model repository, deploy_local, the component.

The model server itself is tested in test_server.py; here it runs once, started and
stopped by deploy_local inside the component's kfp-local run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.classification import predictions as classification_predictions
from components.deploy import local, model_repository
from components.deploy.model_repository import TMP_PREFIX, latest_version, publish
from components.detection import predictions as detection_predictions
from pipelines.sample_data import CLASSES

LABELS = list(CLASSES)
MODEL_NAME = "shapes"


def _servers_on(repository: str) -> list[int]:
    """Pids of running model servers (any parent) serving ``repository``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"components.deploy.server" in args and repository.encode() in args:
            pids.append(int(pid))
    return pids


# --- model repository ---------------------------------------------------------------


def test_publish_versions_and_idempotence(exported_model, tmp_path):
    repo = str(tmp_path / "repo")

    first = publish(exported_model, repo, MODEL_NAME)
    assert first["version"] == 1 and not first["reused"]
    assert first["model_dir"] == os.path.join(repo, MODEL_NAME, "1")
    assert os.path.isfile(os.path.join(first["model_dir"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(first["model_dir"], "assets.extra", "labels.txt"))

    again = publish(exported_model, repo, MODEL_NAME)
    assert again["version"] == 1 and again["reused"]
    assert again["digest"] == first["digest"]
    assert sorted(os.listdir(os.path.join(repo, MODEL_NAME))) == ["1"]

    changed = tmp_path / "changed_export"
    shutil.copytree(exported_model, changed)
    (changed / "assets.extra" / "labels.txt").write_text("a\nb\nc\nd\n")
    second = publish(str(changed), repo, MODEL_NAME)
    assert second["version"] == 2 and not second["reused"]
    assert second["digest"] != first["digest"]
    assert latest_version(repo, MODEL_NAME) == (2, os.path.join(repo, MODEL_NAME, "2"))

    # The first export again after another one: a new latest version, so that the
    # repository serves what was published last (TF Serving serves the highest).
    rollback = publish(exported_model, repo, MODEL_NAME)
    assert rollback["version"] == 3 and rollback["digest"] == first["digest"]
    assert latest_version(repo, MODEL_NAME)[0] == 3
    assert publish(exported_model, repo, MODEL_NAME)["version"] == 3

    entries = os.listdir(os.path.join(repo, MODEL_NAME))
    assert sorted(entries) == ["1", "2", "3"], "no temporary directory may be left behind"
    assert model_repository.list_versions(repo, MODEL_NAME) == [1, 2, 3]


def test_latest_version_ignores_partial_and_temporary_dirs(exported_model, tmp_path):
    repo = tmp_path / "repo"
    publish(exported_model, str(repo), MODEL_NAME)
    (repo / MODEL_NAME / f"{TMP_PREFIX}abc").mkdir()  # a copy in progress
    (repo / MODEL_NAME / "7").mkdir()  # a numeric dir without a SavedModel
    assert latest_version(str(repo), MODEL_NAME)[0] == 1
    # A new version is numbered past every numeric directory, so it never lands in one.
    changed = tmp_path / "changed"
    shutil.copytree(exported_model, changed)
    (changed / "extra.txt").write_text("x")
    assert publish(str(changed), str(repo), MODEL_NAME)["version"] == 8


def test_latest_version_without_versions_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no version of model 'missing'"):
        latest_version(str(tmp_path), "missing")


def test_publish_rejects_a_directory_without_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        publish(str(tmp_path), str(tmp_path / "repo"), MODEL_NAME)
    assert not (tmp_path / "repo" / MODEL_NAME).exists()


# --- deploy_local ---------------------------------------------------------------------
# Its full run (publish, serve, probe, stop) is tested through the component below: a
# server start-up costs seconds, so the file runs it once.


def test_wait_until_ready_reports_a_server_that_exits(tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('model failed to load'); sys.exit(3)"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    with pytest.raises(local.DeployError, match=r"(?s)exited with code 3.*model failed to load"):
        local.wait_until_ready(process, MODEL_NAME, local.free_port(), 60, str(log_path))


def test_wait_until_ready_times_out_and_stop_server_kills_a_stuck_server(tmp_path):
    log_path = tmp_path / "server.log"
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('loading', flush=True); time.sleep(60)"
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=log)
    try:
        with pytest.raises(TimeoutError, match="(?s)not ready within.*loading"):
            local.wait_until_ready(process, MODEL_NAME, local.free_port(), 1.5, str(log_path))
    finally:
        code = local.stop_server(process, timeout_s=1)
    assert code == -signal.SIGKILL


def test_deploy_local_without_labels_fails_before_starting_a_server(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        local.deploy_local(str(tmp_path), model_repository=str(tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


CLASSIFIER_OUTPUTS = ["class_index", "label", "probabilities", "score"]
DETECTOR_OUTPUTS = [
    "detection_boxes",
    "detection_classes",
    "detection_labels",
    "detection_multiclass_scores",
    "detection_scores",
    "num_detections",
]


def test_check_probe_answer_rejects_malformed_classifications():
    good = {"probabilities": [0.7, 0.1, 0.1, 0.1], "class_index": 0, "label": "circle"}
    answer = {"predictions": [good]}
    assert local.check_probe_answer(answer, LABELS, CLASSIFIER_OUTPUTS) == good
    assert classification_predictions.check_answer(good, LABELS) == good
    for bad in (
        {"predictions": []},
        {"predictions": [good, good]},
        {"predictions": [{**good, "label": "dog"}]},
        {"predictions": [{**good, "probabilities": [0.5, 0.1, 0.1, 0.1]}]},
        {"predictions": [{**good, "probabilities": [1.0]}]},
        {"predictions": [{**good, "class_index": 2}]},
    ):
        with pytest.raises(local.DeployError):
            local.check_probe_answer(bad, LABELS, CLASSIFIER_OUTPUTS)


def test_check_probe_answer_rejects_malformed_detections():
    good = {
        "detection_boxes": [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.0] * 4],
        "detection_classes": [2.0, 1.0, 0.0],  # from 1; 0 past num_detections
        "detection_scores": [0.9, 0.4, 0.0],
        "num_detections": 2.0,
        "detection_labels": ["square", "circle", ""],
    }
    assert local.check_probe_answer({"predictions": [good]}, LABELS, DETECTOR_OUTPUTS) == good
    assert detection_predictions.check_answer(good, LABELS) == good
    summary = detection_predictions.answer_summary(good)
    assert summary == {"num_detections": 2, "label": "square", "score": 0.9}
    nothing = {**good, "num_detections": 0.0}
    summary = detection_predictions.answer_summary(nothing)
    assert summary == {"num_detections": 0, "label": "", "score": 0.0}
    for bad, message in (
        ({"predictions": [good, good]}, "one prediction"),
        ({"predictions": [{"label": "circle"}]}, "has no ['detection_boxes'"),
        (
            {
                "predictions": [
                    {**good, "detection_boxes": [[0.1, 0.2, 1.5, 0.6], *[[0.0] * 4] * 2]}
                ]
            },
            "inside [0, 1]",
        ),
        ({"predictions": [{**good, "detection_boxes": [[0.1, 0.2, 0.5]] * 3}]}, "4 normalized"),
        ({"predictions": [{**good, "detection_classes": [5.0, 1.0, 0.0]}]}, "within 1..4"),
        ({"predictions": [{**good, "detection_classes": [0.0, 1.0, 0.0]}]}, "within 1..4"),
        ({"predictions": [{**good, "detection_scores": [1.2, 0.4, 0.0]}]}, "a score"),
        ({"predictions": [{**good, "num_detections": 4.0}]}, "num_detections 4.0"),
        ({"predictions": [{**good, "num_detections": 1.5}]}, "num_detections 1.5"),
        ({"predictions": [{**good, "detection_labels": ["x", "circle", ""]}]}, "do not name"),
    ):
        with pytest.raises(local.DeployError, match=re.escape(message)):
            local.check_probe_answer(bad, LABELS, DETECTOR_OUTPUTS)


def test_the_probe_check_follows_the_signature_outputs():
    assert local.probe_check(CLASSIFIER_OUTPUTS) is classification_predictions
    assert local.probe_check(DETECTOR_OUTPUTS) is detection_predictions
    answer = {"label": "circle", "score": 0.7}
    assert local.probe_check(CLASSIFIER_OUTPUTS).answer_summary(answer) == answer


# --- the KFP component ----------------------------------------------------------------


def test_component_deploys_and_verifies_in_kfp_local(kfp_local, exported_model, tmp_path):
    from kfp import dsl

    from components.deploy.component import deploy
    from components.deploy.server.__main__ import parse_args

    repo = str(tmp_path / "model_repository")

    # A server already listening on the advertised port must not get in the way: the
    # check runs on a free port of its own.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        @dsl.pipeline(name="deploy-test")
        def pipeline():
            model = dsl.importer(
                artifact_uri=exported_model, artifact_class=dsl.Model, reimport=False
            )
            evaluation = dsl.importer(
                artifact_uri=str(tmp_path / "metrics"),
                artifact_class=dsl.Metrics,
                reimport=False,
                metadata={"accuracy": 0.93, "champion_accuracy": 0.9, "deploy": 1.0},
            )
            deploy(
                model=model.output,
                evaluation=evaluation.output,
                model_name="kfp-model",
                model_repository=repo,
                port=port,
            )

        pipeline()

    assert _servers_on(repo) == [], "the check's model server is still running"
    assert latest_version(repo, "kfp-model") == (1, os.path.join(repo, "kfp-model", "1"))
    assert os.path.isfile(os.path.join(repo, "kfp-model", "1", "saved_model.pb"))

    [run] = [p for p in kfp_local.iterdir() if p.is_dir()]
    task_dir = run / "deploy"
    info = json.loads((task_dir / "endpoint" / "endpoint.json").read_text())
    assert info["verified"] is True
    assert (info["model_name"], info["version"]) == ("kfp-model", 1)
    assert info["model_repository"] == repo
    assert info["model_dir"] == os.path.join(repo, "kfp-model", "1")
    assert info["url"] == f"http://127.0.0.1:{port}/v1/models/kfp-model:predict"
    assert info["probe"]["label"] in LABELS
    assert 0.0 < info["probe"]["score"] <= 1.0 and info["probe"]["latency_ms"] > 0
    # The evaluation it passed the gate with, recorded with the version (not in it).
    record = json.loads(Path(info["evaluation_record"]).read_text())
    assert info["evaluation_record"] == os.path.join(repo, "kfp-model", "evaluations", "1.json")
    assert record["version"] == 1 and record["digest"].startswith("sha256:")
    assert record["evaluation"] == {"accuracy": 0.93, "champion_accuracy": 0.9, "deploy": 1.0}
    assert model_repository.list_versions(repo, "kfp-model") == [1]

    # The serve command serves this repository and model at the advertised URL.
    argv = shlex.split(info["serve_command"])
    assert argv[1:3] == ["-m", "components.deploy.server"]
    args = parse_args(argv[3:])
    assert (args.model_repository, args.model_name, args.http_port, args.host) == (
        repo,
        "kfp-model",
        port,
        "127.0.0.1",
    )
    assert args.model_version is None

    # The same as the artifact's metadata, which KFP and Vertex show.
    executor_output = json.loads((task_dir / "executor_output.json").read_text())
    [artifact] = executor_output["artifacts"]["endpoint"]["artifacts"]
    metadata = artifact["metadata"]
    assert metadata["url"] == info["url"] and metadata["verified"] is True
    assert metadata["version"] == 1 and metadata["model_dir"] == info["model_dir"]
    assert metadata["serve_command"] == info["serve_command"]


def test_find_champion_component_finds_the_served_version(kfp_local, exported_model, tmp_path):
    """The local champion: none in an empty (or no) repository, then the highest version."""
    from kfp import dsl

    from components.deploy.component import find_champion
    from pipelines.run_local import run_pipeline, task_outputs

    def champion(repository: str) -> str:
        @dsl.pipeline(name="champion-test")
        def pipeline():
            find_champion(model_name=MODEL_NAME, model_repository=repository)

        run = run_pipeline(pipeline, str(kfp_local))
        return task_outputs(run, "find-champion")["parameterValues"]["Output"]

    repo = str(tmp_path / "repo")
    assert champion("") == "" and champion(repo) == ""
    publish(exported_model, repo, MODEL_NAME)
    changed = tmp_path / "changed"
    shutil.copytree(exported_model, changed)
    (changed / "extra.txt").write_text("x")
    publish(str(changed), repo, MODEL_NAME)
    assert champion(repo) == os.path.join(repo, MODEL_NAME, "2")
