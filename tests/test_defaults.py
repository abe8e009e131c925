"""One default per setting: a stage's defaults are its stage function's, and each layer that
restates them (the KFP component, the command line, the pipelines of every target) must
agree. Change one default in one layer and a test here names it."""

import pytest
from google.protobuf import json_format

from components.batch_predict import beam_pipeline as batch_beam, vertex as batch_vertex
from components.batch_predict.component import batch_predict, batch_predict_vertex
from components.common.beam import DataflowSettings
from components.common.cli import defaults
from components.create_tfrecords import beam_pipeline as tfrecords_beam
from components.create_tfrecords.component import create_tfrecords
from components.deploy import kserve, local, vertex as deploy_vertex_lib
from components.deploy.component import deploy, deploy_kserve, deploy_vertex
from components.detection import (
    create_tfrecords as detection_tfrecords,
    evaluation as detection_evaluation,
    export as detection_export,
    training as detection_training,
)
from components.detection.components import (
    create_detection_tfrecords,
    evaluate_detector,
    export_detector,
    train_detector,
)
from components.evaluate.component import evaluate
from components.evaluate.evaluation import evaluate_export
from components.export.component import export
from components.export.saved_model import export_saved_model
from components.export_edge.component import export_edge
from components.export_edge.edge import export_edge as export_edge_models
from components.stream_predict import beam_pipeline as stream_beam
from components.stream_predict.component import stream_predict
from components.train.component import train
from components.train.training import train as train_model
from components.tune.component import tune
from components.tune.tuning import tune as tune_model
from pipelines import detection_pipeline
from pipelines.pipeline import TARGETS, build_pipeline

# component, its stage function, the component's parameters the function names otherwise.
STAGES = {
    "create_tfrecords": (create_tfrecords, tfrecords_beam.run, {}),
    "create_detection_tfrecords": (create_detection_tfrecords, detection_tfrecords.run, {}),
    "train_detector": (train_detector, detection_training.train, {}),
    "export_detector": (export_detector, detection_export.export_detector, {}),
    "evaluate_detector": (evaluate_detector, detection_evaluation.evaluate_export, {}),
    "train": (train, train_model, {}),
    "tune": (tune, tune_model, {}),
    "export": (export, export_saved_model, {}),
    "export_edge": (export_edge, export_edge_models, {}),
    "evaluate": (evaluate, evaluate_export, {}),
    "deploy": (deploy, local.deploy_local, {}),
    "deploy_vertex": (deploy_vertex, deploy_vertex_lib.deploy_to_vertex, {}),
    "deploy_kserve": (
        deploy_kserve,
        kserve.deploy_kserve,
        {"model_repository": "model_repository_uri", "model_name": "name"},
    ),
    "batch_predict": (batch_predict, batch_beam.run, {}),
    "batch_predict_vertex": (batch_predict_vertex, batch_vertex.run_batch_prediction, {}),
    "stream_predict": (stream_predict, stream_beam.run, {}),
}
# Where a layer's default differs from the stage function's by design, and why.
ON_PURPOSE = {
    # The component keeps the model repository in its own output artifact unless told;
    # the function (and its CLI) use a folder in the user's cache.
    ("deploy", "model_repository"),
}


def _same(a, b) -> bool:
    """Equal defaults; an empty list, tuple, dict or None all mean "none"."""
    if a in (None, [], (), {}) or b in (None, [], (), {}):
        return a in (None, [], (), {}) and b in (None, [], (), {})
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


def component_defaults(component) -> dict:
    """The parameters of a KFP component that have a default (artifacts have none)."""
    return {
        name: spec.default
        for name, spec in component.component_spec.inputs.items()
        if spec.default is not None or spec.optional
    }


@pytest.mark.parametrize("stage", STAGES)
def test_component_defaults_are_the_stage_functions(stage):
    component, function, renamed = STAGES[stage]
    expected = defaults(function)
    if "dataflow" in expected:  # the Beam stages' named Dataflow settings, one object
        expected |= defaults(DataflowSettings)
    compared = 0
    for name, default in component_defaults(component).items():
        if (stage, name) in ON_PURPOSE:
            continue
        target = renamed.get(name, name)
        if target in expected:
            compared += 1
            assert _same(default, expected[target]), (
                f"{stage}: the component's {name}={default!r}, "
                f"{function.__module__}.{function.__name__}'s {target}={expected[target]!r}"
            )
    assert compared >= 2, f"{stage}: nothing compared"


# (module, minimal argv, option dest -> function parameter) of each stage's command line.
CLIS = {
    "create_tfrecords": (
        "components.create_tfrecords.__main__",
        ["--output-dir", "o", "--image-dir", "i"],
        {"csv": "csv_uri", "labels": "labels_uri"},
    ),
    "train": ("components.train.__main__", ["--dataset-dir", "d", "--model-dir", "m"], {}),
    "tune": ("components.tune.__main__", ["--dataset-dir", "d", "--output-dir", "o"], {}),
    "export": ("components.export.__main__", ["--model-dir", "m", "--export-dir", "e"], {}),
    "export_edge": (
        "components.export_edge.__main__",
        ["--export-dir", "e", "--dataset-dir", "d", "--tflite-dir", "t", "--tfjs-dir", "j"],
        {},
    ),
    "evaluate": ("components.evaluate.__main__", ["--export-dir", "e", "--dataset-dir", "d"], {}),
    "batch_predict": (
        "components.batch_predict.__main__",
        ["--model-dir", "m", "--output-dir", "o", "--dataset-dir", "d"],
        {},
    ),
    "stream_predict": (
        "components.stream_predict.__main__",
        ["--input-subscription", "s", "--output-topic", "t", "--dead-letter-topic", "d"]
        + ["--model-dir", "m"],
        {},
    ),
}


def _parsed(module_name: str, argv: list[str], parse: str = "parse_args") -> dict:
    import importlib

    parsed = getattr(importlib.import_module(module_name), parse)(argv)
    namespace = parsed[0] if isinstance(parsed, tuple) else parsed
    return vars(namespace)


@pytest.mark.parametrize("stage", CLIS)
def test_command_line_defaults_are_the_stage_functions(stage):
    module, argv, renamed = CLIS[stage]
    expected = defaults(STAGES[stage][1])
    given = {flag[2:].replace("-", "_") for flag in argv if flag.startswith("--")}
    for dest, value in _parsed(module, argv).items():
        name = renamed.get(dest, dest)
        if dest in given or value is None:  # None: the function's own default
            continue
        if name in expected:
            assert _same(value, expected[name]), (
                f"{module}: --{dest.replace('_', '-')} defaults to {value!r}, the stage "
                f"function's {name} to {expected[name]!r}"
            )


def test_deploy_and_vertex_batch_command_lines_defaults_are_their_functions():
    deploy_args = _parsed("components.deploy.__main__", ["--export-dir", "e"])
    for function in (local.deploy_local, deploy_vertex_lib.deploy_to_vertex, kserve.deploy_kserve):
        expected = defaults(function)
        for name, value in deploy_args.items():
            if name in expected and value is not None and name != "model_repository":
                assert _same(value, expected[name]), (function.__name__, name, value)
    vertex_args = _parsed(
        "components.batch_predict.__main__",
        ["--project", "p", "--region", "r", "--gcs-destination-prefix", "gs://b/p",
         "--model", "m", "--dataset-dir", "gs://b/d"],
        "parse_vertex_args",
    )  # fmt: skip
    expected = defaults(batch_vertex.run_batch_prediction)
    given = {"project", "location", "gcs_destination_prefix", "model_resource_name", "dataset_dir"}
    assert set(vertex_args) - given <= set(expected)
    for name, value in vertex_args.items():
        if name not in given:
            assert _same(value, expected[name]), (name, value, expected[name])


def _pipeline_pairs(pipeline):
    """(task, component parameter, pipeline parameter, component default, pipeline
    default) for each component parameter a pipeline parameter feeds."""
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    dags = {"root": spec["root"], **spec["components"]}

    def pipeline_parameter(dag_name: str, source: dict) -> str | None:
        while "componentInputParameter" in source:
            name = source["componentInputParameter"]
            if dag_name == "root":
                return name
            (dag_name, source) = next(
                (outer, task["inputs"]["parameters"][name])
                for outer, dag in dags.items()
                for task in dag.get("dag", {}).get("tasks", {}).values()
                if task["componentRef"]["name"] == dag_name
            )
        return None

    for dag_name, dag in dags.items():
        for task_name, task in dag.get("dag", {}).get("tasks", {}).items():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" not in component:
                continue
            defaults_here = component.get("inputDefinitions", {}).get("parameters", {})
            for name, source in task.get("inputs", {}).get("parameters", {}).items():
                given = pipeline_parameter(dag_name, source)
                if given and "defaultValue" in defaults_here.get(name, {}):
                    yield (
                        task_name,
                        name,
                        given,
                        defaults_here[name]["defaultValue"],
                        parameters[given].get("defaultValue"),
                    )


# The detection pipeline names its model and its streaming job itself; the shared deploy
# and stream_predict components default to the classifier's names.
PIPELINE_ON_PURPOSE = {("detection", "model_name"), ("detection", "stream_job_name")}
PIPELINES = [("classification", t) for t in TARGETS] + [
    ("detection", t) for t in detection_pipeline.TARGETS
]


@pytest.mark.parametrize("task_kind, target", PIPELINES)
def test_pipeline_defaults_are_the_components(task_kind, target):
    build = detection_pipeline.build_pipeline if task_kind == "detection" else build_pipeline
    pairs = list(_pipeline_pairs(build(target)))
    assert len(pairs) > 30
    for task, name, given, component_default, pipeline_default in pairs:
        if str(pipeline_default).startswith("{{$.pipeline_google_cloud_"):
            continue  # the run's own project or region, deliberately not a GCPC default
        if (task_kind, given) in PIPELINE_ON_PURPOSE:
            continue
        assert _same(pipeline_default, component_default), (
            f"{target} pipeline: {given}={pipeline_default!r} feeds {task}'s {name}, "
            f"whose default is {component_default!r}"
        )
