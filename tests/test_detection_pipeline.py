"""The detection pipeline end to end under kfp local (``run_local --task detection``):
VOC in, a deployed detector and batch predictions out; the same images as COCO JSON keep
the same images, and a second run faces the first one's model as its champion."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import DETECTION_TINY

from components.common.io import read_json
from components.detection.evaluation import METRIC_NAMES
from pipelines.run_local import detection_parser, run_local

TINY = dict(DETECTION_TINY, edge_exports=False)


@pytest.fixture(scope="module")
def sample(detection_sample):
    return detection_sample


@pytest.fixture(scope="module")
def first_run(detection_pipeline_run):
    return detection_pipeline_run


def test_the_whole_detection_pipeline_runs_and_deploys(first_run, sample):
    work, summary = first_run
    assert summary["splits"]["train"] + summary["splits"]["valid"] + summary["splits"][
        "test"
    ] == len(sample.boxes)
    assert summary["rejected"] == 0 and summary["labels"] == list(sample.labels)
    test = summary["test_metrics"]
    assert set(test) == {*METRIC_NAMES, "per_class_map", "images", "objects"}
    assert set(test["per_class_map"]) == set(sample.labels)
    assert all(-1.0 <= test[k] <= 1.0 for k in METRIC_NAMES)
    assert test["images"] == summary["splits"]["test"]
    assert summary["training"]["epochs_run"] == DETECTION_TINY["epochs"]
    assert summary["gate_passed"] and summary["deployed"]
    assert summary["champion_map_50"] is None  # nothing served before
    assert summary["serving"]["model_name"] == "object-detector"
    assert summary["serving"]["version"] == 1
    assert os.path.exists(os.path.join(summary["serving"]["model_dir"], "saved_model.pb"))
    record = read_json(
        os.path.join(str(work), "model_repository", "object-detector", "evaluations", "1.json")
    )
    assert record["evaluation"]["map_50"] == test["map_50"]

    batch = summary["batch_predictions"]
    assert batch["rows"] == summary["splits"]["test"] and batch["errors"] == 0
    lines = [
        json.loads(line)
        for path in glob.glob(os.path.join(batch["path"], "predictions-*.jsonl"))
        for line in Path(path).read_text().splitlines()
    ]
    assert len(lines) == batch["rows"]
    for line in lines:
        assert line["uri"] in sample.boxes
        for found in line["detections"]:
            assert found["label"] in sample.labels
            assert all(0.0 <= v <= 1.0 for v in found["box"]) and len(found["bbox"]) == 4

    evaluate = os.path.join(summary["run_dir"], "evaluate-detector")
    (page,) = glob.glob(os.path.join(evaluate, "boxes*"))
    assert "data:image/jpeg;base64," in Path(page).read_text()


def test_coco_input_keeps_the_same_images_and_a_second_run_faces_the_champion(
    first_run, sample, tmp_path
):
    work, first = first_run
    shutil.copytree(work / "model_repository", tmp_path / "model_repository")
    second = run_local(
        str(tmp_path),
        task="detection",
        coco_json=sample.coco_json,
        image_dir=sample.image_dir,
        map50_threshold=1.01,  # cannot pass: nothing is deployed
        **TINY,
    )
    assert second["splits"] == first["splits"] and second["rejected"] == 0
    # The same test images: version 1 scores what it scored in the first run.
    assert second["champion_map_50"] == pytest.approx(first["test_metrics"]["map_50"])
    assert second["gate_passed"] is False and second["deployed"] is False
    assert second["batch_predictions"] is None
    assert not os.path.exists(tmp_path / "model_repository" / "object-detector" / "2")


def test_the_command_line_is_the_pipelines_parameters():
    parser = detection_parser()
    args = parser.parse_args(
        ["--voc-dir", "v", "--epochs", "3", "--no-augment-flip", "--scale-min", "0.5"]
    )
    assert args.epochs == 3 and args.augment_flip is False and args.scale_min == 0.5
    assert args.learning_rate is None  # not given: the pipeline's default applies
    assert "Most epochs" in parser.format_help()
