"""What the serving and batch-prediction paths load: no training code and no
keras.applications (the model server and Beam's workers run the SavedModel, not Keras);
detection's export and evaluation load no training code."""

import json
import subprocess
import sys

import pytest

REPORT = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.startswith(
    ("components.train", "components.detection.training", "keras.applications",
     "keras.src.applications")))))
"""


def loaded_after(code: str) -> list[str]:
    """The forbidden modules a fresh interpreter has loaded after running ``code``."""
    result = subprocess.run(
        [sys.executable, "-c", code + REPORT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_model_servers_cli_loads_no_training_code():
    code = """
import runpy, sys
sys.argv = ["components.deploy.server", "--help"]
try:
    runpy.run_module("components.deploy.server", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert e.code == 0, e.code
"""
    assert loaded_after(code) == []


@pytest.mark.parametrize(
    "module",
    [
        "components.common.model_handler",
        "components.common.serving",
        "components.common.remote_handler",
        "components.stream_predict.beam_pipeline",
    ],
)
def test_batch_prediction_and_the_serving_contract_load_no_training_code(module):
    assert loaded_after(f"import {module}\n") == []


def test_exporting_and_evaluating_a_detector_load_no_training_code():
    """Both read the record schema and run TensorFlow (which loads keras.applications
    itself), but neither the classification trainer nor detection's."""
    code = "import components.detection.export, components.detection.evaluation\n"
    loaded = loaded_after(code)
    assert [m for m in loaded if m.startswith("components.")] == []


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory):
    """A tiny detector's export (trained in this process, served in a fresh one)."""
    from components.detection import create_tfrecords, export, training
    from pipelines import sample_detection_data

    root = tmp_path_factory.mktemp("imports_detector")
    sample = sample_detection_data.generate(str(root / "sample"), images=16)
    create_tfrecords.run(str(root / "dataset"), voc_dir=sample.voc_dir)
    training.train(
        str(root / "dataset"), str(root / "model"), image_size=64, batch_size=4, epochs=1
    )
    export.export_detector(str(root / "model"), str(root / "export"))
    return str(root / "export"), sorted(sample.boxes)[0]


def test_serving_a_detector_loads_no_training_code(detector_export):
    """The model server loads the detector's export and answers a request with it, with
    no trainer loaded (TensorFlow, once it runs a model, loads keras.applications itself,
    as for the detector's export and evaluation above)."""
    export_dir, image = detector_export
    code = f"""
import asyncio
from components.deploy.server.model import ImageModel
model = ImageModel("object-detector", model_dir={export_dir!r})
model.load()
outputs = model.run_signature([open({image!r}, "rb").read()])
assert outputs["detection_boxes"].shape == (1, 100, 4), outputs["detection_boxes"].shape
"""
    assert [m for m in loaded_after(code) if m.startswith("components.")] == []


def test_evaluating_a_detector_needs_no_beam(detector_export):
    """The evaluate image has no Apache Beam: scoring an export on a dataset reads the
    split's COCO ground truth without create_tfrecords' Beam pipeline."""
    export_dir, _ = detector_export
    dataset_dir = export_dir.rsplit("/", 1)[0] + "/dataset"
    code = f"""
import sys
from components.detection.evaluation import evaluate_detector
metrics = evaluate_detector({export_dir!r}, {dataset_dir!r}, split="train")
assert metrics["images"] > 0, metrics
assert "apache_beam" not in sys.modules, "evaluation loaded Apache Beam"
"""
    assert [m for m in loaded_after(code) if m.startswith("components.")] == []
