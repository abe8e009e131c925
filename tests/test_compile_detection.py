"""The detection pipeline's compiled YAML for both cloud targets (kfp on GKE, Vertex AI
Pipelines), checked against KFP's own IR schema: each stage on its image, train on a GPU
node (kfp) or as a Vertex AI custom job (vertex), the gate in front of deploy and batch
prediction, and the evaluation imported with the Vertex AI deployment."""

import pytest
from google.protobuf import json_format
from kfp import components
from kfp.pipeline_spec import pipeline_spec_pb2
from test_compile import (
    GPU_LABEL,
    REGISTRY,
    TAG,
    Compiled,
    _compile,
    _image,
    assert_the_rules_reach_every_vertex_job,
)

from pipelines.compile import TARGETS
from pipelines.detection_pipeline import PIPELINE_NAME, TARGET_PARAMETERS

# Task name -> stage image of every task that runs one of our lightweight components.
STAGE_TASKS = {
    "create-detection-tfrecords": "create_tfrecords",
    "train-detector": "train",
    "export-detector": "export",
    "export-edge": "export",  # the export image holds the TFLite and TF.js converters
    "evaluate-detector": "evaluate",
    "deploy": "deploy",
    "deploy-kserve": "deploy",
    "deploy-vertex": "deploy",
    "find-champion": "deploy",
    "find-vertex-champion": "deploy",
    "batch-predict": "batch_predict",
    "batch-predict-vertex": "deploy",
    "worker-replicas": "export",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Compiled]:
    out = tmp_path_factory.mktemp("compiled-detection")
    return {
        target: Compiled(_compile(target, out / f"{target}.yaml", pipeline="detection"))
        for target in TARGETS
    }


@pytest.mark.parametrize("target", TARGETS)
def test_yaml_is_a_valid_pipeline_spec_with_the_targets_parameters(compiled, target):
    c = compiled[target]
    spec = json_format.ParseDict(
        c.spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False
    )
    assert spec.pipeline_info.name == PIPELINE_NAME == "object-detection"
    loaded = components.load_component_from_file(str(c.path))
    inputs = set(loaded.component_spec.inputs)
    assert {"voc_dir", "coco_json", "vertex_jsonl", "family", "preset", "map50_threshold"} <= inputs
    others = {p for t, names in TARGET_PARAMETERS.items() if t != target for p in names}
    assert set(TARGET_PARAMETERS[target]) <= inputs
    assert not (others - set(TARGET_PARAMETERS[target])) & inputs
    assert ({"machine_type", "replica_count", "project"} <= inputs) == (target == "vertex")
    assert ({"deploy_target", "kserve_namespace"} <= inputs) == (target == "kfp")


@pytest.mark.parametrize("target", TARGETS)
def test_every_task_runs_on_the_configured_image_of_its_stage(compiled, target):
    c = compiled[target]
    jobs = c.custom_jobs()  # vertex: train launches a custom job (checked below)
    images = {
        task: c.executor(task, parent)["container"]["image"]
        for task, (parent, _) in c.tasks().items()
        if task in STAGE_TASKS and task not in jobs
    }
    assert images == {task: _image(STAGE_TASKS[task]) for task in images}
    assert {
        "create-detection-tfrecords",
        "export-detector",
        "export-edge",
        "evaluate-detector",
    } <= set(images)
    assert f"{REGISTRY}/" in c.text and f":{TAG}" in c.text


@pytest.mark.parametrize("target", TARGETS)
def test_edge_exports_convert_the_detector_behind_their_switch(compiled, target):
    c = compiled[target]
    parent, task = c.tasks()["export-edge"]
    assert parent != "root" and parent.startswith("comp-condition")
    condition = c.spec["root"]["dag"]["tasks"][parent.removeprefix("comp-")]["triggerPolicy"][
        "condition"
    ]
    assert "pipelinechannel--edge_exports" in condition
    model = task["inputs"]["artifacts"]["exported_model"]["componentInputArtifact"]
    assert model == "pipelinechannel--export-detector-exported_model"
    defaults = c.spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["edge_exports"]["defaultValue"] is True


def test_kfp_trains_the_detector_on_a_gpu_node(compiled):
    c = compiled["kfp"]
    resources = c.executor("train-detector")["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    kubernetes = c.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert kubernetes["exec-train-detector"]["nodeSelector"]["labels"] == {GPU_LABEL: "nvidia-l4"}
    gate_tasks = set(c.spec["components"][c.gate]["dag"]["tasks"])
    assert "batch-predict" in gate_tasks and {"deploy", "deploy-kserve"} <= set(c.tasks())


def test_vertex_trains_the_detector_as_a_custom_job_on_the_train_image(compiled):
    c = compiled["vertex"]
    jobs = c.custom_jobs()
    assert len(jobs) == 2  # one worker pool, or a primary and workers (replica_count)
    for parent, spec in jobs.values():
        inputs = spec["inputs"]["parameters"]
        pools = inputs["worker_pool_specs"]["runtimeValue"]["constant"]
        for pool in pools:
            container = pool["container_spec"]
            assert container["image_uri"] == _image("train")
            # The detector's train function runs in the job, not the classifier's.
            assert "train_detector" in " ".join(container["command"] + container["args"])
        for field in ("family", "preset", "epochs", "project", "location"):
            assert c.source(parent, inputs[field]) == {"componentInputParameter": field}
    trains = {task for task in c.tasks() if task.startswith("train-detector")}
    assert trains == set(jobs)  # it runs only as the custom job


def test_vertex_deploys_with_the_evaluation_and_batch_predicts_behind_the_gate(compiled):
    c = compiled["vertex"]
    tasks = c.tasks()
    parent, deploy = tasks["deploy-vertex"]
    artifacts = deploy["inputs"]["artifacts"]
    assert artifacts["evaluation"] == {
        "componentInputArtifact": "pipelinechannel--evaluate-detector-metrics"
    }
    assert "confusion_matrix" not in artifacts  # a detector's evaluate has none
    assert deploy["inputs"]["parameters"]["deploy_image"]["runtimeValue"]["constant"] == _image(
        "deploy"
    )
    assert parent == c.gate  # deployed only when AP50 passes
    assert {"batch-predict", "batch-predict-vertex", "find-vertex-champion"} <= set(tasks)
    champion = tasks["evaluate-detector"][1]["inputs"]["parameters"]["champion_dir"]
    assert champion["taskOutputParameter"]["producerTask"] == "find-vertex-champion"


def test_every_vertex_job_runs_under_the_projects_rules(compiled):
    beam = ("create-detection-tfrecords", "batch-predict", "stream-predict")
    # The detector's pipeline has no tuning job.
    assert_the_rules_reach_every_vertex_job(compiled["vertex"], beam, tuning=False)


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_cloud_targets_stream_detections_on_dataflow_given_a_subscription(compiled, target):
    c = compiled[target]
    parent, task = c.tasks()["stream-predict"]
    assert c.executor("stream-predict", parent)["container"]["image"] == _image("batch_predict")
    (condition,) = [
        spec["triggerPolicy"]["condition"]
        for _, spec in c.tasks().values()
        if spec["taskInfo"]["name"] == "streaming-predictions"
    ]
    assert condition == "inputs.parameter_values['pipelinechannel--stream_subscription'] != ''"
    model = task["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    assert model == "pipelinechannel--export-detector-exported_model"
    runner = task["inputs"]["parameters"]["runner"]["runtimeValue"]["constant"]
    assert runner == "DataflowRunner"


def test_the_local_detection_pipeline_has_no_streaming_job(tmp_path):
    from pipelines.detection_pipeline import object_detection_pipeline

    assert "stream_subscription" not in object_detection_pipeline.component_spec.inputs
