"""The whole pipeline: end-to-end runs under kfp local (compiled YAML: test_compile.py)."""

import glob
import os
import shutil

import pytest

from components.common.io import read_json, read_jsonl
from components.images import stage_image
from pipelines.run_local import DEMO_SETTINGS, run_local
from pipelines.sample_data import generate


def test_images_follow_the_configured_registry_and_tag(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_REGISTRY", "europe-docker.pkg.dev/acme/ml")
    monkeypatch.setenv("IMAGE_TAG", "abc123")
    assert stage_image("train") == "europe-docker.pkg.dev/acme/ml/train:abc123"
    with pytest.raises(ValueError, match="unknown stage"):
        stage_image("nope")


def test_pipeline_runs_end_to_end_and_summarises(pipeline_run, sample_data):
    work, summary = pipeline_run
    assert read_json(str(work / "summary.json")) == summary
    assert sum(summary["splits"].values()) + summary["rejected"] == sample_data.count
    # A folder tree's labels are its sorted sub-folder names.
    assert summary["rejected"] == 0 and summary["labels"] == sorted(sample_data.labels)
    assert summary["test_metrics"]["examples"] == summary["splits"]["test"]
    assert 0.0 <= summary["test_metrics"]["accuracy"] <= 1.0
    assert summary["deployed"] is True and summary["gate_passed"] is True
    assert summary["seconds"] > 0


def test_pipeline_publishes_the_model_it_serves(pipeline_run):
    work, summary = pipeline_run
    serving = summary["serving"]
    assert serving["url"].endswith("/v1/models/image-classifier:predict")
    assert serving["model_dir"] == os.path.join(
        str(work), "model_repository", "image-classifier", "1"
    )
    assert os.path.exists(os.path.join(serving["model_dir"], "saved_model.pb"))


def test_pipeline_batch_predicts_every_test_image(pipeline_run):
    _, summary = pipeline_run
    batch = summary["batch_predictions"]
    assert batch["rows"] == summary["splits"]["test"] and batch["errors"] == 0
    rows = list(read_jsonl(glob.glob(os.path.join(batch["path"], "predictions-*.jsonl"))))
    assert len(rows) == batch["rows"]
    assert {row["label"] for row in rows} <= set(summary["labels"])


def test_pipeline_exports_edge_models_checked_against_the_saved_model(pipeline_run):
    _, summary = pipeline_run
    edge = summary["edge_exports"]
    assert edge["examples"] == summary["splits"]["test"]
    assert set(edge["agreement"]) == {"float32", "float16", "int8", "tfjs"}
    for kind in ("float32", "float16", "tfjs"):
        assert edge["agreement"][kind] >= 0.99, edge
    for name in ("model_float32.tflite", "model_float16.tflite", "model_int8.tflite"):
        assert os.path.getsize(os.path.join(edge["tflite_dir"], name)) > 0
    assert os.path.exists(os.path.join(edge["tfjs_dir"], "model.json"))


def test_deploy_records_the_evaluation_and_the_next_run_faces_the_model(
    pipeline_run, sample_data, tiny_training, tmp_path
):
    """Champion/challenger across runs: the second run scores the model the first one
    deployed on the same test images, and its gate applies the margin."""
    work, first = pipeline_run
    record = read_json(
        os.path.join(str(work), "model_repository", "image-classifier", "evaluations", "1.json")
    )
    assert record["version"] == 1
    assert record["evaluation"]["accuracy"] == first["test_metrics"]["accuracy"]
    assert first["champion_accuracy"] is None  # nothing served before the first run

    shutil.copytree(work / "model_repository", tmp_path / "model_repository")
    second = run_local(
        str(tmp_path),
        image_dir=sample_data.image_dir,
        accuracy_threshold=0.0,
        champion_margin=1.0,
        **{**tiny_training, "epochs": 1},
    )
    # The same images and split: version 1 scores what it scored in the first run.
    assert second["champion_accuracy"] == pytest.approx(first["test_metrics"]["accuracy"])
    assert second["gate_passed"] is True and second["serving"]["version"] == 2
    record = read_json(
        os.path.join(str(tmp_path), "model_repository", "image-classifier", "evaluations", "2.json")
    )
    assert record["evaluation"]["champion_accuracy"] == second["champion_accuracy"]


def test_failed_gate_stops_before_deploy_with_csv_input(sample_data, tiny_training, tmp_path):
    summary = run_local(
        str(tmp_path),
        csv_uri=sample_data.csv_path,
        labels_uri=sample_data.labels_path,
        accuracy_threshold=1.01,
        edge_exports=False,
        **{**tiny_training, "epochs": 1},
    )
    assert summary["gate_passed"] is False and summary["deployed"] is False
    assert summary["serving"] is None and summary["batch_predictions"] is None
    assert summary["edge_exports"] is None  # switched off: the task did not run
    assert not os.path.exists(tmp_path / "model_repository")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("REQUIRE_DOCKER") == "1",
    reason="the same demo runs in the stage images with the same checks "
    "(test_stage_images.py::test_pipeline_runs_every_stage_in_its_image), which "
    "REQUIRE_DOCKER=1 (CI) makes sure of: the demo's minutes are spent once",
)
def test_demo_settings_reach_the_promised_accuracy(tmp_path):
    """The README's demo: 400 generated images, demo-sized training, accuracy >= 0.8."""
    data = generate(str(tmp_path / "sample"), per_class=100)
    summary = run_local(str(tmp_path / "demo"), image_dir=data.image_dir, **DEMO_SETTINGS)
    assert summary["splits"]["test"] >= 20
    assert summary["test_metrics"]["accuracy"] >= 0.8, summary
    assert summary["deployed"] and summary["batch_predictions"]["rows"] == summary["splits"]["test"]


def test_every_component_input_and_output_is_described():
    """KFP and Vertex show these descriptions in their UIs (from Args: and Returns:)."""
    from components.batch_predict.component import batch_predict
    from components.create_tfrecords.component import create_tfrecords
    from components.evaluate.component import evaluate
    from components.export.component import export
    from components.export_edge.component import export_edge
    from components.train.component import train

    for component in (create_tfrecords, train, export, export_edge, evaluate, batch_predict):
        spec = component.component_spec
        for name, io_spec in {**spec.inputs, **(spec.outputs or {})}.items():
            assert io_spec.description, f"{spec.name}: {name} has no description"
