"""Compiles each stage's KFP component to its own YAML, for pipelines other than this suite's.

Usage::

    python -m pipelines.compile_components --output-dir build/components \\
        [--registry us-central1-docker.pkg.dev/my-project/kfp --tag <commit sha>]

writes ``<output-dir>/<name>.yaml`` for each component of ``COMPONENTS``: a compiled
component (KFP's IR YAML, what ``kfp.components.load_component_from_file`` and
``load_component_from_url`` load), its inputs and outputs described from the component's
docstring, on its stage image as ``IMAGE_REGISTRY`` and ``IMAGE_TAG`` (or the ``--registry``
and ``--tag`` flags) name it when this runs.
"""

from __future__ import annotations

import argparse
import os

from kfp import compiler
from kfp.dsl.python_component import PythonComponent

from components.batch_predict.component import batch_predict, batch_predict_vertex
from components.create_tfrecords.component import create_tfrecords
from components.deploy.component import (
    deploy,
    deploy_kserve,
    deploy_vertex,
    find_champion,
    find_vertex_champion,
)
from components.detection.components import (
    create_detection_tfrecords,
    evaluate_detector,
    export_detector,
    train_detector,
)
from components.evaluate.component import evaluate
from components.export.component import export
from components.export_edge.component import export_edge
from components.images import on_stage_image
from components.stream_predict.component import stream_predict
from components.train.component import train
from components.tune.component import tune

# Every published component: its file name (the function's name) to the component and
# the stage whose image it runs on (components.images.stage_image).
COMPONENTS: dict[str, tuple[PythonComponent, str]] = {
    "create_tfrecords": (create_tfrecords, "create_tfrecords"),
    "tune": (tune, "train"),
    "train": (train, "train"),
    "export": (export, "export"),
    "export_edge": (export_edge, "export"),
    "evaluate": (evaluate, "evaluate"),
    "find_champion": (find_champion, "deploy"),
    "find_vertex_champion": (find_vertex_champion, "deploy"),
    "deploy": (deploy, "deploy"),
    "deploy_kserve": (deploy_kserve, "deploy"),
    "deploy_vertex": (deploy_vertex, "deploy"),
    "batch_predict": (batch_predict, "batch_predict"),
    "batch_predict_vertex": (batch_predict_vertex, "deploy"),
    "stream_predict": (stream_predict, "batch_predict"),
    "create_detection_tfrecords": (create_detection_tfrecords, "create_tfrecords"),
    "train_detector": (train_detector, "train"),
    "export_detector": (export_detector, "export"),
    "evaluate_detector": (evaluate_detector, "evaluate"),
}
# The component modules' components that are not published, and why.
LEFT_OUT = {
    "vertex_tuning_spec": "one half of the vertex target's tuning: it only feeds GCPC's "
    "HyperparameterTuningJobRunOp inside pipelines/vertex_tuning.py's wiring",
    "best_vertex_trial": "the other half: it only reads the gcp_resources of that job",
}


def compile_components(output_dir: str) -> list[str]:
    """Compiles every component of ``COMPONENTS`` to ``<output_dir>/<name>.yaml`` on its
    stage image as configured now (``IMAGE_REGISTRY``, ``IMAGE_TAG``); returns the paths
    in ``COMPONENTS``' order."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for name, (component, stage) in COMPONENTS.items():
        path = os.path.join(output_dir, f"{name}.yaml")
        compiler.Compiler().compile(on_stage_image(component, stage), package_path=path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.compile_components", description=__doc__.split("\n")[0]
    )
    p.add_argument("--output-dir", required=True, help="folder to write <name>.yaml files to")
    p.add_argument("--registry", help="image registry (overrides IMAGE_REGISTRY)")
    p.add_argument("--tag", help="image tag (overrides IMAGE_TAG)")
    args = p.parse_args(argv)
    if args.registry:
        os.environ["IMAGE_REGISTRY"] = args.registry
    if args.tag:
        os.environ["IMAGE_TAG"] = args.tag
    for path in compile_components(args.output_dir):
        print(path)


if __name__ == "__main__":
    main()
