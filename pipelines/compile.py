"""Compiles a pipeline to YAML for a KFP host or for Vertex AI Pipelines.

Usage::

    python -m pipelines.compile --target kfp --output build/pipeline-kfp.yaml \\
        [--gpu-type nvidia-l4 --gpu-count 1 --train-cpu 6 --train-memory 24Gi ...]
    python -m pipelines.compile --target vertex --output build/pipeline-vertex.yaml
    python -m pipelines.compile --pipeline detection --target vertex \\
        --output build/detection-pipeline-vertex.yaml

``--pipeline`` picks the task: ``classification`` (``pipelines.pipeline``, the default)
or ``detection`` (``pipelines.detection_pipeline``).

Stage images follow ``IMAGE_REGISTRY`` and ``IMAGE_TAG`` (see components.images), or
the ``--registry`` and ``--tag`` flags; they are read when the pipeline is built, so
one process can compile several targets or registries.

The kfp target's GPU and CPU/memory settings are Kubernetes resource fields, fixed in
the YAML, hence flags here. The vertex target's train machine (machine type,
accelerator type and count), its replica count, project and location are pipeline
parameters, set per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from kfp import compiler

from pipelines import detection_pipeline, pipeline as classification_pipeline
from pipelines.tasks import GkeResources

TARGETS = ("kfp", "vertex")
# Each task's pipeline builder.
PIPELINES = {
    "classification": classification_pipeline.build_pipeline,
    "detection": detection_pipeline.build_pipeline,
}


def default_output(target: str, pipeline: str = "classification") -> str:
    """Where ``make compile`` and ``pipelines.submit`` put a compiled pipeline:
    ``build/pipeline-<target>.yaml`` (classification), ``build/<task>-pipeline-<target>.yaml``
    (another task)."""
    prefix = "" if pipeline == "classification" else f"{pipeline}-"
    return os.path.join("build", f"{prefix}pipeline-{target}.yaml")


def compile_pipeline(
    target: str, output: str, gke: GkeResources | None = None, pipeline: str = "classification"
) -> str:
    """Compiles the ``pipeline`` task's pipeline for ``target`` to ``output`` (YAML) and
    returns the path.

    Stage images are those ``IMAGE_REGISTRY``/``IMAGE_TAG`` name at the time of the call.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {tuple(PIPELINES)}")
    built = PIPELINES[pipeline](target, gke=gke or GkeResources())
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    compiler.Compiler().compile(built, package_path=output)
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.compile", description=__doc__.split("\n")[0]
    )
    p.add_argument("--pipeline", choices=tuple(PIPELINES), default="classification")
    p.add_argument("--target", choices=TARGETS, default="kfp")
    p.add_argument("--output", required=True, help="YAML file to write")
    p.add_argument("--registry", help="image registry (overrides IMAGE_REGISTRY)")
    p.add_argument("--tag", help="image tag (overrides IMAGE_TAG)")
    defaults = GkeResources()
    gke = p.add_argument_group("kfp target (Kubernetes resources, fixed in the YAML)")
    gke.add_argument(
        "--gpu-type",
        default=defaults.gpu_type,
        help="GKE accelerator node label of train's node pool, e.g. nvidia-l4, "
        "nvidia-tesla-t4 (default: %(default)s)",
    )
    gke.add_argument(
        "--gpu-count",
        type=int,
        default=defaults.gpu_count,
        help="GPUs for train; 0 trains on CPU (default: %(default)s)",
    )
    for flag, what in (
        ("train-cpu", "train's CPU"),
        ("train-memory", "train's memory"),
        ("beam-cpu", "CPU of create_tfrecords and batch_predict"),
        ("beam-memory", "memory of create_tfrecords and batch_predict"),
    ):
        gke.add_argument(
            f"--{flag}",
            default=getattr(defaults, flag.replace("-", "_")),
            help=f"{what}: request and limit (default: %(default)s)",
        )
    args = p.parse_args(argv)
    if args.registry:
        os.environ["IMAGE_REGISTRY"] = args.registry
    if args.tag:
        os.environ["IMAGE_TAG"] = args.tag
    resources = GkeResources(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(GkeResources)}
    )
    print(compile_pipeline(args.target, args.output, resources, args.pipeline))


if __name__ == "__main__":
    main()
