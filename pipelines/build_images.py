"""Builds the stage images, and the Beam stages' Dataflow worker images, with Docker.

Usage::

    python -m pipelines.build_images                          # all of them (make images)
    python -m pipelines.build_images --stage export --stage evaluate
    IMAGE_REGISTRY=europe-docker.pkg.dev/p/kfp IMAGE_TAG=abc123 python -m pipelines.build_images

The names come from ``components.images`` (``IMAGE_REGISTRY``, ``IMAGE_TAG``), so the
images built are the ones a compiled pipeline and kfp local's DockerRunner run. Each is
``docker build -f containers/<stage>/Dockerfile`` with the repository as context; the
Beam stages' ``dataflow-worker`` target is tagged ``<registry>/<stage>-dataflow:<tag>``.
Prints each image's build time and size; ``--report FILE`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

from components.images import BEAM_STAGES, STAGES, dataflow_worker_image, stage_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Builds reach PyPI through the host's network: the engines these images are built on may
# have no bridge network (../shared/tools/docker-engine), and host works on every engine.
DEFAULT_DOCKER_ARGS = "--network host"


class BuildError(RuntimeError):
    """Docker is missing or an image did not build."""


@dataclasses.dataclass(frozen=True)
class ImageBuild:
    """One image: a stage's Dockerfile, the target built (None: the last, default one)."""

    stage: str
    image: str
    target: str | None = None

    @property
    def dockerfile(self) -> str:
        return os.path.join("containers", self.stage, "Dockerfile")

    def command(self, docker_args: list[str]) -> list[str]:
        target = ["--target", self.target] if self.target else []
        return [
            "docker",
            "build",
            *docker_args,
            "-f",
            self.dockerfile,
            *target,
            "-t",
            self.image,
            ".",
        ]


def image_builds(stages: tuple[str, ...] | list[str] = STAGES) -> list[ImageBuild]:
    """The images of ``stages``: each stage's image, then a Beam stage's Dataflow worker."""
    builds = []
    for stage in stages:
        builds.append(ImageBuild(stage, stage_image(stage)))
        if stage in BEAM_STAGES:
            builds.append(ImageBuild(stage, dataflow_worker_image(stage), "dataflow-worker"))
    return builds


def image_size(image: str) -> int:
    """The image's size in bytes, as ``docker images`` shows it."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip())


def check_engine() -> None:
    """Raises BuildError unless a Docker engine answers."""
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=60)
    except FileNotFoundError as e:
        raise BuildError("the docker command is not installed") from e
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise BuildError(
            "no Docker engine answers `docker info`: start one (on these machines: "
            "../shared/tools/docker-engine)"
        ) from e


def build(image: ImageBuild, docker_args: list[str]) -> dict:
    """Builds one image, its output streamed; returns its name, seconds and size in MB."""
    target = f", target {image.target}" if image.target else ""
    print(f"--- {image.image} ({image.dockerfile}{target})")
    sys.stdout.flush()
    start = time.monotonic()
    returncode = subprocess.run(image.command(docker_args), cwd=ROOT).returncode
    seconds = time.monotonic() - start
    if returncode:
        raise BuildError(f"{image.image} did not build (docker build exit {returncode}); see above")
    return {
        "image": image.image,
        "stage": image.stage,
        "target": image.target or "default",
        "seconds": round(seconds, 1),
        "size_mb": round(image_size(image.image) / 1e6),
    }


def build_images(stages=STAGES, docker_args: list[str] | None = None) -> list[dict]:
    """Builds the images of ``stages`` in turn (later ones reuse the layers they share)."""
    check_engine()
    args = shlex.split(DEFAULT_DOCKER_ARGS) if docker_args is None else docker_args
    return [build(image, args) for image in image_builds(stages)]


def format_report(results: list[dict]) -> str:
    width = max(len(r["image"]) for r in results)
    lines = [f"{'image':<{width}}  {'build s':>8}  {'size MB':>8}"]
    lines += [f"{r['image']:<{width}}  {r['seconds']:>8.1f}  {r['size_mb']:>8}" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_images", description=__doc__.split("\n")[0]
    )
    p.add_argument("--stage", action="append", choices=STAGES, help="only this stage (repeatable)")
    p.add_argument(
        "--docker-args",
        default=DEFAULT_DOCKER_ARGS,
        help=f"extra `docker build` arguments (default: {DEFAULT_DOCKER_ARGS!r})",
    )
    p.add_argument("--report", help="also write the build times and sizes to this JSON file")
    args = p.parse_args(argv)
    try:
        results = build_images(args.stage or STAGES, shlex.split(args.docker_args))
    except BuildError as e:
        sys.exit(f"build_images: {e}")
    print(format_report(results))
    if args.report:
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
