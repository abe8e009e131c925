"""Fixtures shared by the tests: generated sample data and a kfp local session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipelines.sample_data import SampleData, generate  # noqa: E402


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> SampleData:
    """A small generated image set (4 classes x 12 images) in both input formats."""
    return generate(str(tmp_path_factory.mktemp("sample")), per_class=12, seed=1)


@pytest.fixture
def kfp_local(tmp_path):
    """Initialises ``kfp local`` with the SubprocessRunner in this environment.

    Returns the pipeline root, under which each task writes ``<run>/<task>/<output>``.
    """
    from kfp import local

    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> str:
    """An exported serving SavedModel of an untrained 4-class MobileNetV3Small at 32 px.

    Untrained, so its predictions are arbitrary but well-formed: for tests of the
    stages that serve or run a model, not of accuracy. Labels: circle, square,
    triangle, cross (those of ``sample_data``).
    """
    from components.common.model_dir import save_model_dir
    from components.export.saved_model import export_saved_model
    from components.train.backbones import build_classifier
    from pipelines.sample_data import CLASSES

    base = tmp_path_factory.mktemp("exported")
    model, _ = build_classifier("MobileNetV3Small", len(CLASSES), 32, weights="none")
    save_model_dir(
        model,
        str(base / "model"),
        list(CLASSES),
        {"backbone": "MobileNetV3Small", "image_size": 32},
    )
    export_saved_model(str(base / "model"), str(base / "export"))
    return str(base / "export")


@pytest.fixture(scope="session")
def tfrecord_dataset(sample_data, tmp_path_factory) -> str:
    """The sample set converted by create_tfrecords from the CSV and label file, so its
    labels are in ``CLASSES`` order like ``exported_model``'s."""
    from components.create_tfrecords.beam_pipeline import run

    out = str(tmp_path_factory.mktemp("tfrecords") / "dataset")
    run(
        output_dir=out,
        csv_uri=sample_data.csv_path,
        labels_uri=sample_data.labels_path,
        train_fraction=0.6,
        valid_fraction=0.2,
    )
    return out


@pytest.fixture(scope="session")
def tiny_training() -> dict:
    """Training settings that make a pipeline run quick; accuracy is not the point."""
    return {
        "backbone": "MobileNetV3Small",
        "weights": "none",
        "image_size": 32,
        "batch_size": 16,
        "epochs": 2,
    }


@pytest.fixture(scope="session")
def pipeline_run(sample_data, tiny_training, tmp_path_factory):
    """The whole pipeline under kfp local's SubprocessRunner on ``sample_data`` with tiny
    training and no gate: ``(work dir, summary)``."""
    from pipelines.run_local import run_local

    work = tmp_path_factory.mktemp("run")
    return work, run_local(
        str(work), image_dir=sample_data.image_dir, accuracy_threshold=0.0, **tiny_training
    )


# The detection pipeline's tiny runs (test_detection_pipeline, test_stage_images).
DETECTION_TINY = dict(image_size=64, batch_size=8, epochs=2, early_stopping_patience=0)


@pytest.fixture(scope="session")
def detection_sample(tmp_path_factory):
    """60 generated box-annotated pictures (VOC, COCO JSON and their images)."""
    from pipelines import sample_detection_data

    return sample_detection_data.generate(str(tmp_path_factory.mktemp("det_sample")), images=60)


@pytest.fixture(scope="session")
def detection_pipeline_run(detection_sample, tmp_path_factory):
    """The detection pipeline under kfp local's SubprocessRunner on ``detection_sample``'s
    VOC folder, tiny training, no gate, no edge exports (export_edge's detector runs in
    its image in test_stage_images and on its own in test_export_edge_detection):
    ``(work dir, summary)``; one run for the tests here and the comparison with the
    stage images'."""
    from pipelines.run_local import run_local

    work = tmp_path_factory.mktemp("det_run")
    summary = run_local(
        str(work),
        task="detection",
        voc_dir=detection_sample.voc_dir,
        map50_threshold=0.0,
        edge_exports=False,
        **DETECTION_TINY,
    )
    return work, summary


@pytest.fixture(scope="session")
def detection_export(tmp_path_factory) -> dict:
    """A tiny detector's export (64 px, one epoch on 16 generated pictures: its
    detections are arbitrary but well-formed), with a score threshold of 0, so that it
    always detects something: ``{"dir": export dir, "labels": [...]}``."""
    from components.detection import create_tfrecords, export, training
    from pipelines import sample_detection_data

    root = tmp_path_factory.mktemp("detector")
    sample = sample_detection_data.generate(str(root / "sample"), images=16)
    dataset = str(root / "dataset")
    create_tfrecords.run(dataset, voc_dir=sample.voc_dir)
    model_dir = str(root / "model")
    training.train(
        dataset, model_dir, image_size=64, batch_size=8, epochs=1, early_stopping_patience=0
    )
    export_dir = str(root / "export")
    meta = export.export_detector(model_dir, export_dir, score_threshold=0.0)
    return {"dir": export_dir, "labels": meta["labels"]}
