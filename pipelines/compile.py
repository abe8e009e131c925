"""Compiles the pipeline to YAML for a KFP host or for Vertex AI Pipelines.

Usage::

    python -m pipelines.compile --target kfp --output build/pipeline-kfp.yaml
    python -m pipelines.compile --target vertex --output build/pipeline-vertex.yaml

Stage images follow ``IMAGE_REGISTRY`` and ``IMAGE_TAG`` (see components.images), or
the ``--registry`` and ``--tag`` flags.
"""

from __future__ import annotations

import argparse
import importlib
import os

TARGETS = ("kfp", "vertex")


def compile_pipeline(target: str, output: str) -> str:
    """Compiles the pipeline for ``target`` to ``output`` (YAML) and returns the path."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    from kfp import compiler

    # Imported here so image configuration set by main() applies to the components.
    pipeline = importlib.import_module("pipelines.pipeline")
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    compiler.Compiler().compile(pipeline.image_classification_pipeline, package_path=output)
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.compile", description=__doc__.split("\n")[0]
    )
    p.add_argument("--target", choices=TARGETS, default="kfp")
    p.add_argument("--output", required=True, help="YAML file to write")
    p.add_argument("--registry", help="image registry (overrides IMAGE_REGISTRY)")
    p.add_argument("--tag", help="image tag (overrides IMAGE_TAG)")
    args = p.parse_args(argv)
    if args.registry:
        os.environ["IMAGE_REGISTRY"] = args.registry
    if args.tag:
        os.environ["IMAGE_TAG"] = args.tag
    print(compile_pipeline(args.target, args.output))


if __name__ == "__main__":
    main()
