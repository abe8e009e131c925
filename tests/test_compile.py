"""The compiled YAML of both cloud targets (kfp on GKE, Vertex AI Pipelines), checked
strictly against KFP's own IR schema, and the kfp YAML run back under kfp local."""

import os
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp import components
from kfp.pipeline_spec import pipeline_spec_pb2

from components.images import DEFAULT_REGISTRY, stage_image
from pipelines.compile import TARGETS, compile_pipeline, main
from pipelines.kfp_target import KFP_PARAMETERS, LOCAL_PARAMETERS
from pipelines.pipeline import GkeResources, build_pipeline, image_classification_pipeline
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.vertex_target import VERTEX_PARAMETERS

REGISTRY, TAG = "europe-docker.pkg.dev/acme/ml", "abc123"
# Task name -> stage of every task that runs one of our lightweight components.
STAGE_TASKS = {
    "create-tfrecords": "create_tfrecords",
    "train": "train",
    "export": "export",
    "export-edge": "export",  # the export image holds the TFLite and TF.js converters
    "evaluate": "evaluate",
    "deploy": "deploy",
    "deploy-vertex": "deploy",
    "deploy-kserve": "deploy",
    "batch-predict": "batch_predict",
    "stream-predict": "batch_predict",  # the Beam image with Pub/Sub
    "batch-predict-vertex": "deploy",  # it only calls the Vertex AI API
    "worker-replicas": "export",  # a small stage image with kfp
}
CUSTOM_JOB_LAUNCHER = "google_cloud_pipeline_components.container.v1.custom_job.launcher"
PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['(pipelinechannel--[^']+)'\]\}\}")
REPLICAS_CONDITION = "int(inputs.parameter_values['pipelinechannel--replica_count']) > 1"
GPU_LABEL = "cloud.google.com/gke-accelerator"


def _image(stage: str) -> str:
    return f"{REGISTRY}/{stage.replace('_', '-')}:{TAG}"


def _compile(target: str, path: Path, **options) -> Path:
    """Compiles with the test registry and tag in the environment, restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGE_REGISTRY", REGISTRY)
        mp.setenv("IMAGE_TAG", TAG)
        return Path(compile_pipeline(target, str(path), **options))


class Compiled:
    """One compiled YAML: its text, the PipelineSpec and PlatformSpec documents."""

    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text()
        docs = list(yaml.safe_load_all(self.text))
        assert 1 <= len(docs) <= 2, f"{len(docs)} YAML documents"
        self.spec = docs[0]
        self.platform = docs[1] if len(docs) == 2 else None

    def executor(self, task: str, parent: str = "root") -> dict:
        """The executor of a task in the root DAG or in the component ``parent``."""
        dag = self.spec["root"] if parent == "root" else self.spec["components"][parent]
        component = self.spec["components"][dag["dag"]["tasks"][task]["componentRef"]["name"]]
        return self.spec["deploymentSpec"]["executors"][component["executorLabel"]]

    def tasks(self) -> dict:
        """Every task of the pipeline, by name, with the DAG it is in."""
        found = {}
        for name, component in [("root", self.spec["root"]), *self.spec["components"].items()]:
            for task, task_spec in component.get("dag", {}).get("tasks", {}).items():
                found[task] = (name, task_spec)
        return found

    def source(self, parent: str, spec: dict) -> dict:
        """Where an input of a task in the component ``parent`` comes from: followed up
        through the condition components to the root DAG, or to a task's output."""
        while "componentInputParameter" in spec and parent != "root":
            name = spec["componentInputParameter"]
            ((parent, task),) = [
                (dag_name, task)
                for dag_name, task in self.tasks().values()
                if task["componentRef"]["name"] == parent
            ]
            spec = task["inputs"]["parameters"][name]
        return spec

    def custom_jobs(self) -> dict:
        """The custom job tasks, by name, with the component they are in."""
        return {
            task: (parent, spec)
            for task, (parent, spec) in self.tasks().items()
            if "executorLabel" in self.spec["components"][spec["componentRef"]["name"]]
            and CUSTOM_JOB_LAUNCHER in self.executor(task, parent)["container"].get("command", [])
        }

    @property
    def gate(self) -> str:
        """The component holding the quality gate's tasks."""
        (gate,) = [
            t["componentRef"]["name"]
            for t in self.spec["root"]["dag"]["tasks"].values()
            if t["taskInfo"]["name"] == "quality-gate"
        ]
        return gate


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Compiled]:
    out = tmp_path_factory.mktemp("compiled")
    return {target: Compiled(_compile(target, out / f"{target}.yaml")) for target in TARGETS}


@pytest.mark.parametrize("target", TARGETS)
def test_yaml_is_a_valid_pipeline_spec_by_kfp_own_schema(compiled, target):
    c = compiled[target]
    spec = json_format.ParseDict(
        c.spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False
    )
    assert spec.pipeline_info.name == "image-classification"
    assert {"create-tfrecords", "export", "evaluate"} <= set(spec.root.dag.tasks)
    # On vertex, train runs inside the branches on replica_count.
    assert ("train" in spec.root.dag.tasks) == (target == "kfp")
    if target == "kfp":
        platform = json_format.ParseDict(
            c.platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False
        )
        assert "kubernetes" in platform.platforms
    else:
        assert c.platform is None, "vertex YAML has no Kubernetes platform spec"


# The parameters every target has (the local pipeline's, less its own two).
SHARED = {"csv_uri", "image_dir", "backbone", "accuracy_threshold", "beam_runner", "top_k"}


@pytest.mark.parametrize("target", TARGETS)
def test_yaml_loads_back_with_the_pipeline_parameters(compiled, target):
    loaded = components.load_component_from_file(str(compiled[target].path))
    assert loaded.name == "image-classification"
    inputs = set(loaded.component_spec.inputs)
    shared = set(image_classification_pipeline.component_spec.inputs) - set(LOCAL_PARAMETERS)
    assert shared >= SHARED
    own = {"local": LOCAL_PARAMETERS, "kfp": KFP_PARAMETERS, "vertex": VERTEX_PARAMETERS}
    assert inputs == shared | set(own[target])
    # The custom job's machine and replica count exist on vertex only; KServe on kfp only.
    assert ({"machine_type", "replica_count", "project"} <= inputs) == (target == "vertex")
    assert ({"deploy_target", "kserve_namespace"} <= inputs) == (target == "kfp")

    c = compiled[target]
    (gate,) = [
        t
        for t in c.spec["root"]["dag"]["tasks"].values()
        if t["taskInfo"]["name"] == "quality-gate"
    ]
    assert "pipelinechannel--evaluate-Output" in gate["triggerPolicy"]["condition"]
    gate_tasks = set(c.spec["components"][c.gate]["dag"]["tasks"])
    if target == "kfp":  # deploy_target picks KServe or the local deploy at run time.
        assert {"batch-predict"} < gate_tasks and {"deploy", "deploy-kserve"} & gate_tasks == set()
        assert {"deploy", "deploy-kserve"} <= set(c.tasks())
    elif target == "vertex":  # batch_predict_engine picks Beam or Vertex AI at run time.
        assert "deploy-vertex" in gate_tasks and "batch-predict" not in gate_tasks
        assert {"batch-predict", "batch-predict-vertex"} <= set(c.tasks())
    else:
        assert gate_tasks == {"deploy", "batch-predict"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_task_runs_on_the_configured_image_of_its_stage(compiled, target):
    c = compiled[target]
    images = {}
    for task, (parent, _) in c.tasks().items():
        if task in STAGE_TASKS:
            images[task] = c.executor(task, parent)["container"]["image"]
    expected = {task: _image(stage) for task, stage in STAGE_TASKS.items() if task in images}
    if target == "vertex":
        # The train tasks launch custom jobs; the train image is in their worker pools.
        jobs = c.custom_jobs()
        assert len(jobs) == 2 and "train" in jobs
        for task, (parent, spec) in jobs.items():
            image = c.executor(task, parent)["container"]["image"]
            assert image.startswith("gcr.io/ml-pipeline/google-cloud-pipeline"), task
            pools = spec["inputs"]["parameters"]["worker_pool_specs"]["runtimeValue"]["constant"]
            assert pools and all(p["container_spec"]["image_uri"] == _image("train") for p in pools)
        images.pop("train")
        expected.pop("train")
    else:
        assert not {"batch-predict-vertex", "worker-replicas"} & set(images)
    assert images == expected
    assert set(images) >= {"create-tfrecords", "export", "evaluate", "batch-predict"}
    assert {"deploy", "deploy-vertex"} & set(images)
    # No image from the environment at import time (the default registry) survives.
    assert DEFAULT_REGISTRY not in c.text


def test_registry_and_tag_flags_set_the_images(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_REGISTRY", "elsewhere.example/ml")  # restored afterwards
    monkeypatch.setenv("IMAGE_TAG", "old")
    out = tmp_path / "vertex.yaml"
    main(["--target", "vertex", "--output", str(out), "--registry", REGISTRY, "--tag", TAG])
    assert stage_image("train") == _image("train")
    c = Compiled(out)
    assert "elsewhere.example" not in c.text
    assert c.executor("evaluate")["container"]["image"] == _image("evaluate")
    assert f"image_uri: {_image('train')}" in c.text
    # The replica count is a pipeline parameter now, no longer a compile flag.
    with pytest.raises(SystemExit):
        main(["--target", "vertex", "--output", str(out), "--replica-count", "3"])


def test_kfp_train_asks_gke_for_gpus_of_the_configured_type(compiled):
    c = compiled["kfp"]
    resources = c.executor("train")["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    kubernetes = c.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert kubernetes["exec-train"]["nodeSelector"]["labels"] == {GPU_LABEL: "nvidia-l4"}
    assert resources["resourceCpuRequest"] == "6"
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == "24Gi"


def test_kfp_gpu_type_count_and_sizes_are_compile_options(tmp_path):
    gke = GkeResources(gpu_type="nvidia-tesla-t4", gpu_count=2, beam_cpu="3", beam_memory="6Gi")
    c = Compiled(_compile("kfp", tmp_path / "kfp.yaml", gke=gke))
    assert c.executor("train")["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    selectors = c.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert selectors["exec-train"]["nodeSelector"]["labels"] == {GPU_LABEL: "nvidia-tesla-t4"}
    assert c.executor("create-tfrecords")["container"]["resources"]["resourceCpuLimit"] == "3"

    cpu_only = Compiled(_compile("kfp", tmp_path / "cpu.yaml", gke=GkeResources(gpu_count=0)))
    assert "accelerator" not in cpu_only.executor("train")["container"]["resources"]
    assert cpu_only.platform is None


def test_kfp_beam_stages_request_cpu_and_memory_and_deploy_is_never_cached(compiled):
    c = compiled["kfp"]
    for task, parent in (("create-tfrecords", "root"), ("batch-predict", c.gate)):
        resources = c.executor(task, parent)["container"]["resources"]
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == "2", task
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == "4Gi"
    for target in TARGETS:
        tasks = compiled[target].tasks()
        for task in ("deploy", "deploy-vertex", "deploy-kserve"):
            if task in tasks:
                assert tasks[task][1]["cachingOptions"].get("enableCache", False) is False
        # create_tfrecords reads images by URI: a re-run must see changed data.
        assert tasks["create-tfrecords"][1]["cachingOptions"].get("enableCache", False) is False
        for job in compiled[target].custom_jobs() if target == "vertex" else ["train"]:
            assert tasks[job][1]["cachingOptions"]["enableCache"] is True, job


def _training_branches(c: Compiled) -> tuple[str, dict]:
    """The vertex condition-branches task around the train custom jobs, and its branches
    by display name: (condition task name, its spec, the branch component, its custom job)."""
    root = c.spec["root"]["dag"]["tasks"]

    def branch_names(task: str) -> set[str]:
        dag = c.spec["components"][root[task]["componentRef"]["name"]]["dag"]
        return {spec["taskInfo"]["name"] for spec in dag["tasks"].values()}

    (branches,) = [
        name
        for name in root
        if name.startswith("condition-branches") and "single-worker-training" in branch_names(name)
    ]
    component = c.spec["components"][root[branches]["componentRef"]["name"]]
    jobs = c.custom_jobs()
    found = {}
    for name, spec in component["dag"]["tasks"].items():
        branch = spec["componentRef"]["name"]
        (job,) = [task for task, (parent, _) in jobs.items() if parent == branch]
        found[spec["taskInfo"]["name"]] = (name, spec, branch, job)
    return branches, found


def test_vertex_train_is_a_custom_job_with_its_machine_from_pipeline_parameters(compiled):
    c = compiled["vertex"]
    root_inputs = c.spec["root"]["inputDefinitions"]["parameters"]
    assert {
        "machine_type",
        "accelerator_type",
        "accelerator_count",
        "replica_count",
        "project",
        "location",
    } <= set(root_inputs)
    assert root_inputs["replica_count"]["parameterType"] == "NUMBER_INTEGER"
    assert root_inputs["replica_count"]["defaultValue"] == 1
    assert root_inputs["project"]["defaultValue"] == "{{$.pipeline_google_cloud_project_id}}"
    assert root_inputs["location"]["defaultValue"] == "{{$.pipeline_google_cloud_location}}"

    jobs = c.custom_jobs()
    assert len(jobs) == 2
    for task, (parent, spec) in jobs.items():
        assert parent != "root", "each custom job is in a branch on replica_count"
        executor = c.executor(task, parent)["container"]
        assert "resources" not in executor, "Vertex sizes the custom job, not the launcher"
        # The launcher's payload carries the worker pools (and so the machine) to Vertex AI.
        assert "{{$.inputs.parameters['worker_pool_specs']}}" in " ".join(executor["args"])
        inputs = spec["inputs"]["parameters"]
        pools = inputs["worker_pool_specs"]["runtimeValue"]["constant"]
        assert pools[0]["replica_count"] == 1
        for pool in pools:
            for field in ("machine_type", "accelerator_type", "accelerator_count"):
                channel = f"pipelinechannel--{field}"
                assert pool["machine_spec"][field] == f"{{{{$.inputs.parameters['{channel}']}}}}"
                assert c.source(parent, inputs[channel]) == {"componentInputParameter": field}
        for field in ("project", "location", "backbone", "epochs"):
            assert c.source(parent, inputs[field]) == {"componentInputParameter": field}
        # The train component's dataset still comes from create_tfrecords.
        dataset = spec["inputs"]["artifacts"]["dataset"]["componentInputArtifact"]
        assert dataset == "pipelinechannel--create-tfrecords-dataset"


def test_vertex_replica_count_picks_one_or_two_worker_pools_at_run_time(compiled):
    c = compiled["vertex"]
    branches, found = _training_branches(c)
    assert set(found) == {"multi-worker-training", "single-worker-training"}
    # Mutually exclusive: If and Else on the replica_count pipeline parameter.
    condition = {name: spec["triggerPolicy"]["condition"] for name, (_, spec, *_) in found.items()}
    assert condition == {
        "multi-worker-training": REPLICAS_CONDITION,
        "single-worker-training": f"!({REPLICAS_CONDITION})",
    }
    replicas = c.spec["root"]["dag"]["tasks"][branches]["inputs"]["parameters"]
    assert replicas["pipelinechannel--replica_count"] == {
        "componentInputParameter": "replica_count"
    }

    # Multi-worker: GCPC's layout, a primary of one replica plus a worker pool whose
    # replica count is worker-replicas' output (replica_count - 1), at run time.
    _, _, branch, job = found["multi-worker-training"]
    tasks = c.spec["components"][branch]["dag"]["tasks"]
    assert set(tasks) == {"worker-replicas", job}
    inputs = tasks[job]["inputs"]["parameters"]
    primary, workers = inputs["worker_pool_specs"]["runtimeValue"]["constant"]
    assert primary["replica_count"] == 1
    assert workers["machine_spec"] == primary["machine_spec"]
    assert workers["container_spec"] == primary["container_spec"]
    (channel,) = PLACEHOLDER.fullmatch(workers["replica_count"]).groups()
    assert inputs[channel] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "worker-replicas"}
    }
    assert job in [
        t for t, spec in tasks.items() if "worker-replicas" in spec.get("dependentTasks", [])
    ]
    count = tasks["worker-replicas"]["inputs"]["parameters"]["replica_count"]
    assert c.source(branch, count) == {"componentInputParameter": "replica_count"}

    # Single: one pool of one replica.
    _, _, branch, job = found["single-worker-training"]
    tasks = c.spec["components"][branch]["dag"]["tasks"]
    assert set(tasks) == {job}
    (pool,) = tasks[job]["inputs"]["parameters"]["worker_pool_specs"]["runtimeValue"]["constant"]
    assert pool["replica_count"] == 1

    # Export takes the model of whichever branch ran: the OneOf of both custom jobs'.
    export = c.spec["root"]["dag"]["tasks"]["export"]["inputs"]["artifacts"]["model"]
    assert export["taskOutputArtifact"]["producerTask"] == branches
    outer = c.spec["components"][c.spec["root"]["dag"]["tasks"][branches]["componentRef"]["name"]]
    key = export["taskOutputArtifact"]["outputArtifactKey"]
    selectors = outer["dag"]["outputs"]["artifacts"][key]["artifactSelectors"]
    selected = set()
    for condition_task, _, branch, job in found.values():
        (selector,) = [s for s in selectors if s["producerSubtask"] == condition_task]
        outputs = c.spec["components"][branch]["dag"]["outputs"]["artifacts"]
        (inner,) = outputs[selector["outputArtifactKey"]]["artifactSelectors"]
        assert inner == {"outputArtifactKey": "model", "producerSubtask": job}
        selected.add(condition_task)
    assert len(selectors) == len(selected) == 2


def test_vertex_batch_predicts_with_the_deployed_model_or_on_beam(compiled):
    c = compiled["vertex"]
    tasks = c.tasks()
    vertex_parent, vertex_job = tasks["batch-predict-vertex"]
    beam_parent, beam_job = tasks["batch-predict"]
    conditions = {
        spec["taskInfo"]["name"]: spec["triggerPolicy"]["condition"]
        for _, spec in tasks.values()
        if spec["taskInfo"]["name"] in ("vertex-batch-prediction", "beam-batch-prediction")
    }
    engine = "inputs.parameter_values['pipelinechannel--batch_predict_engine'] == 'vertex'"
    assert conditions == {
        "vertex-batch-prediction": engine,
        "beam-batch-prediction": f"!({engine})",
    }
    assert vertex_job["inputs"]["artifacts"]["vertex_model"] == {
        "componentInputArtifact": "pipelinechannel--deploy-vertex-vertex_model"
    }
    assert vertex_job["cachingOptions"].get("enableCache", False) is False
    for field in ("project", "location"):
        spec = vertex_job["inputs"]["parameters"][field]
        assert c.source(vertex_parent, spec) == {"componentInputParameter": field}
    defaults = c.spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["batch_predict_engine"]["defaultValue"] == "beam"
    # An empty serving image lets deploy_vertex pick the container's own for the export.
    assert defaults["serving_image"]["defaultValue"] == ""
    assert beam_parent != vertex_parent


def test_vertex_deploy_gets_its_serving_container_and_the_compiled_deploy_image(compiled):
    c = compiled["vertex"]
    parent, deploy = c.tasks()["deploy-vertex"]
    parameters = deploy["inputs"]["parameters"]
    for name in ("serving_image", "serving_container"):
        assert c.source(parent, parameters[name]) == {"componentInputParameter": name}
    defaults = c.spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["serving_container"]["defaultValue"] == "auto"
    # A custom container runs the deploy image of the registry and tag compiled in: the
    # task itself does not see IMAGE_REGISTRY and IMAGE_TAG.
    assert parameters["deploy_image"]["runtimeValue"]["constant"] == _image("deploy")


# A project's rules on the vertex target: the pipeline parameters every job gets, and the
# Dataflow options of each Beam stage (component parameter -> pipeline parameter).
RULES = ("service_account", "encryption_spec_key_name", "network")
DATAFLOW_RULES = {
    "service_account_email": "service_account",
    "dataflow_kms_key": "encryption_spec_key_name",
}


def _fed(c: Compiled, task: str, fed: dict[str, str]) -> None:
    """Asserts each of ``task``'s parameters in ``fed`` is the pipeline parameter it maps
    to, followed up through the condition components."""
    parent, spec = c.tasks()[task]
    parameters = spec["inputs"]["parameters"]
    for parameter, pipeline_parameter in fed.items():
        source = c.source(parent, parameters[parameter])
        assert source == {"componentInputParameter": pipeline_parameter}, (task, parameter)


def assert_the_rules_reach_every_vertex_job(c: Compiled, beam_tasks: tuple, tuning: bool):
    """The vertex target's service account, key and network reach each job it starts: the
    train custom jobs of both branches and the tuning job (in the payload GCPC's launcher
    sends), the batch prediction job, the deployment and every Beam stage."""
    defaults = c.spec["root"]["inputDefinitions"]["parameters"]
    assert {name: defaults[name]["defaultValue"] for name in (*RULES, "private_endpoint")} == {
        "service_account": "",
        "encryption_spec_key_name": "",
        "network": "",
        "private_endpoint": False,
    }
    same = {name: name for name in RULES}
    jobs = c.custom_jobs()
    assert len(jobs) == 2  # one worker pool, or a primary and workers
    tuner = ["hyperparameter-tuning-job"] if tuning else []
    assert ("hyperparameter-tuning-job" in c.tasks()) == tuning
    for task in (*jobs, *tuner):
        _fed(c, task, same)
        payload = " ".join(c.executor(task, c.tasks()[task][0])["container"]["args"])
        for name in RULES:
            assert f"{{{{$.inputs.parameters['{name}']}}}}" in payload, (task, name)
    _fed(c, "batch-predict-vertex", {n: n for n in ("service_account", "encryption_spec_key_name")})
    _fed(c, "deploy-vertex", {**same, "private_endpoint": "private_endpoint"})
    for task in beam_tasks:
        _fed(c, task, DATAFLOW_RULES)


def test_every_vertex_job_runs_under_the_projects_rules(compiled):
    beam = ("create-tfrecords", "batch-predict", "stream-predict")
    assert_the_rules_reach_every_vertex_job(compiled["vertex"], beam, tuning=True)


def test_the_kfp_target_has_no_rules_parameters_and_its_beam_stages_no_dataflow_identity(
    compiled,
):
    c = compiled["kfp"]
    assert not {*RULES, "private_endpoint"} & set(c.spec["root"]["inputDefinitions"]["parameters"])
    for task in ("create-tfrecords", "batch-predict", "stream-predict"):
        parameters = c.tasks()[task][1]["inputs"]["parameters"]
        for name in DATAFLOW_RULES:  # set in beam_args there, if at all
            assert parameters[name] == {"runtimeValue": {"constant": ""}}, (task, name)


# The vertex-only parameters in the example params files: indented under their comment,
# apart from the "# name: value" lines every target takes.
VERTEX_EXAMPLE = re.compile(r"^#   ([a-z_]+: .*)$", re.MULTILINE)


@pytest.mark.parametrize(
    "example, task",
    [("params.example.yaml", "classification"), ("params.detection.example.yaml", "detection")],
)
def test_the_example_params_show_the_vertex_rules_with_their_types(example, task):
    from pipelines import detection_pipeline

    path = Path(__file__).resolve().parents[1] / "pipelines" / example
    shown = yaml.safe_load("\n".join(VERTEX_EXAMPLE.findall(path.read_text())))
    assert set(shown) == {*RULES, "private_endpoint"}
    build = detection_pipeline.build_pipeline if task == "detection" else build_pipeline
    inputs = build("vertex").component_spec.inputs
    kinds = {"String": str, "Boolean": bool}
    for name, value in shown.items():
        assert isinstance(value, kinds[inputs[name].type]), (name, value)
    assert not set(shown) & set(build("kfp").component_spec.inputs)


# Component parameter -> the pipeline parameter every Beam stage takes it from.
DATAFLOW_SETTINGS = (
    ("beam_args", "beam_args"),
    ("project", "dataflow_project"),
    ("region", "dataflow_region"),
    ("temp_location", "dataflow_temp_location"),
    ("worker_machine_type", "dataflow_machine_type"),
    ("max_num_workers", "dataflow_max_workers"),
)


@pytest.mark.parametrize("target", TARGETS)
def test_both_beam_stages_get_the_same_dataflow_settings_and_their_worker_image(compiled, target):
    c = compiled[target]
    tasks = c.tasks()
    for task, stage in (
        ("create-tfrecords", "create_tfrecords"),
        ("batch-predict", "batch_predict"),
    ):
        parent, spec = tasks[task]
        parameters = spec["inputs"]["parameters"]
        for parameter, pipeline_parameter in (("runner", "beam_runner"), *DATAFLOW_SETTINGS):
            source = c.source(parent, parameters[parameter])
            assert source == {"componentInputParameter": pipeline_parameter}, (task, parameter)
        image = parameters["sdk_container_image"]["runtimeValue"]["constant"]
        assert image == f"{REGISTRY}/{stage.replace('_', '-')}-dataflow:{TAG}"


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_cloud_targets_launch_streaming_predictions_on_dataflow_when_given_a_subscription(
    compiled, target
):
    c = compiled[target]
    tasks = c.tasks()
    parent, spec = tasks["stream-predict"]
    (condition,) = [
        s["triggerPolicy"]["condition"]
        for _, s in tasks.values()
        if s["taskInfo"]["name"] == "streaming-predictions"
    ]
    assert condition == "inputs.parameter_values['pipelinechannel--stream_subscription'] != ''"
    parameters = spec["inputs"]["parameters"]
    # A streaming job never ends: it is launched on Dataflow whatever beam_runner says.
    assert parameters["runner"]["runtimeValue"]["constant"] == "DataflowRunner"
    for parameter, pipeline_parameter in (
        ("input_subscription", "stream_subscription"),
        ("output_topic", "stream_output_topic"),
        ("dead_letter_topic", "stream_dead_letter_topic"),
        ("job_name", "stream_job_name"),
        ("output_dir", "stream_output_dir"),
        ("top_k", "top_k"),
        *DATAFLOW_SETTINGS,
    ):
        source = c.source(parent, parameters[parameter])
        assert source == {"componentInputParameter": pipeline_parameter}, parameter
    image = parameters["sdk_container_image"]["runtimeValue"]["constant"]
    assert image == f"{REGISTRY}/batch-predict-dataflow:{TAG}"
    assert spec["inputs"]["artifacts"]["model"] == {
        "componentInputArtifact": "pipelinechannel--export-exported_model"
    }
    assert spec["cachingOptions"].get("enableCache", False) is False
    defaults = c.spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["stream_subscription"]["defaultValue"] == ""
    # Inside the quality gate: only a model that passed it streams.
    gate_tasks = c.spec["components"][c.gate]["dag"]["tasks"]
    assert "streaming-predictions" in {s["taskInfo"]["name"] for s in gate_tasks.values()}


def test_the_local_pipeline_has_no_streaming_job():
    pipeline = build_pipeline("local")
    assert not any(name.startswith("stream_") for name in pipeline.component_spec.inputs)


# A local absolute path starts a value or follows a quote, space, "=" or ":" (not a
# gs://bucket/tmp path, where a name precedes it).
LOCAL_PATH = re.compile(r"(?<![\w.-])/(tmp|home|root|Users|var/folders|private)(/|\b)")
SECRETS = (
    "BEGIN PRIVATE KEY",
    "PRIVATE KEY-----",
    "private_key_id",
    "access_token",
    "refresh_token",
    "client_secret",
    "Bearer ",
    "ya29.",
    "AIza",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@pytest.mark.parametrize("target", TARGETS)
def test_yaml_has_no_local_path_user_or_credential(compiled, target, tmp_path):
    text = compiled[target].text
    repo = str(Path(__file__).resolve().parents[1])
    for local in {repo, os.getcwd(), str(Path.home()), str(tmp_path.parent.parent)}:
        assert local not in text, local
    match = LOCAL_PATH.search(text)
    assert match is None, text[max(0, match.start() - 80) : match.end() + 80]
    for secret in SECRETS:
        assert secret not in text, secret
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user and user not in {"root"}:  # "root" is also a common word in a pipeline spec
        assert not re.search(rf"\b{re.escape(user)}\b", text), user


def test_the_local_pipeline_has_no_cloud_settings():
    local = build_pipeline("local")
    inputs = set(local.component_spec.inputs)
    assert set(LOCAL_PARAMETERS) <= inputs
    assert not inputs & (set(KFP_PARAMETERS) - set(LOCAL_PARAMETERS))
    assert not inputs & set(VERTEX_PARAMETERS)
    assert not {"traffic_percent", "deploy_target", "project", "serving_image"} & inputs
    for executor in local.pipeline_spec.deployment_spec.fields[
        "executors"
    ].struct_value.fields.values():
        container = executor.struct_value.fields["container"].struct_value.fields
        assert "resources" not in container
    assert not local.platform_spec.platforms


def test_compiled_kfp_yaml_runs_end_to_end_under_kfp_local(compiled, kfp_local, sample_data):
    """The kfp target's YAML (GPU request, node selector, resources) loaded back with kfp
    runs under kfp local: its orchestrator warns that resource and accelerator settings
    have no local effect and ignores them, and it never reads the Kubernetes platform
    spec, so the very file that goes to GKE runs here."""
    pipeline = components.load_component_from_file(str(compiled["kfp"].path))
    with pytest.warns(UserWarning, match="no effect in the current local runner") as ignored:
        run = run_pipeline(
            pipeline,
            str(kfp_local),
            image_dir=sample_data.image_dir,
            backbone="MobileNetV3Small",
            weights="none",
            image_size=32,
            batch_size=16,
            epochs=1,
            accuracy_threshold=0.0,
            model_repository=str(kfp_local.parent / "model_repository"),
        )
    ignored = [str(w.message) for w in ignored]
    assert any("'train'" in m and "accelerator" in m for m in ignored), ignored
    expected = {
        "create-tfrecords": {"dataset", "report"},
        "train": {"model", "metrics", "curves"},
        "export": {"exported_model"},
        "evaluate": {"metrics", "confusion_matrix", "explanations"},
        "deploy": {"endpoint"},
        "batch-predict": {"predictions"},
    }
    for task, artifacts in expected.items():
        outputs = task_outputs(run, task)
        assert outputs is not None, f"{task} did not run"
        assert set(outputs["artifacts"]) == artifacts, task
    assert task_outputs(run, "evaluate")["parameterValues"]["Output"] is True
    endpoint = output_artifact(task_outputs(run, "deploy"), "endpoint")["metadata"]
    assert os.path.exists(os.path.join(endpoint["model_dir"], "saved_model.pb"))
    predictions = output_artifact(task_outputs(run, "batch-predict"), "predictions")
    assert predictions["metadata"]["rows"] > 0 and predictions["metadata"]["errors"] == 0


def test_kfp_tune_takes_the_gpu_only_when_it_searches(compiled):
    """The tune task runs on every target and feeds train; on kfp the search asks for
    train's GPU node, while passing the given values on (no trials) asks for nothing."""
    c = compiled["kfp"]
    tasks = c.tasks()
    branches = {
        spec["taskInfo"]["name"]: spec["componentRef"]["name"]
        for _, spec in tasks.values()
        if spec["taskInfo"]["name"] in ("hyperparameter-tuning", "no-hyperparameter-tuning")
    }
    assert set(branches) == {"hyperparameter-tuning", "no-hyperparameter-tuning"}
    resources = {
        name: c.executor(task, branch)["container"].get("resources", {})
        for name, branch in branches.items()
        for task in c.spec["components"][branch]["dag"]["tasks"]
    }
    assert resources["hyperparameter-tuning"]["accelerator"]["resourceCount"] == "1"
    assert "accelerator" not in resources["no-hyperparameter-tuning"]
    # Train's tuned settings come from the tune step (its outputs), not the parameters.
    for target in TARGETS:
        c = compiled[target]
        tasks = c.tasks()
        jobs = list(c.custom_jobs()) if target == "vertex" else ["train"]
        for job in jobs:
            parent, spec = tasks[job]
            for name in ("learning_rate", "dropout", "crop_area_min", "fine_tune_layers"):
                source = c.source(parent, spec["inputs"]["parameters"][name])
                assert "taskOutputParameter" in source, (target, job, name, source)


@pytest.mark.parametrize("target", TARGETS)
def test_evaluate_gets_the_champion_from_an_uncached_lookup(compiled, target):
    c = compiled[target]
    tasks = c.tasks()
    champion = c.source("root", tasks["evaluate"][1]["inputs"]["parameters"]["champion_dir"])
    producer = champion["taskOutputParameter"]["producerTask"]
    assert producer == ("find-vertex-champion" if target == "vertex" else "find-champion")
    assert tasks[producer][1]["cachingOptions"].get("enableCache", False) is False
    margin = tasks["evaluate"][1]["inputs"]["parameters"]["champion_margin"]
    assert margin == {"componentInputParameter": "champion_margin"}
