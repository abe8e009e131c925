"""The tune stage: off by default (nothing trained), its ranges checked, a tiny real
KerasTuner search, the component under kfp local with its best values reaching train,
and the Vertex AI side (the job's spec, its trial's command line, the best trial read
back, the compiled pipeline steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from components.common import model_dir as model_dir_lib
from components.common.cli import defaults
from components.train.component import train as train_component
from components.train.training import train as train_function
from components.tune import trial as trial_cli, tuning, vertex
from components.tune.component import best_vertex_trial, tune as tune_component
from components.tune.space import TUNED, SearchSpace
from pipelines.run_local import output_artifact, run_pipeline, task_outputs
from pipelines.vertex_target import job_rules
from pipelines.vertex_tuning import tune_on_vertex

TINY = {
    "backbone": "MobileNetV3Small",
    "weights": "none",
    "image_size": 32,
    "batch_size": 16,
    "epochs": 1,
    "early_stopping_patience": 0,
}
GIVEN = {"learning_rate": 0.004, "dropout": 0.3, "crop_area_min": 0.6, "fine_tune_layers": 7}


def test_every_trial_setting_defaults_to_trains():
    train_defaults = defaults(train_function)
    shared = set(defaults(tuning.tune)) & set(train_defaults)
    assert set(TUNED) | {"backbone", "epochs", "seed", "cache"} <= shared
    for name in shared:
        assert defaults(tuning.tune)[name] == train_defaults[name], name


def test_tuning_off_returns_the_given_values_and_loads_no_training_code(tmp_path):
    code = f"""
import json, sys
from components.tune.tuning import tune
result = tune("{tmp_path}/no-dataset", "{tmp_path}/out", trials=0, **{GIVEN!r})
loaded = sorted(m for m in sys.modules if m.startswith(("components.train", "keras_tuner")))
print(json.dumps({{"result": result, "loaded": loaded}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    result = report["result"]
    assert {name: result[name] for name in TUNED} == GIVEN
    assert result["trials"] == [] and result["best_trial"] is None
    assert json.loads((tmp_path / "out" / "trials.json").read_text()) == result
    page = (tmp_path / "out" / "trials.html").read_text()
    assert "Tuning is off" in page and "0.004" in page


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"trials": -1}, "trials must be 0"),
        ({"objective": "accuracy"}, "objective must be one of"),
        ({"learning_rate_low": 0.1, "learning_rate_high": 0.01}, "learning rate range"),
        ({"learning_rate_low": 0.0}, "learning rate range"),
        ({"dropout_high": 1.0}, "dropout range"),
        ({"dropout_low": 0.4, "dropout_high": 0.3}, "dropout range"),
        ({"crop_area_min_high": 0.9, "crop_area_max": 0.8}, r"crop_area_max \(0.8\)"),
        ({"crop_area_min_low": 0.0}, "crop_area_min range"),
        ({"fine_tune_layers_choices": [20, -2]}, "fine_tune_layers_choices"),
        ({"fine_tune_layers_choices": [20, 20]}, "fine_tune_layers_choices"),
        ({"fine_tune_layers_choices": []}, "fine_tune_layers_choices"),
        (
            {"learning_rate_high": 1e-4, "dropout_high": 0.0, "crop_area_min_low": 1.0},
            "nothing to search",
        ),
    ],
)
def test_bad_ranges_are_clear_errors(tmp_path, setting, message):
    settings = {"trials": 2, **TINY, **setting}
    with pytest.raises(ValueError, match=message):
        tuning.tune(str(tmp_path / "no-dataset"), str(tmp_path / "out"), **settings)


def test_what_a_search_varies_depends_on_the_weights_and_augmentation():
    space = SearchSpace(dropout_low=0.25, dropout_high=0.25, fine_tune_layers_choices=(5, -1))
    assert space.ranges(pretrained=True, augment=True) == {
        "learning_rate": (1e-4, 1e-2),
        "crop_area_min": (0.25, 1.0),
        "fine_tune_layers": (5, -1),
    }
    assert space.fixed(GIVEN, pretrained=True, augment=True) == {"dropout": 0.25}
    # Without pretrained weights there is no fine-tuning; without augmentation no crop.
    assert set(space.ranges(pretrained=False, augment=False)) == {"learning_rate"}
    assert space.fixed(GIVEN, pretrained=False, augment=False) == {
        "dropout": 0.25,
        "crop_area_min": GIVEN["crop_area_min"],
        "fine_tune_layers": GIVEN["fine_tune_layers"],
    }


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    from components.tune import tuner

    calls = []

    def train_or_fail(dataset_dir, model_dir, **settings):
        calls.append(settings)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return {"val_accuracy": settings["dropout"], "val_loss": 1 - settings["dropout"]}

    monkeypatch.setattr(tuner, "train", train_or_fail)
    result = tuning.tune("data", str(tmp_path), trials=3, objective="val_loss", **TINY, **GIVEN)
    trials = result["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert "out of memory" in trials[1]["error"] and trials[1]["score"] is None
    # Lowest val_loss: the highest dropout of the completed trials.
    best = max((trials[0], trials[2]), key=lambda t: t["values"]["dropout"])
    assert result["best_trial"] == best["trial"] and result["dropout"] == best["values"]["dropout"]
    # Every trial trained with the fixed settings and its own values.
    assert all(c["epochs"] == 1 and c["fine_tune_layers"] == 7 for c in calls)
    assert [c["dropout"] for c in calls] == [t["values"]["dropout"] for t in trials]


def test_a_setting_train_refuses_stops_the_search_at_once(tmp_path, monkeypatch):
    from components.tune import tuner

    calls = []

    def refuse(dataset_dir, model_dir, **settings):
        calls.append(settings)
        raise ValueError("precision must be one of auto, float32")

    monkeypatch.setattr(tuner, "train", refuse)
    with pytest.raises(ValueError, match="trial 0: precision must be one of"):
        tuning.tune("data", str(tmp_path), trials=3, **TINY)
    assert len(calls) == 1


@pytest.mark.slow
def test_a_tiny_search_keeps_the_best_trials_values(tfrecord_dataset, tmp_path):
    out = tmp_path / "search"
    result = tuning.tune(tfrecord_dataset, str(out), trials=2, **TINY, **GIVEN)
    trials = result["trials"]
    assert [t["trial"] for t in trials] == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials)
    best = max(trials, key=lambda t: t["score"])
    assert result["best_score"] == best["score"] == best["metrics"]["val_accuracy"]
    assert {name: result[name] for name in TUNED} == best["values"]
    # Drawn within the ranges; fine_tune_layers not searched from random weights.
    assert set(result["searched"]) == {"learning_rate", "dropout", "crop_area_min"}
    for trial in trials:
        values = trial["values"]
        assert 1e-4 <= values["learning_rate"] <= 1e-2 and 0 <= values["dropout"] <= 0.5
        assert 0.25 <= values["crop_area_min"] <= 1.0
        assert values["fine_tune_layers"] == GIVEN["fine_tune_layers"]
        # Each trial trained with its values, and only its weights were dropped.
        trained = model_dir_lib.read_config(str(out / "trials" / trial["trial"]))["training"]
        assert trained["learning_rate"] == values["learning_rate"]
        assert trained["dropout"] == values["dropout"]
        assert trained["augmentation"]["crop_area_min"] == values["crop_area_min"]
        assert not (out / "trials" / trial["trial"] / "model.keras").exists()
    assert json.loads((out / "trials.json").read_text()) == result
    assert (out / "trials.html").read_text().count('<tr class="best">') == 1


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> str:
    """A no-top MobileNetV3Small weights file: "pretrained" weights without a download,
    so that every tuned setting (fine_tune_layers too) is searched."""
    from components.train import backbones

    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v3_small_notop.weights.h5")
    backbones.build_backbone("MobileNetV3Small", 32, "none").save_weights(path)
    return path


@dsl.pipeline(name="tune-then-train")
def _tune_then_train(dataset_dir: str, weights: str):
    dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset, reimport=False)
    fixed = {**TINY, "weights": weights, "fine_tune_epochs": 1}
    tuned = tune_component(
        dataset=dataset.output, trials=2, fine_tune_layers_choices=[0, 10], **fixed
    )
    train_component(
        dataset=dataset.output, **{name: tuned.outputs[name] for name in TUNED}, **fixed
    )


@pytest.mark.slow
def test_the_tuners_best_values_reach_train_under_kfp_local(
    kfp_local, tfrecord_dataset, backbone_weights
):
    run = run_pipeline(
        _tune_then_train, str(kfp_local), dataset_dir=tfrecord_dataset, weights=backbone_weights
    )
    tuned = task_outputs(run, "tune", required=True)
    values = tuned["parameterValues"]
    assert set(values) == set(TUNED)
    results = output_artifact(tuned, "results")["metadata"]
    assert {name: results[name] for name in TUNED} == values and results["trials"] == 2
    search = output_artifact(tuned, "search")["uri"]
    summary = json.loads(Path(search, "trials.json").read_text())
    assert set(summary["searched"]) == set(TUNED)  # pretrained: fine_tune_layers too
    assert results["best_val_accuracy"] == summary["best_score"]
    assert {name: summary[name] for name in TUNED} == values
    assert values["fine_tune_layers"] in (0, 10)
    page = Path(output_artifact(tuned, "report")["uri"]).read_text()
    assert page.count('<tr class="best">') == 1

    model = output_artifact(task_outputs(run, "train", required=True), "model")["uri"]
    trained = model_dir_lib.read_config(model)["training"]
    assert trained["learning_rate"] == values["learning_rate"]
    assert trained["dropout"] == values["dropout"]
    assert trained["augmentation"]["crop_area_min"] == values["crop_area_min"]
    assert trained["fine_tune_layers"] == values["fine_tune_layers"]
    assert trained["fine_tune_epochs"] == (1 if values["fine_tune_layers"] else 0)


# --- Vertex AI ----------------------------------------------------------------------------


def test_the_vertex_study_is_what_gcpc_serializes():
    from google.cloud import aiplatform_v1
    from google.cloud.aiplatform import hyperparameter_tuning as hpt
    from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
        serialize_metrics,
        serialize_parameters,
    )

    ranges = SearchSpace().ranges(pretrained=True, augment=True)
    ours = aiplatform_v1.StudySpec(
        parameters=vertex.study_spec_parameters(ranges),
        metrics=vertex.study_spec_metrics("val_loss"),
    )
    gcpc = aiplatform_v1.StudySpec(
        parameters=serialize_parameters(
            {
                "learning_rate": hpt.DoubleParameterSpec(min=1e-4, max=1e-2, scale="log"),
                "dropout": hpt.DoubleParameterSpec(min=0.0, max=0.5, scale="linear"),
                "crop_area_min": hpt.DoubleParameterSpec(min=0.25, max=1.0, scale="linear"),
                "fine_tune_layers": hpt.CategoricalParameterSpec(values=["0", "20", "50", "-1"]),
            }
        ),
        metrics=serialize_metrics({"val_loss": "minimize"}),
    )
    assert ours == gcpc


def test_a_vertex_trial_trains_with_the_fixed_settings_and_its_drawn_values():
    tuning = {"trials": "3", "weights": "none", "epochs": 4.0, "augment": "false", **GIVEN}
    spec = vertex.tuning_job_spec(tuning, "gs://b/data", "reg/train:t", "n1-standard-8", "ACCELERATOR_TYPE_UNSPECIFIED", 0)  # fmt: skip
    # Only the learning rate and dropout are searched: no crop without augmentation, no
    # fine-tuning from random weights.
    assert [p["parameter_id"] for p in spec["study_spec_parameters"]] == [
        "learning_rate",
        "dropout",
    ]
    assert spec["fixed"] == {"crop_area_min": 0.6, "fine_tune_layers": 7}
    (pool,) = spec["worker_pool_specs"]
    container = pool["container_spec"]
    assert container["image_uri"] == "reg/train:t" and pool["replica_count"] == 1
    assert container["command"] == ["python", "-m", "components.tune.trial"]
    # The job parses as Vertex AI's.
    from google.cloud import aiplatform_v1

    aiplatform_v1.HyperparameterTuningJob(
        display_name="tune",
        study_spec={
            "metrics": spec["study_spec_metrics"],
            "parameters": spec["study_spec_parameters"],
        },
        max_trial_count=3,
        parallel_trial_count=1,
        trial_job_spec={"worker_pool_specs": spec["worker_pool_specs"]},
    )
    # What the trial's command line gives train, once Vertex AI appends the values.
    drawn = ["--learning_rate=0.0031", "--dropout=0.125"]
    objective, args = trial_cli.parse_args([*container["args"], *drawn, "--model-dir", "m"])
    expected = {
        **defaults(train_function),
        "dataset_dir": "gs://b/data",
        "model_dir": "m",
        "weights": "none",
        "epochs": 4,
        "augment": False,
        "crop_area_min": 0.6,
        "fine_tune_layers": 7,
        "learning_rate": 0.0031,
        "dropout": 0.125,
    }
    assert objective == "val_accuracy" and vars(args) == expected


def test_a_vertex_trial_reports_its_objective_with_hypertune(tmp_path, monkeypatch):
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    trial_cli.report("val_loss", {"val_loss": 0.75, "val_accuracy": 0.5, "epochs_run": 3})
    (line,) = metric_file.read_text().splitlines()
    reported = json.loads(line)
    assert reported["val_loss"] == "0.75" and reported["global_step"] == "3"


@pytest.mark.slow
def test_a_vertex_trial_trains_and_reports_to_the_study(tfrecord_dataset, tmp_path, monkeypatch):
    model_dir, metric_file = tmp_path / "trial" / "model", tmp_path / "output.metrics"
    monkeypatch.setenv("AIP_MODEL_DIR", str(model_dir))  # what Vertex AI sets for a trial
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    spec = vertex.tuning_job_spec(
        {"trials": 2, **TINY}, tfrecord_dataset, "train", "n1-standard-4", "", 0
    )
    args = spec["worker_pool_specs"][0]["container_spec"]["args"]
    trial_cli.main([*args, "--learning_rate=0.0031", "--dropout=0.125", "--crop_area_min=0.75"])
    config = model_dir_lib.read_config(str(model_dir))
    trained = config["training"]
    assert (trained["learning_rate"], trained["dropout"]) == (0.0031, 0.125)
    assert trained["augmentation"]["crop_area_min"] == 0.75 and trained["epochs"] == 1
    reported = json.loads(metric_file.read_text().splitlines()[-1])
    assert float(reported["val_accuracy"]) == config["metrics"]["val_accuracy"]


def _tuning_job(trials: list[tuple]):
    """A finished HyperparameterTuningJob of ``(id, state, val_accuracy, values)`` trials."""
    from google.cloud import aiplatform_v1 as v1

    made = []
    for trial_id, state, score, values in trials:
        metrics = [v1.Measurement.Metric(metric_id="val_accuracy", value=score)]
        made.append(
            v1.Trial(
                id=trial_id,
                state=state,
                parameters=[v1.Trial.Parameter(parameter_id=k, value=v) for k, v in values.items()],
                final_measurement=v1.Measurement(metrics=metrics) if score is not None else None,
            )
        )
    return v1.HyperparameterTuningJob(
        name="projects/p/locations/europe-west4/hyperparameterTuningJobs/42", trials=made
    )


class _JobClient:
    def __init__(self, job):
        self.job, self.names = job, []

    def get_hyperparameter_tuning_job(self, name):
        self.names.append(name)
        return self.job


def test_the_best_vertex_trial_is_read_back_from_the_finished_job():
    from google.cloud import aiplatform_v1 as v1

    ok, failed = v1.Trial.State.SUCCEEDED, v1.Trial.State.INFEASIBLE
    job = _tuning_job(
        [
            ("1", ok, 0.5, {"learning_rate": 0.01, "fine_tune_layers": "20"}),
            ("2", ok, 0.75, {"learning_rate": 0.002, "fine_tune_layers": "-1"}),
            ("3", failed, None, {"learning_rate": 0.003, "fine_tune_layers": "0"}),
            ("4", ok, 0.75, {"learning_rate": 0.005, "fine_tune_layers": "0"}),
        ]
    )
    client = _JobClient(job)
    resource = "https://europe-west4-aiplatform.googleapis.com/v1/" + job.name
    gcp_resources = json.dumps(
        {"resources": [{"resourceType": "HyperparameterTuningJob", "resourceUri": resource}]}
    )
    read = vertex.read_tuning_job(gcp_resources, client)
    assert client.names == [job.name]
    best = vertex.best_trial(read, "val_accuracy")
    # The highest score, the earliest of equals; the categorical value as a number.
    assert best == {
        "trial": "2",
        "score": 0.75,
        "values": {"learning_rate": 0.002, "fine_tune_layers": -1},
    }
    by_loss = {
        "trials": [
            {
                "id": str(i),
                "state": "SUCCEEDED",
                "parameters": [{"parameter_id": "dropout", "value": dropout}],
                "final_measurement": {"metrics": [{"metric_id": "val_loss", "value": loss}]},
            }
            for i, (dropout, loss) in enumerate([(0.1, 0.9), (0.2, 0.4), (0.3, 0.6)], start=1)
        ]
    }
    assert vertex.best_trial(by_loss, "val_loss")["values"] == {"dropout": 0.2}  # the lowest
    with pytest.raises(RuntimeError, match="no trial of .* succeeded"):
        vertex.best_trial({"trials": [{"id": "1", "state": "INFEASIBLE"}]}, "val_accuracy")
    with pytest.raises(ValueError, match="no HyperparameterTuningJob"):
        vertex.tuning_job_name(json.dumps({"resources": []}))


def test_the_best_vertex_trial_component_logs_and_returns_typed_values(monkeypatch):
    from kfp.dsl import Metrics

    job = {
        "name": "j",
        "trials": [
            {
                "id": "1",
                "state": "SUCCEEDED",
                "parameters": [{"parameter_id": "dropout", "value": 0.125}],
                "final_measurement": {"metrics": [{"metric_id": "val_accuracy", "value": 0.5}]},
            }
        ],
    }
    monkeypatch.setattr(vertex, "read_tuning_job", lambda gcp_resources: job)
    results = Metrics(name="results", uri="gs://b/results")
    fixed = {"learning_rate": 0.001, "crop_area_min": 0.5, "fine_tune_layers": 20.0}
    values = best_vertex_trial.python_func("{}", fixed, "val_accuracy", results)
    assert values == (0.001, 0.125, 0.5, 20) and isinstance(values[3], int)
    assert results.metadata["best_val_accuracy"] == 0.5 and results.metadata["dropout"] == 0.125


def _compiled(pipeline_func, tmp_path) -> dict:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline_func, str(path))
    return yaml.safe_load(path.read_text())


def _tasks(spec: dict) -> dict:
    """Every task of the compiled pipeline, in whichever DAG, by name."""
    dags = [spec["root"], *spec["components"].values()]
    return {name: t for d in dags for name, t in d.get("dag", {}).get("tasks", {}).items()}


RULES = {
    "service_account": "tuner@my-project.iam.gserviceaccount.com",
    "encryption_spec_key_name": "projects/my-project/locations/europe-west4/keyRings/r/cryptoKeys/k",
    "network": "projects/123456789/global/networks/ml-vpc",
}


def test_vertex_tuning_compiles_with_the_trials_chosen_at_run_time(tmp_path):
    @dsl.pipeline(name="tune-on-vertex")
    def pipeline(dataset_uri: str, trials: int = 0, learning_rate: float = 0.001):
        dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        tuning = {"trials": trials, "learning_rate": learning_rate, **TINY}
        tuned = tune_on_vertex(
            dataset.output,
            tuning,
            "g2-standard-8",
            "NVIDIA_L4",
            1,
            "my-project",
            "europe-west4",
            rules=job_rules(*RULES.values()),
        )
        train_component(dataset=dataset.output, **tuned)

    spec = _compiled(pipeline, tmp_path)
    tasks = _tasks(spec)
    assert {"vertex-tuning-spec", "hyperparameter-tuning-job", "best-vertex-trial", "tune"} <= set(tasks)  # fmt: skip
    job = tasks["hyperparameter-tuning-job"]["inputs"]["parameters"]
    for name in ("worker_pool_specs", "study_spec_parameters", "study_spec_metrics"):
        assert job[name]["taskOutputParameter"] == {
            "outputParameterKey": name,
            "producerTask": "vertex-tuning-spec",
        }
    assert job["max_trial_count"] == {"componentInputParameter": "pipelinechannel--trials"}
    assert job["location"]["runtimeValue"]["constant"] == "europe-west4"
    # The job runs under the project's rules: its service account, key and network.
    assert {name: job[name]["runtimeValue"]["constant"] for name in RULES} == RULES
    # train takes each value from whichever branch ran.
    train_inputs = tasks["train"]["inputs"]["parameters"]
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["outputs"]["parameters"]
    for name in TUNED:
        oneof = train_inputs[name]["taskOutputParameter"]["outputParameterKey"]
        producers = [
            s["producerSubtask"] for s in branches[oneof]["valueFromOneof"]["parameterSelectors"]
        ]
        assert producers == ["condition-2", "condition-3"]
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items() if "container" in e}
    assert images["exec-tune"].endswith("/train:dev")
    assert images["exec-best-vertex-trial"].endswith("/deploy:dev")
    assert images["exec-vertex-tuning-spec"].endswith("/export:dev")
    trial_image = tasks["vertex-tuning-spec"]["inputs"]["parameters"]["image"]
    assert trial_image["runtimeValue"]["constant"].endswith("/train:dev")


@pytest.mark.parametrize("trials, steps", [(0, {"tune"}), (3, {"hyperparameter-tuning-job"})])
def test_vertex_tuning_compiles_with_the_trials_fixed_at_compile_time(tmp_path, trials, steps):
    @dsl.pipeline(name="tune-on-vertex-fixed")
    def pipeline(dataset_uri: str):
        dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        tuned = tune_on_vertex(
            dataset.output,
            {"trials": trials},
            "n1-standard-8",
            "NVIDIA_L4",
            1,
            "p",
            "l",
            rules=job_rules("", "", ""),
        )
        train_component(dataset=dataset.output, **tuned)

    tasks = _tasks(_compiled(pipeline, tmp_path))
    assert not any(name.startswith("condition") for name in tasks)
    assert steps <= set(tasks) and not ({"tune", "hyperparameter-tuning-job"} - steps) & set(tasks)


def test_the_tune_command_line_runs_here():
    done = subprocess.run(
        [sys.executable, "-m", "components.tune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0 and "python -m components.tune" in done.stdout
    assert "--fine-tune-layers-choices" in done.stdout and "--learning-rate-low" in done.stdout
