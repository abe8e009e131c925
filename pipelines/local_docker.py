"""kfp local's DockerRunner, set up to run each task of a pipeline in its stage image here.

What ``docker_runner`` adds to ``kfp.local.DockerRunner``:

- The host paths tasks use outside the pipeline root (which kfp mounts itself) are
  bind-mounted at the same paths: the input images, CSV and label file read-only, the
  model repository read-write.
- Containers run as the calling user (``docker run --user $(id -u):$(id -g)``), so what
  they write on the host belongs to that user and the host user's folders are writable
  for them; the stage images let any UID run them (containers/install.sh).
- A container's real exit status. kfp 2.17's ``run_docker_container`` removes containers
  automatically and returns 0 when a container is gone before its status is read (it
  catches ``docker.errors.NotFound``), so a stage that failed fast looked successful.
  ``run_container`` reads the status first and removes the container after, and counts
  a container that exits 0 without writing its executor output (every kfp component
  writes it last) as failed.

``check_images`` fails early, with the command that builds them, when an image the
pipeline names is not in the local engine (kfp would try to pull it).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shlex
from collections.abc import Iterable

from google.protobuf import json_format

from components.images import stage_image


class DockerSetupError(RuntimeError):
    """No Docker engine answers, or a stage image is missing."""


def executor_output_file(command: list[str]) -> str | None:
    """The executor output path in a kfp task's command (``--executor_input`` JSON)."""
    if "--executor_input" not in command[:-1]:
        return None
    executor_input = json.loads(command[command.index("--executor_input") + 1])
    return executor_input.get("outputs", {}).get("outputFile")


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Runs a task's container, streams its log and returns its exit status.

    The drop-in for ``kfp.local.docker_task_handler.run_docker_container`` (same
    arguments): the container is removed only after its exit status has been read, and
    one that exits 0 without writing its executor output gets status 1.
    """
    container = client.containers.run(
        image=image, command=command, volumes=volumes, detach=True, **run_args
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode("utf-8", errors="replace"), end="")
        status = int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
    output_file = executor_output_file(command)
    if status == 0 and output_file and not os.path.exists(output_file):
        print(f"The container exited 0 without writing its executor output {output_file}.")
        return 1
    return status


def docker_client():
    """A client of the local Docker engine; DockerSetupError if none answers."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise DockerSetupError(
            f"no Docker engine answers ({e}); start one (on these machines: "
            "../shared/tools/docker-engine) or run with --runner subprocess"
        ) from e
    return client


def pipeline_images(pipeline) -> list[str]:
    """The container images a compiled pipeline's executors name, sorted."""
    spec = json_format.MessageToDict(pipeline.pipeline_spec.deployment_spec)
    return sorted({e["container"]["image"] for e in spec["executors"].values()})


def check_images(images: Iterable[str]) -> None:
    """Raises DockerSetupError naming the images the local engine does not have."""
    import docker

    client = docker_client()
    missing = []
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        raise DockerSetupError(
            f"stage images not built: {', '.join(missing)}; build them with `make images` "
            "(python -m pipelines.build_images), with the same IMAGE_REGISTRY and IMAGE_TAG"
        )


def csv_image_folders(csv_uri: str) -> set[str]:
    """The folders of the local image paths a CSV (or CSV glob) lists, relative paths
    resolved against the CSV's folder as create_tfrecords does. Remote URIs are left out."""
    from components.common.beam import parse_csv_line, resolve_listed_uri

    folders = set()
    for csv_file in glob.glob(csv_uri):
        folders.add(os.path.dirname(os.path.abspath(csv_file)))
        with open(csv_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    fields = parse_csv_line(line)
                except csv.Error:  # create_tfrecords rejects the line itself
                    continue
                if fields and "://" not in fields[0]:
                    folders.add(
                        os.path.dirname(os.path.abspath(resolve_listed_uri(fields[0], csv_file)))
                    )
    return folders


def covering_folders(paths: Iterable[str]) -> list[str]:
    """The fewest folders that hold every path: those not inside another one."""
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def input_folders(csv_uri: str = "", labels_uri: str = "", image_dir: str = "") -> list[str]:
    """The local folders a pipeline run reads its inputs from (none for gs:// inputs)."""
    folders = set()
    if image_dir and "://" not in image_dir:
        folders.add(image_dir)
    if labels_uri and "://" not in labels_uri:
        folders.add(os.path.dirname(os.path.abspath(labels_uri)))
    if csv_uri and "://" not in csv_uri:
        folders |= csv_image_folders(csv_uri)
    return covering_folders(f for f in folders if os.path.isdir(f))


def detection_input_folders(
    voc_dir: str = "",
    coco_json: str = "",
    image_dir: str = "",
    vertex_jsonl: str = "",
    label_map_uri: str = "",
    preset: str = "",
) -> list[str]:
    """The local folders a detection run reads: the VOC folder, COCO JSON's folder and its
    image folder, the Vertex AI JSON Lines' folder and the folders of the local images it
    names, the label map's folder and a KerasHub preset folder. Remote URIs are left out."""
    folders = {f for f in (voc_dir, image_dir, preset) if f and "://" not in f}
    files = [f for f in (coco_json, vertex_jsonl, label_map_uri) if f and "://" not in f]
    folders |= {os.path.dirname(os.path.abspath(f)) for f in files}
    if vertex_jsonl and "://" not in vertex_jsonl and os.path.isfile(vertex_jsonl):
        base = os.path.dirname(os.path.abspath(vertex_jsonl))
        with open(vertex_jsonl, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    uri = json.loads(line).get("imageGcsUri", "")
                except (ValueError, AttributeError):  # create_tfrecords rejects the line
                    continue
                if isinstance(uri, str) and uri and "://" not in uri:
                    folders.add(os.path.dirname(os.path.join(base, uri)))
    return covering_folders(f for f in folders if os.path.isdir(f))


def docker_runner(read_only: Iterable[str] = (), read_write: Iterable[str] = (), user: str = ""):
    """A ``kfp.local.DockerRunner`` whose containers see the given host folders at the
    same paths (read-write ones are created first when missing, so they are the user's).

    Args:
        read_only: Host folders the tasks read.
        read_write: Host folders the tasks write, besides the pipeline root.
        user: ``UID:GID`` the containers run as; empty: this process's.

    Also installs ``run_container`` in kfp's Docker task handler (see the module doc).
    """
    import docker
    from kfp import local
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_container
    mounts = []
    for folder in read_write:
        os.makedirs(folder, exist_ok=True)
        mounts.append(docker.types.Mount(folder, folder, type="bind"))
    for folder in read_only:
        mounts.append(docker.types.Mount(folder, folder, type="bind", read_only=True))
    return local.DockerRunner(user=user or f"{os.getuid()}:{os.getgid()}", mounts=mounts)


def serve_command(repository: str, model_name: str, port: int) -> str:
    """The command that serves a local model repository from the deploy image at
    ``http://127.0.0.1:<port>`` (the server listens on all of the container's interfaces).
    """
    return shlex.join(
        [
            "docker", "run", "--rm", "-p", f"127.0.0.1:{port}:{port}",
            "-v", f"{repository}:{repository}:ro",
            stage_image("deploy"),
            "python", "-m", "components.deploy.server",
            "--model-repository", repository, "--model-name", model_name,
            "--http-port", str(port), "--host", "0.0.0.0",
        ]
    )  # fmt: skip
