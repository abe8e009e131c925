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
