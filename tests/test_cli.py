"""The command lines are their functions' signatures (``common.cli``): each stage's
``python -m components.<stage>`` options and run_local's pipeline flags have one flag per
parameter, typed, documented and defaulted by the function itself."""

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
from collections.abc import Sequence

import pytest

from components.batch_predict import beam_pipeline as batch_beam, vertex as batch_vertex
from components.common import cli
from components.create_tfrecords import beam_pipeline as tfrecords_beam
from components.deploy import kserve, vertex as deploy_vertex
from components.deploy.__main__ import KSERVE_OPTIONS, VERTEX_OPTIONS
from components.evaluate.evaluation import evaluate_export
from components.export.saved_model import export_saved_model
from components.export_edge.edge import export_edge
from components.stream_predict import beam_pipeline as stream_beam
from components.train import training
from components.tune.tuning import tune
from pipelines import pipeline, run_local


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage's command line: what parses it, for which function, from which argv."""

    module: str
    function: object
    argv: Sequence[str]
    parse: str = "parse_args"
    flags: dict = dataclasses.field(default_factory=dict)  # parameter -> flag, if renamed
    leaving_out: Sequence[str] = ()  # parameters that are no flag
    only: Sequence[str] = ()  # the function's parameters this command line sets, if not all

    def names(self) -> list[str]:
        """The parameters that have a flag."""
        return list(self.only) or cli.parameter_names(self.function, self.leaving_out)

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))

    def run_parser(self, argv: Sequence[str]) -> dict:
        module = importlib.import_module(self.module)
        parsed = getattr(module, self.parse)(list(argv))
        return vars(parsed[0] if isinstance(parsed, tuple) else parsed)


BEAM = ("beam_args", "dataflow")
STAGES = {
    "create_tfrecords": Stage(
        "components.create_tfrecords.__main__",
        tfrecords_beam.run,
        ["--output-dir", "o", "--image-dir", "i"],
        flags={"csv_uri": "--csv", "labels_uri": "--labels"},
        leaving_out=BEAM,
    ),
    "train": Stage(
        "components.train.__main__", training.train, ["--dataset-dir", "d", "--model-dir", "m"]
    ),
    "tune": Stage("components.tune.__main__", tune, ["--dataset-dir", "d", "--output-dir", "o"]),
    "export": Stage(
        "components.export.__main__", export_saved_model, ["--model-dir", "m", "--export-dir", "e"]
    ),
    "export_edge": Stage(
        "components.export_edge.__main__",
        export_edge,
        ["--export-dir", "e", "--dataset-dir", "d", "--tflite-dir", "t", "--tfjs-dir", "j"],
    ),
    "evaluate": Stage(
        "components.evaluate.__main__",
        evaluate_export,
        ["--export-dir", "e", "--dataset-dir", "d"],
        flags={"explanations_path": "--explanations-html"},
    ),
    "batch_predict": Stage(
        "components.batch_predict.__main__",
        batch_beam.run,
        ["--model-dir", "m", "--output-dir", "o", "--dataset-dir", "d"],
        leaving_out=BEAM,
    ),
    "batch_predict_vertex": Stage(
        "components.batch_predict.__main__",
        batch_vertex.run_batch_prediction,
        ["--project", "p", "--region", "r", "--gcs-destination-prefix", "gs://b/p"]
        + ["--model", "m", "--dataset-dir", "gs://b/d"],
        parse="parse_vertex_args",
        flags={
            "location": "--region",
            "model_resource_name": "--model",
            "export_uri": "--model-dir",
            "job_display_name": "--display-name",
        },
        leaving_out=("export_metadata", "labels", "job_client", "sleep", "clock"),
    ),
    "stream_predict": Stage(
        "components.stream_predict.__main__",
        stream_beam.run,
        ["--input-subscription", "s", "--output-topic", "t", "--dead-letter-topic", "d"]
        + ["--model-dir", "m"],
        leaving_out=BEAM,
    ),
    "deploy_vertex": Stage(
        "components.deploy.__main__",
        deploy_vertex.deploy_to_vertex,
        ["--export-dir", "e"],
        flags={"enable_explanations": "--explain"},
        only=VERTEX_OPTIONS,
    ),
    "deploy_kserve": Stage(
        "components.deploy.__main__",
        kserve.deploy_kserve,
        ["--export-dir", "e"],
        only=KSERVE_OPTIONS,
    ),
}


def _help(stage: Stage, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        stage.run_parser([*stage.argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", STAGES)
def test_the_help_lists_each_parameter_with_its_description(name, capsys):
    stage = STAGES[name]
    text = _help(stage, capsys)
    unwrapped = "".join(text.split())  # argparse wraps lines, at hyphens too
    descriptions = cli.parameter_help([stage.function])
    for parameter in stage.names():
        assert stage.flag(parameter) in text, f"{name}: no {stage.flag(parameter)}"
        description = "".join(descriptions.get(parameter, "").split())
        assert description and description in unwrapped, f"{name}: {parameter}'s help"


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


@pytest.mark.parametrize("name", STAGES)
def test_no_optional_flag_parses_to_the_functions_defaults(name):
    stage = STAGES[name]
    parsed = stage.run_parser(stage.argv)
    if not stage.only:  # the whole call: every parameter but those that are no flag
        assert set(parsed) == set(stage.names())
    given = {flag for flag in stage.argv if flag.startswith("--")}
    defaults = cli.defaults(stage.function)
    for parameter in stage.names():
        if parameter in defaults and stage.flag(parameter) not in given:
            assert _same(parsed[parameter], defaults[parameter]), (name, parameter)


def test_the_flags_keep_their_names_and_choices():
    train = STAGES["train"]
    parsed = train.run_parser(
        [*train.argv, "--no-augment", "--right-angle-rotation", "--cache", "--flip", "none"]
    )
    assert (parsed["augment"], parsed["right_angle_rotation"], parsed["cache"]) == (
        False,
        True,
        True,
    )
    assert parsed["flip"] == "none"
    with pytest.raises(SystemExit):
        train.run_parser([*train.argv, "--flip", "diagonal"])
    with pytest.raises(SystemExit):  # --model-dir is required
        train.run_parser(["--dataset-dir", "d"])
    tuned = STAGES["tune"].run_parser(
        [*STAGES["tune"].argv, "--fine-tune-layers-choices", "0", "-1", "--no-augment"]
    )
    assert tuned["fine_tune_layers_choices"] == [0, -1] and tuned["augment"] is False
    vertex = STAGES["batch_predict_vertex"]
    parsed = vertex.run_parser([*vertex.argv, "--no-wait", "--display-name", "j"])
    assert parsed["wait"] is False and parsed["job_display_name"] == "j"
    assert parsed["location"] == "r" and parsed["model_resource_name"] == "m"


def test_the_tune_command_line_loads_no_training_code():
    code = """
import json, sys
from components.tune.__main__ import parse_args
parse_args(["--dataset-dir", "d", "--output-dir", "o", "--flip", "none"])
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("components.train", "keras")))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --- common.cli itself -------------------------------------------------------------------


def _example(
    path: str,
    kind: str = "a",
    count: int = 2,
    scale: float = 0.5,
    fast: bool = False,
    sizes: Sequence[int] = (1, 2),
    tags: list = [],  # noqa: B006 (a KFP-style list default)
) -> None:
    """An example.

    Args:
        path: Where it goes.
        kind: "a" or "b".
        count: How many (100% of them).
        scale: How much.
        fast: Whether fast.
        sizes: The sizes.
        tags: Any tags.
    """


def _example_parser(**options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_function_arguments(parser, _example, cli.parameter_names(_example), **options)
    return parser


def test_add_function_arguments_types_and_defaults_each_flag():
    given = ["--path", "p", "--count", "3", "--fast", "--sizes", "4", "5", "--tags", "x"]
    args = vars(_example_parser().parse_args(given))
    assert args == {
        "path": "p",
        "kind": None,  # not given: None, the function's default applies
        "count": 3,
        "scale": None,
        "fast": True,
        "sizes": [4, 5],
        "tags": ["x"],
    }
    filled = vars(_example_parser(fill_defaults=True).parse_args(["--path", "p"]))
    assert filled == {**cli.defaults(_example), "path": "p"}
    with pytest.raises(SystemExit):  # a parameter without a default is required
        _example_parser().parse_args([])


def test_add_function_arguments_takes_choices_and_flag_names(capsys):
    parser = _example_parser(choices={"kind": ("a", "b")}, flags={"path": "--to"})
    assert parser.parse_args(["--to", "p", "--kind", "b"]).path == "p"
    with pytest.raises(SystemExit):
        parser.parse_args(["--to", "p", "--kind", "c"])
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--to PATH Where it goes." in text and "How many (100% of them). (default: 2)" in text
    with pytest.raises(ValueError, match="no parameter"):
        cli.parameter_names(_example, leaving_out=("nothing",))


def test_a_parameter_without_a_command_line_type_is_refused():
    def f(settings: dict) -> None:
        """F."""

    with pytest.raises(TypeError, match="no command-line type"):
        cli.add_function_arguments(argparse.ArgumentParser(), f, ["settings"])


# --- run_local -------------------------------------------------------------------------------


def test_run_locals_flags_are_the_classification_pipelines_parameters():
    parser = run_local.classification_parser()
    inputs = pipeline.image_classification_pipeline.component_spec.inputs
    expected = set(inputs) - {*run_local.SOURCES, "model_repository"}
    parsed = vars(parser.parse_args(["--image-dir", "i"]))
    assert expected <= set(parsed)
    assert all(parsed[name] is None for name in expected)  # not given: the pipeline's
    documented = cli.parameter_help([pipeline.image_classification])
    assert expected <= {name for name, text in documented.items() if text}
    # The flags the command line has always had, with their meaning.
    parsed = parser.parse_args(
        ["--csv", "c", "--labels", "l", "--no-augment", "--flip", "none", "--epochs", "3"]
        + ["--right-angle-rotation", "--no-edge-exports", "--tune-trials", "2"]
        + ["--class-weight", "balanced", "--learning-rate-schedule", "plateau"]
        + ["--accuracy-threshold", "0.5", "--champion-margin", "0.1", "--serving-port", "9"]
    )
    assert (parsed.augment, parsed.right_angle_rotation, parsed.edge_exports) == (
        False,
        True,
        False,
    )
    assert (parsed.flip, parsed.epochs, parsed.tune_trials) == ("none", 3, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--image-dir", "i", "--class-weight", "heavy"])


def test_run_locals_choices_are_trains():
    assert {name: training.CHOICES[name] for name in run_local.CHOICES} == run_local.CHOICES
    assert set(run_local.CHOICES) == set(training.CHOICES)


def test_run_local_passes_the_demo_settings_and_the_flags_given(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(run_local, "run_local", lambda *a, **k: calls.append((a, k)) or {})
    monkeypatch.setattr(run_local, "format_summary", lambda summary: "")
    run_local.main(["--image-dir", "imgs", "--work-dir", str(tmp_path), "--epochs", "3"])
    (work_dir,), params = calls[-1]
    assert work_dir == str(tmp_path) and params["image_dir"].endswith("/imgs")
    assert params == {
        **run_local.DEMO_SETTINGS,
        "epochs": 3,
        "csv_uri": "",
        "labels_uri": "",
        "image_dir": params["image_dir"],
        "runner": "subprocess",
    }
    run_local.main(["--image-dir", "imgs", "--full-size", "--no-augment"])
    _, params = calls[-1]
    assert "backbone" not in params and params["augment"] is False
