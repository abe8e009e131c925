"""Runs the whole pipeline on this machine with ``kfp local`` and writes a summary.

Usage::

    python -m pipelines.run_local --image-dir ROOT --work-dir work
    python -m pipelines.run_local --csv images.csv --labels labels.txt --work-dir work

Each stage runs as a lightweight component in a subprocess (kfp local's
SubprocessRunner) in this Python environment: Beam's DirectRunner, CPU training, a
local model server. ``--runner docker`` runs each stage in its own image instead
(kfp local's DockerRunner, set up by ``pipelines.local_docker``; build the images first
with ``make images``). The defaults are demo-sized (``DEMO_SETTINGS``: a small backbone
from random initialisation, small images, few epochs) so a few hundred images finish
in minutes on two CPU cores; ``--full-size`` switches to the pipeline's own defaults
(EfficientNetB0, 224 px, ImageNet weights). Writes ``<work-dir>/summary.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import urllib.parse
import warnings

from components.common import io

# The demo-sized training settings, in one place.
DEMO_SETTINGS = {
    "backbone": "MobileNetV3Small",
    "weights": "none",
    "image_size": 96,
    "batch_size": 32,
    "epochs": 30,
    "learning_rate": 0.002,
    "early_stopping_patience": 4,
}
# A classification run's input: the command line's own flags, not parameter flags.
SOURCES = ("csv_uri", "labels_uri", "image_dir")
# The values the pipeline's settings that name a choice accept: train's
# (``training.CHOICES``, which tests/test_cli.py holds these to), written here as that
# module loads TensorFlow and this command line does not.
CHOICES = {
    "learning_rate_schedule": ("cosine", "constant", "plateau"),
    "class_weight": ("none", "balanced"),
    "flip": ("none", "horizontal", "vertical", "both"),
    "precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "jit_compile": ("auto", "true", "false"),
}
RUNNERS = ("subprocess", "docker")
TASKS = ("classification", "detection")
# The tasks every run has, in order, and those behind the quality gate.
ALWAYS_RUN = ("create-tfrecords", "train", "export", "evaluate")
BEHIND_GATE = ("deploy", "batch-predict")
# The detection pipeline's own tasks under the same four roles.
DETECTION_TASKS = dict(
    zip(
        ALWAYS_RUN,
        ("create-detection-tfrecords", "train-detector", "export-detector", "evaluate-detector"),
        strict=True,
    )
)
# Where a detection run's input lies (the pipeline's parameters; one of the first three,
# image_dir with coco_json).
DETECTION_SOURCES = ("voc_dir", "coco_json", "vertex_jsonl", "image_dir")
# The detection pipeline's parameters that name local files its stages read.
DETECTION_INPUTS = ("voc_dir", "coco_json", "vertex_jsonl", "label_map_uri", "preset")


class PipelineFailed(RuntimeError):
    """A stage failed, or ended without writing the outputs it must write."""


def run_pipeline(pipeline_func, pipeline_root: str, **arguments) -> str:
    """Runs a pipeline in the initialised kfp local session; returns its run directory.

    kfp local writes each run under ``<pipeline_root>/<pipeline name>-<timestamp>/``,
    one directory per task holding its outputs and ``executor_output.json``.
    """
    os.makedirs(pipeline_root, exist_ok=True)
    before = set(os.listdir(pipeline_root))
    with warnings.catch_warnings():
        # kfp warns that the stage images are not this environment: by design here.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task")
        try:
            pipeline_func(**arguments)
        except RuntimeError as e:
            # kfp local: "Pipeline ... finished with status FAILURE. Inner task failed: 'x'."
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # kfp colours task names
            raise PipelineFailed(f"{message} The failed stage's log is above.") from e
    (run,) = set(os.listdir(pipeline_root)) - before
    return os.path.join(pipeline_root, run)


def task_outputs(run_dir: str, task: str, required: bool = False) -> dict | None:
    """A task's executor output (parameter values and artifacts with their metadata), or
    None if the task did not run (e.g. behind a failed gate).

    Raises:
        PipelineFailed: when ``required`` and the task wrote none. Every kfp component
            writes it last, so a task without it did not finish, whatever status it got.
    """
    path = os.path.join(run_dir, task, "executor_output.json")
    if os.path.exists(path):
        return io.read_json(path)
    if required:
        raise PipelineFailed(
            f"stage {task!r} wrote no executor output ({path}): it did not finish, although "
            "the runner reported success; its log is above"
        )
    return None


def output_artifact(outputs: dict, name: str) -> dict:
    """One output artifact (``name``, ``uri``, ``metadata``) of a task's executor output."""
    return outputs["artifacts"][name]["artifacts"][0]


def summarize(
    run_dir: str, seconds: float, runner: str = "subprocess", task: str = "classification"
) -> dict:
    """Builds the run summary from the executor outputs kfp local wrote in ``run_dir``.

    The keys are the same for both tasks; ``test_metrics`` and ``training`` hold the
    task's own figures (classification: accuracy, loss, examples; detection: COCO's
    ``evaluation.METRIC_NAMES``, ``per_class_map``, images and objects).

    Raises:
        PipelineFailed: when a stage that must have run (all of them when the gate passed)
            wrote no executor output.
    """
    names = DETECTION_TASKS if task == "detection" else {t: t for t in ALWAYS_RUN}
    outputs = {role: task_outputs(run_dir, names[role], required=True) for role in ALWAYS_RUN}
    evaluation = outputs["evaluate"]
    gate_passed = bool(evaluation["parameterValues"]["Output"])
    outputs |= {task: task_outputs(run_dir, task, required=gate_passed) for task in BEHIND_GATE}
    dataset = output_artifact(outputs["create-tfrecords"], "dataset")
    test = output_artifact(evaluation, "metrics")["metadata"]
    train = output_artifact(outputs["train"], "metrics")["metadata"]
    deployed, predicted = outputs["deploy"], outputs["batch-predict"]
    meta = dataset["metadata"]
    summary = {
        "run_dir": run_dir,
        "runner": runner,
        "splits": {split: int(n) for split, n in meta["splits"].items()},
        "rejected": int(meta["rejected"]),
        "rejected_by_reason": {k: int(v) for k, v in meta.get("rejected_by_reason", {}).items()},
        "errors_file": os.path.join(dataset["uri"], "errors.jsonl"),
        "labels": meta["labels"],
        "training": _training_summary(train, task),
        "test_metrics": _test_metrics(test, evaluation, task),
        # The model served before this run, scored on the same images (None: none was).
        "champion_accuracy": test.get("champion_accuracy"),
        "champion_map_50": test.get("champion_map_50"),
        "gate_passed": gate_passed,
        "deployed": deployed is not None,
        "serving": None,
        "batch_predictions": None,
        "edge_exports": _edge_exports(task_outputs(run_dir, "export-edge")),
        "seconds": round(seconds, 1),
    }
    if deployed:
        endpoint = output_artifact(deployed, "endpoint")["metadata"]
        serve_command = endpoint.get("serve_command")
        if runner == "docker":  # the command the container reported names its own Python
            from pipelines.local_docker import serve_command as docker_serve_command

            serve_command = docker_serve_command(
                endpoint["model_repository"],
                endpoint["model_name"],
                urllib.parse.urlparse(endpoint["url"]).port,
            )
        summary["serving"] = {
            "url": endpoint["url"],
            "model_dir": endpoint["model_dir"],
            "model_name": endpoint["model_name"],
            "version": int(endpoint["version"]),
            "serve_command": serve_command,
        }
    if predicted:
        predictions = output_artifact(predicted, "predictions")
        summary["batch_predictions"] = {
            "path": predictions["uri"],
            "rows": int(predictions["metadata"]["rows"]),
            "errors": int(predictions["metadata"]["errors"]),
        }
    return summary


def _training_summary(train: dict, task: str) -> dict:
    """The train task's figures the summary keeps."""
    if task == "detection":
        return {k: train[k] for k in ("best_val_loss", "epochs_run", "best_epoch", "train_seconds")}
    return {k: train[k] for k in ("val_accuracy", "val_loss", "epochs_run", "best_epoch")}


def _test_metrics(test: dict, evaluation: dict, task: str) -> dict:
    """The evaluate task's test-split figures the summary keeps."""
    if task == "detection":
        per_class = output_artifact(evaluation, "metrics")["metadata"]["per_class_map"]
        from components.detection.evaluation import METRIC_NAMES

        return {
            **{k: test[k] for k in METRIC_NAMES},
            "per_class_map": per_class,
            "images": int(test["images"]),
            "objects": int(test["objects"]),
        }
    return {"accuracy": test["accuracy"], "loss": test["loss"], "examples": int(test["examples"])}


def _edge_exports(outputs: dict | None) -> dict | None:
    """Where export_edge wrote the TFLite and TF.js models, and how well each agrees with
    the SavedModel (None: edge exports were off)."""
    if outputs is None:
        return None
    figures = output_artifact(outputs, "agreement")["metadata"]
    return {
        "tflite_dir": output_artifact(outputs, "tflite_model")["uri"],
        "tfjs_dir": output_artifact(outputs, "tfjs_model")["uri"],
        "agreement": {kind: figures[kind] for kind in ("float32", "float16", "int8", "tfjs")},
        "examples": int(figures["examples"]),
        "tfjs_check": figures["tfjs_check"],
    }


def run_local(
    work_dir: str,
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    runner: str = "subprocess",
    task: str = "classification",
    **params,
) -> dict:
    """Runs the pipeline under kfp local and returns (and writes) its summary.

    Args:
        work_dir: Directory for the pipeline root, the model repository and summary.json.
        csv_uri: The book's CSV (``uri,label``); use with ``labels_uri``.
        labels_uri: Label file for ``csv_uri``.
        image_dir: Folder tree ``root/<label>/*.jpg`` (instead of a CSV); for detection,
            the folder COCO JSON's ``file_name`` values are relative to.
        runner: "subprocess" (each stage in a subprocess of this environment) or
            "docker" (each stage in its stage image; see ``pipelines.local_docker``).
        task: "classification" (``pipelines.pipeline``) or "detection"
            (``pipelines.detection_pipeline``: give ``voc_dir``, ``coco_json`` or
            ``vertex_jsonl`` in ``params``).
        **params: Any other parameter of the task's pipeline.

    Raises:
        PipelineFailed: when a stage fails; the message names it.
        pipelines.local_docker.DockerSetupError: (docker) no engine, or images not built.
    """
    from kfp import local

    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if task == "detection":
        from pipelines.detection_pipeline import object_detection_pipeline as pipeline

        if csv_uri or labels_uri:
            raise ValueError("a detection run reads voc_dir, coco_json or vertex_jsonl")
        sources = {"image_dir": image_dir}
    else:
        from pipelines.pipeline import image_classification_pipeline as pipeline

        sources = {"csv_uri": csv_uri, "labels_uri": labels_uri, "image_dir": image_dir}
    work_dir = os.path.abspath(work_dir)
    pipeline_root = os.path.join(work_dir, "pipeline_root")
    params.setdefault("model_repository", os.path.join(work_dir, "model_repository"))
    if runner == "docker":
        from pipelines import local_docker

        local_docker.check_images(local_docker.pipeline_images(pipeline))
        read_only = (
            local_docker.detection_input_folders(
                image_dir=image_dir,
                **{k: params.get(k, "") for k in DETECTION_INPUTS},
            )
            if task == "detection"
            else local_docker.input_folders(csv_uri, labels_uri, image_dir)
        )
        task_runner = local_docker.docker_runner(
            read_only=read_only,
            read_write=[params["model_repository"]],
        )
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=task_runner, pipeline_root=pipeline_root)
    start = time.monotonic()
    run_dir = run_pipeline(pipeline, pipeline_root, **sources, **params)
    summary = summarize(run_dir, time.monotonic() - start, runner, task)
    io.write_json(os.path.join(work_dir, "summary.json"), summary)
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a few lines for a person."""
    s = summary
    gate = "passed" if s["gate_passed"] else "FAILED: not deployed"
    lines = [
        f"Pipeline finished in {s['seconds']:.0f} s ({s['run_dir']})",
        f"  TFRecords:  train {s['splits']['train']}, valid {s['splits']['valid']}, "
        f"test {s['splits']['test']}; rejected {s['rejected']} (see {s['errors_file']})",
    ]
    training, test = s["training"], s["test_metrics"]
    if "map_50" in test:
        lines += [
            f"  Training:   best val_loss {training['best_val_loss']:.3f} after "
            f"{training['epochs_run']:.0f} epochs (best epoch {training['best_epoch']:.0f})",
            f"  Test:       COCO AP50 {test['map_50']:.3f}, AP {test['map']:.3f}, AR@100 "
            f"{test['mar_100']:.3f} on {test['images']} images ({test['objects']} objects); "
            f"gate {gate}",
        ]
    else:
        lines += [
            f"  Training:   val_accuracy {training['val_accuracy']:.3f} after "
            f"{training['epochs_run']:.0f} epochs (best epoch {training['best_epoch']:.0f})",
            f"  Test:       accuracy {test['accuracy']:.3f}, loss {test['loss']:.3f} on "
            f"{test['examples']} images; gate {gate}",
        ]
    if s.get("champion_map_50") is not None:
        lines.append(
            f"  Champion:   the model served before this run has AP50 "
            f"{s['champion_map_50']:.3f} on the same images"
        )
    if s.get("champion_accuracy") is not None:
        lines.append(
            f"  Champion:   the model served before this run scores "
            f"{s['champion_accuracy']:.3f} on the same images"
            + ("" if s["gate_passed"] else " (--champion-margin allows a lower accuracy)")
        )
    if s["serving"]:
        lines += [
            f"  Deployed:   {s['serving']['model_name']} v{s['serving']['version']} at "
            f"{s['serving']['model_dir']}",
            f"              serve it: {s['serving']['serve_command']}",
            f"              then POST {s['serving']['url']}",
        ]
    if s["batch_predictions"]:
        b = s["batch_predictions"]
        lines.append(f"  Batch:      {b['rows']} predictions ({b['errors']} errors) in {b['path']}")
    if s.get("edge_exports"):
        e = s["edge_exports"]
        agree = ", ".join(f"{kind} {value:.3f}" for kind, value in e["agreement"].items())
        what = "detection" if "map_50" in test else "top-1"  # a detector's: class and IoU >= 0.5
        lines += [
            f"  Edge:       {what} agreement with the SavedModel on {e['examples']} test images: "
            f"{agree} (TF.js check: {e['tfjs_check']})",
            f"              TFLite in {e['tflite_dir']}, TF.js in {e['tfjs_dir']}",
        ]
    return "\n".join(lines)


def detection_parser() -> argparse.ArgumentParser:
    """The command line of ``--task detection``: its source, and a flag for each
    parameter of the detection pipeline's local target, typed and documented by the
    pipeline's and its components' own signatures and docstrings (``common.cli``)."""
    from components.common import cli
    from components.detection import components
    from pipelines import detection_pipeline

    p = argparse.ArgumentParser(
        prog="python -m pipelines.run_local --task detection",
        description="Runs the object-detection pipeline on this machine with kfp local.",
    )
    p.add_argument("--task", choices=TASKS, default="detection")
    src = p.add_argument_group("annotations (give one)")
    src.add_argument("--voc-dir", default="", help="Pascal VOC folder (Annotations/, JPEGImages/)")
    src.add_argument("--coco-json", default="", help="COCO JSON file (with --image-dir)")
    src.add_argument("--vertex-jsonl", default="", help="Vertex AI bounding-box JSON Lines")
    src.add_argument("--image-dir", default="", help="the images COCO's file_name values name")
    p.add_argument("--work-dir", default="work", help="where the run's outputs go")
    p.add_argument("--runner", choices=RUNNERS, default="subprocess")
    pipeline_inputs = detection_pipeline.object_detection_pipeline.component_spec.inputs
    settings = p.add_argument_group("pipeline parameters (default: the pipeline's)")
    cli.add_function_arguments(
        settings,
        detection_pipeline.object_detection,
        [name for name in pipeline_inputs if name not in (*DETECTION_SOURCES, "model_repository")],
        documented_by=[
            component.python_func
            for component in (
                components.create_detection_tfrecords,
                components.train_detector,
                components.export_detector,
                components.evaluate_detector,
            )
        ],
    )
    return p


def main_detection(argv: list[str] | None) -> None:
    """``python -m pipelines.run_local --task detection ...``."""
    p = detection_parser()
    args = vars(p.parse_args(argv))
    given = [name for name in ("voc_dir", "coco_json", "vertex_jsonl") if args[name]]
    if len(given) != 1:
        p.error("give one of --voc-dir, --coco-json, --vertex-jsonl")
    if args["image_dir"] and not args["coco_json"]:
        p.error("--image-dir goes with --coco-json")
    work_dir, runner = args.pop("work_dir"), args.pop("runner")
    args.pop("task")
    for name in DETECTION_SOURCES:
        args[name] = os.path.abspath(args[name]) if args[name] else ""
    image_dir = args.pop("image_dir")
    params = {name: value for name, value in args.items() if value is not None}
    try:
        summary = run_local(
            work_dir, image_dir=image_dir, runner=runner, task="detection", **params
        )
    except (PipelineFailed, ValueError) as e:
        sys.exit(f"run_local: {e}")
    print(format_summary(summary))
    print(f"Summary: {os.path.join(os.path.abspath(work_dir), 'summary.json')}")


def classification_parser() -> argparse.ArgumentParser:
    """The command line of a classification run: its source, how it runs, and a flag for
    each parameter of the classification pipeline's local target, typed and documented
    by the pipeline's own signature and docstring (``common.cli``)."""
    from components.common import cli
    from pipelines import pipeline

    p = argparse.ArgumentParser(
        prog="python -m pipelines.run_local", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="detection: box-annotated images (--task detection --help for its flags)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-dir", default="", help="folder tree root/<label>/*.jpg")
    src.add_argument("--csv", default="", help="CSV of uri,label lines (needs --labels)")
    p.add_argument("--labels", default="", help="label file, one label per line")
    p.add_argument("--work-dir", default="work", help="where the run's outputs go")
    p.add_argument(
        "--runner",
        choices=RUNNERS,
        default="subprocess",
        help="subprocess: every stage in this environment; docker: each stage in its image "
        "(make images first)",
    )
    p.add_argument(
        "--full-size",
        action="store_true",
        help="use the pipeline's full-size training defaults (EfficientNetB0, 224 px, ImageNet)",
    )
    demo = ", ".join(f"{name} {value}" for name, value in DEMO_SETTINGS.items())
    settings = p.add_argument_group(
        "pipeline parameters",
        f"Not given: the pipeline's default (shown), except the demo-sized {demo} unless "
        "--full-size.",
    )
    inputs = pipeline.image_classification_pipeline.component_spec.inputs
    cli.add_function_arguments(
        settings,
        pipeline.image_classification,
        [name for name in inputs if name not in (*SOURCES, "model_repository")],
        choices=CHOICES,
    )
    return p


def classification_params(args: dict) -> dict:
    """The pipeline parameters of a classification run from its parsed command line
    (``classification_parser``, less its own flags): the demo-sized settings unless
    ``full_size``, and each parameter flag given."""
    params = {} if args["full_size"] else dict(DEMO_SETTINGS)
    own = {"task", "image_dir", "csv", "labels", "work_dir", "runner", "full_size"}
    params.update({k: v for k, v in args.items() if k not in own and v is not None})
    return params


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.run_local ...``: runs the pipeline, prints its summary."""
    argv = sys.argv[1:] if argv is None else argv
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=TASKS, default="classification")
    if task.parse_known_args(argv)[0].task == "detection":
        main_detection(argv)
        return
    p = classification_parser()
    args = vars(p.parse_args(argv))
    if args["csv"] and not args["labels"]:
        p.error("--csv needs --labels")
    from pipelines.local_docker import DockerSetupError

    try:
        summary = run_local(
            args["work_dir"],
            csv_uri=_absolute(args["csv"]),
            labels_uri=_absolute(args["labels"]),
            image_dir=_absolute(args["image_dir"]),
            runner=args["runner"],
            **classification_params(args),
        )
    except (PipelineFailed, DockerSetupError) as e:
        sys.exit(f"run_local: {e}")
    print(format_summary(summary))
    print(f"Summary: {os.path.join(os.path.abspath(args['work_dir']), 'summary.json')}")


def _absolute(path: str) -> str:
    """``path`` made absolute (the stages run elsewhere); empty stays empty."""
    return os.path.abspath(path) if path else ""


if __name__ == "__main__":
    main()
