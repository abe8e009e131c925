"""What runs the pipeline in the stage images, checked without Docker: the image list and
names, the host folders mounted for the inputs, the guard against tasks that did not
finish. tests/test_stage_images.py runs them for real."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from components.common.io import write_json
from components.images import BEAM_STAGES, STAGES, dataflow_worker_image, stage_image
from pipelines.build_images import image_builds
from pipelines.local_docker import (
    covering_folders,
    detection_input_folders,
    executor_output_file,
    input_folders,
    pipeline_images,
    serve_command,
)
from pipelines.run_local import ALWAYS_RUN, PipelineFailed, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_builds_are_every_stage_image_and_the_dataflow_workers(monkeypatch):
    monkeypatch.setenv("IMAGE_REGISTRY", "europe-docker.pkg.dev/acme/ml/")
    monkeypatch.setenv("IMAGE_TAG", "abc123")
    builds = image_builds()
    assert [b.image for b in builds if b.target is None] == [stage_image(s) for s in STAGES]
    assert [(b.stage, b.image) for b in builds if b.target == "dataflow-worker"] == [
        (s, f"europe-docker.pkg.dev/acme/ml/{s.replace('_', '-')}-dataflow:abc123")
        for s in BEAM_STAGES
    ]
    for build in builds:
        command = build.command(["--network", "host"])
        assert command[:4] == ["docker", "build", "--network", "host"]
        assert command[-3:] == ["-t", build.image, "."]
        dockerfile = (ROOT / build.dockerfile).read_text()
        if build.target:
            assert f" AS {build.target}\n" in dockerfile
    with pytest.raises(ValueError, match="not a Beam stage"):
        dataflow_worker_image("train")


def test_the_local_pipeline_runs_exactly_the_stage_images():
    from pipelines.pipeline import image_classification_pipeline

    assert pipeline_images(image_classification_pipeline) == sorted(stage_image(s) for s in STAGES)


def test_input_folders_cover_a_folder_tree_and_every_path_a_csv_lists(tmp_path):
    tree = tmp_path / "tree"
    (tree / "cat").mkdir(parents=True)
    assert input_folders(image_dir=str(tree)) == [str(tree)]

    listed = tmp_path / "csv"
    (listed / "rel" / "a").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere" / "b"
    elsewhere.mkdir(parents=True)
    labels = tmp_path / "labels" / "dict.txt"
    labels.parent.mkdir()
    labels.write_text("a\nb\n")
    csv = listed / "all.csv"
    lines = ["uri,label", "rel/a/1.jpg,a", f"{elsewhere}/2.jpg,b", "gs://bucket/3.jpg,a", '"x,a']
    csv.write_text("\n".join(lines) + "\n\n")
    folders = input_folders(csv_uri=str(listed / "*.csv"), labels_uri=str(labels))
    assert folders == sorted([str(listed), str(elsewhere), str(labels.parent)])
    assert input_folders(csv_uri="gs://b/x.csv", labels_uri="gs://b/dict.txt") == []


def test_detection_input_folders_cover_each_annotation_format_and_the_images_they_name(tmp_path):
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    assert detection_input_folders(voc_dir=str(voc)) == [str(voc)]

    coco, images = tmp_path / "coco" / "ann.json", tmp_path / "pictures"
    coco.parent.mkdir()
    coco.write_text("{}")
    images.mkdir()
    assert detection_input_folders(coco_json=str(coco), image_dir=str(images)) == sorted(
        [str(coco.parent), str(images)]
    )

    jsonl = tmp_path / "vertex" / "import.jsonl"
    (jsonl.parent / "rel").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"imageGcsUri": "rel/a.jpg"}),
                json.dumps({"imageGcsUri": f"{elsewhere}/b.jpg"}),
                json.dumps({"imageGcsUri": "gs://bucket/c.jpg"}),
                "not json",
            ]
        )
    )
    preset = tmp_path / "preset"
    preset.mkdir()
    folders = detection_input_folders(vertex_jsonl=str(jsonl), preset=str(preset))
    assert folders == sorted([str(jsonl.parent), str(elsewhere), str(preset)])
    assert detection_input_folders(voc_dir="gs://b/voc", preset="retinanet_resnet50_fpn_coco") == []


def test_covering_folders_keep_the_outermost():
    assert covering_folders(["/a/b", "/a", "/ab", "/a/b/c", "/d/"]) == ["/a", "/ab", "/d"]


def test_executor_output_file_is_read_from_the_task_command():
    executor_input = {"outputs": {"outputFile": "/root/run/task/executor_output.json"}}
    command = ["sh", "-c", "...", "--executor_input", json.dumps(executor_input), "--x", "y"]
    assert executor_output_file(command) == "/root/run/task/executor_output.json"
    assert executor_output_file(["sh", "-c", "echo"]) is None


def test_serve_command_runs_the_deploy_image_on_the_repository():
    words = shlex.split(serve_command("/w/model repo", "m", 8500))
    assert words[:2] == ["docker", "run"] and stage_image("deploy") in words
    assert "127.0.0.1:8500:8500" in words and "/w/model repo:/w/model repo:ro" in words
    assert words[words.index("--model-repository") + 1] == "/w/model repo"


def _executor_output(metadata: dict, gate: bool | None = None) -> dict:
    artifact = {"artifacts": [{"name": "x", "uri": "/u", "metadata": metadata}]}
    output = {"artifacts": {name: artifact for name in ("dataset", "metrics", "model")}}
    if gate is not None:
        output["parameterValues"] = {"Output": gate}
    return output


@pytest.mark.parametrize("missing", [*ALWAYS_RUN, "deploy", "batch-predict"])
def test_summary_names_a_stage_that_wrote_no_executor_output(missing, tmp_path):
    """A task that did not finish, whatever status its runner gave, fails the summary."""
    metadata = {
        "splits": {"train": 1}, "rejected": 0, "labels": ["a"], "accuracy": 1.0, "loss": 0.0,
        "examples": 1, "val_accuracy": 1.0, "val_loss": 0.0, "epochs_run": 1, "best_epoch": 1,
    }  # fmt: skip
    for task in (*ALWAYS_RUN, "deploy", "batch-predict"):
        if task != missing:
            gate = True if task == "evaluate" else None
            write_json(
                str(tmp_path / task / "executor_output.json"), _executor_output(metadata, gate)
            )
    with pytest.raises(PipelineFailed, match=f"stage '{missing}' wrote no executor output"):
        summarize(str(tmp_path), 1.0)
