"""The stage images, built (``make images``) and run: each holds what its stage imports and no
more, passes ``pip check``, runs as a non-root user (and as any UID), prints its CLI by
default, serves from inside the deploy image; the whole pipeline runs in them under kfp
local's DockerRunner; a stage whose container fails fails the run and is named.

Needs a Docker engine and the images. Without an engine these tests are skipped, unless
REQUIRE_DOCKER=1 (CI sets it): then they fail.
"""

import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from conftest import DETECTION_TINY
from kfp import dsl
from packaging.utils import canonicalize_name
from test_containers import CONTAINERS, LOCK, ROOT, pins

from components.common.io import read_json, read_jsonl
from components.images import BEAM_STAGES, STAGES, dataflow_worker_image, stage_image
from pipelines.build_images import image_builds
from pipelines.run_local import DEMO_SETTINGS, PipelineFailed, run_local, run_pipeline
from pipelines.sample_data import generate

pytestmark = pytest.mark.docker

# The stage package's modules each image must import: all but the KFP component modules
# (imported where the pipeline is compiled) and Vertex batch prediction, which runs on the
# deploy image (as its component says).
ON_DEPLOY_IMAGE = ("components.batch_predict.vertex",)
# The detection task's modules each image runs (components/detection/components.py names
# the image of each detection stage), with KerasHub where its RetinaNet is built or loaded.
DETECTION_MODULES = {
    "create_tfrecords": ("components.detection.create_tfrecords",),
    "train": ("components.detection.training", "keras_hub"),
    "export": ("components.detection.export", "keras_hub"),
    "evaluate": ("components.detection.evaluation",),
}
# Stages without an image of their own, and the image their component names.
GUEST_STAGES = {"batch_predict": ("stream_predict",)}
# What each image must not hold: the heavy packages of the other stages (apache-beam[gcp]
# brings google-cloud-aiplatform, for Beam's Vertex AI model handler).
NOT_IN_IMAGE = {
    "create_tfrecords": ("kserve", "google_cloud_pipeline_components", "tensorboard"),
    "train": ("apache_beam", "kserve", "google.cloud.aiplatform"),
    "export": ("apache_beam", "kserve", "google.cloud.aiplatform", "tensorboard"),
    "evaluate": ("apache_beam", "kserve", "google.cloud.aiplatform", "tensorboard"),
    "deploy": ("apache_beam", "tensorboard"),
    "batch_predict": ("kserve", "google_cloud_pipeline_components", "tensorboard"),
}


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"docker {' '.join(args[:3])}...: {result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def stage_images():
    """The images ``make images`` builds, checked to be present."""
    engine = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    if engine.returncode:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("REQUIRE_DOCKER=1 but no Docker engine answers `docker info`")
        pytest.skip("no Docker engine answers (start one: ../shared/tools/docker-engine)")
    missing = [
        b.image
        for b in image_builds()
        if docker("image", "inspect", b.image, check=False).returncode
    ]
    assert not missing, f"images not built (run `make images`): {missing}"
    return {stage: stage_image(stage) for stage in STAGES}


def python_in(image: str, script: str, *docker_args: str) -> subprocess.CompletedProcess:
    return docker("run", "--rm", *docker_args, image, "python", "-c", textwrap.dedent(script))


# --- each image on its own ---------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_image_holds_what_its_stage_imports_and_no_more(stage, stage_images):
    """Every module of the stage imports in its image; the other stages' heavy packages
    are absent."""
    result = python_in(
        stage_images[stage],
        f"""
        import importlib, importlib.util, json, pkgutil
        modules = []
        for name in {[stage, *GUEST_STAGES.get(stage, ())]!r}:
            package = importlib.import_module("components." + name)
            modules += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        if "{stage}" == "deploy":
            modules += {list(ON_DEPLOY_IMAGE)!r}
        modules += {list(DETECTION_MODULES.get(stage, ()))!r}
        modules = [m for m in modules if not m.endswith(".component") and m not in (
            {list(ON_DEPLOY_IMAGE) if stage != "deploy" else []!r})]
        for module in modules:
            importlib.import_module(module)
        present = [p for p in {list(NOT_IN_IMAGE[stage])!r} if importlib.util.find_spec(p)]
        print(json.dumps({{"imported": modules, "present": present}}))
        """,
        "-e",
        "TF_CPP_MIN_LOG_LEVEL=3",
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name in (stage, *GUEST_STAGES.get(stage, ())):
        assert f"components.{name}.__main__" in report["imported"]
    assert report["present"] == [], f"{stage} image holds what its stage does not use"


@pytest.mark.parametrize("stage", STAGES)
def test_every_installed_version_is_the_pinned_one(stage, stage_images):
    """requirements.lock (and the train image's gpu-constraints.txt) decide every version."""
    pinned = pins(LOCK)
    if stage == "train":
        pinned |= pins(CONTAINERS / "train" / "gpu-constraints.txt")
    if stage in ("deploy", "export", "train"):  # some of these (test_containers.NO_DEPS)
        pinned |= pins(ROOT / "requirements-no-deps.txt")
    listed = docker("run", "--rm", stage_images[stage], "pip", "list", "--format", "json")
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    differ = {n: (v, pinned[n]) for n, v in installed.items() if n in pinned and v != pinned[n]}
    assert not differ, f"installed, pinned: {differ}"
    unpinned = set(installed) - set(pinned) - {"kfp-image-classification", "pip", "wheel"}
    assert not unpinned, f"installed without a pin: {unpinned}"


@pytest.mark.parametrize("build", image_builds(), ids=lambda b: b.image.rsplit("/", 1)[-1])
def test_pip_check_passes(build, stage_images):
    entrypoint = ["--entrypoint", "pip"] if build.target else []
    args = ["run", "--rm", *entrypoint, build.image] + ([] if build.target else ["pip"])
    result = docker(*args, "check", check=False)
    # The `tensorflow` requirement of tensorflow-serving-api, tensorflowjs and tf-keras is
    # met by tensorflow-cpu, under another distribution name, and tensorflowjs and JAX
    # declare packages the converter never imports, as keras-hub declares tensorflow-text
    # for its text tokenizers (requirements-no-deps.txt): the complaints accepted, as
    # containers/install.sh accepts them.
    accepted = (
        r"keras-hub [0-9.]+ requires tensorflow-text, which is not installed\.",
        r"(tensorflow-serving-api|tensorflowjs|tf-keras) [0-9.]+ requires tensorflow, "
        r"which is not installed\.",
        r"tensorflowjs [0-9.]+ requires (flax|importlib[-_]resources|"
        r"tensorflow[-_]decision[-_]forests), which is not installed\.",
        r"tensorflowjs [0-9.]+ has requirement packaging~=23\.1, but you have packaging [0-9.]+\.",
        r"(jax|jaxlib) [0-9.]+ requires scipy, which is not installed\.",
    )
    broken = [
        line
        for line in result.stdout.splitlines()
        if not any(re.fullmatch(pattern, line) for pattern in accepted)
    ]
    assert result.returncode == 0 or not broken, result.stdout + result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_runs_as_non_root_without_an_entry_point_and_prints_its_cli(stage, stage_images):
    config = json.loads(docker("image", "inspect", stage_images[stage]).stdout)[0]["Config"]
    assert not config["Entrypoint"], "an entry point would take KFP's command as arguments"
    assert config["User"] == "1000:1000"
    assert docker("run", "--rm", stage_images[stage], "id", "-u").stdout.strip() == "1000"
    usage = docker("run", "--rm", "-e", "TF_CPP_MIN_LOG_LEVEL=3", stage_images[stage]).stdout
    assert f"usage: python -m components.{stage}" in usage


@pytest.mark.parametrize("stage", STAGES)
def test_any_uid_can_write_home_temp_and_kfp_artifact_folders(stage, stage_images):
    """A runtime may assign any UID (docker run --user, Kubernetes runAsUser)."""
    result = python_in(
        stage_images[stage],
        """
        import os, pathlib, tempfile
        for folder in (os.environ["HOME"], tempfile.gettempdir(), "/gcs", "/minio", "/s3"):
            pathlib.Path(folder, "probe").write_text("x")
        print(os.getuid(), os.environ["HOME"])
        """,
        "--user",
        "4321:4321",
    )
    assert result.stdout.split() == ["4321", "/home/app"]


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_dataflow_worker_image_starts_beams_boot_as_root(stage, stage_images):
    config = json.loads(docker("image", "inspect", dataflow_worker_image(stage)).stdout)[0]
    assert config["Config"]["Entrypoint"] == ["/opt/apache/beam/boot"]
    assert config["Config"]["User"] in ("0:0", "root")
    version = docker(
        "run", "--rm", "--entrypoint", "python", dataflow_worker_image(stage), "-c",
        "import apache_beam; print(apache_beam.__version__)",
    ).stdout.strip()  # fmt: skip
    assert pins(LOCK)["apache-beam"] == version


def test_deploy_image_serves_a_predict_request_from_inside_its_container(
    exported_model, stage_images, tmp_path
):
    """The model server in the deploy image, started as SageMaker starts it (``serve``,
    the export in /opt/ml/model), as its non-root user, answers TF Serving's REST predict
    call, SageMaker's /invocations and TF Serving's gRPC Predict (on the default gRPC port)
    on its loopback, with the same label."""
    from components.deploy.local import probe_jpeg

    model = tmp_path / "model"
    shutil.copytree(exported_model, model)
    subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
    name = f"serve-test-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "-d", "--name", name, "-v", f"{model}:/opt/ml/model:ro", stage_images["deploy"],
        "serve",
    )  # fmt: skip
    jpeg = base64.b64encode(probe_jpeg()).decode()
    client = f"""
        import json, urllib.request
        ready = urllib.request.urlopen("http://127.0.0.1:8080/v2/health/ready", timeout=5)
        body = json.dumps({{"instances": [{{"b64": "{jpeg}"}}]}}).encode()
        request = urllib.request.Request(
            "http://127.0.0.1:8080/v1/models/image-classifier:predict", data=body,
            headers={{"Content-Type": "application/json"}})
        rest = json.loads(urllib.request.urlopen(request, timeout=60).read())
        request = urllib.request.Request(
            "http://127.0.0.1:8080/invocations", data=body,
            headers={{"Content-Type": "application/json"}})
        sagemaker = json.loads(urllib.request.urlopen(request, timeout=60).read())

        import base64, grpc, tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        grpc_request = predict_pb2.PredictRequest()
        grpc_request.model_spec.name = "image-classifier"
        grpc_request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto([base64.b64decode("{jpeg}")]))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel("127.0.0.1:8081"))
        outputs = stub.Predict(grpc_request, timeout=60).outputs
        print(json.dumps({{
            "rest": rest["predictions"], "sagemaker": sagemaker["predictions"],
            "grpc_label": tf.make_ndarray(outputs["label"])[0].decode()}}))
        """
    try:
        deadline = time.monotonic() + 180
        while True:
            answer = docker("exec", name, "python", "-c", textwrap.dedent(client), check=False)
            if answer.returncode == 0 or time.monotonic() > deadline:
                break
            assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true", (
                docker("logs", name, check=False).stderr
            )
            time.sleep(2)
        assert answer.returncode == 0, answer.stderr + docker("logs", name, check=False).stderr
        answers = json.loads(answer.stdout.strip().splitlines()[-1])
        (prediction,) = answers["rest"]
        assert prediction["label"] in ("circle", "square", "triangle", "cross")
        assert answers["sagemaker"] == answers["rest"]
        assert answers["grpc_label"] == prediction["label"]
        assert abs(sum(prediction["probabilities"]) - 1) < 1e-3
        assert docker("exec", name, "id", "-u").stdout.strip() == "1000"
    finally:
        docker("rm", "-f", name, check=False)


def test_stream_predict_runs_in_the_batch_predict_image_against_pubsub(
    exported_model, sample_data, stage_images, tmp_path
):
    """The streaming stage in its image (the batch_predict image), as its non-root user,
    reads images from Pub/Sub (the emulator, on the host's loopback), publishes their
    predictions and dead-letters a message that is not an image."""
    from google.cloud import pubsub_v1

    from components.common.model_handler import LoadedModel
    from components.common.serving import read_export_labels
    from pipelines.pubsub_emulator import PubSubEmulator, subscription_path
    from pipelines.stream_demo import Inbox

    if not shutil.which("gcloud"):
        pytest.skip("the Pub/Sub emulator needs the Google Cloud CLI (gcloud)")
    model = tmp_path / "model"
    shutil.copytree(exported_model, model)
    subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
    images = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[:3]
    name = f"stream-test-{uuid.uuid4().hex[:8]}"
    with PubSubEmulator() as emulator:
        topics = {
            kind: emulator.create_topic(kind, f"{kind}-sub")
            for kind in ("images", "predictions", "dead")
        }
        publisher = pubsub_v1.PublisherClient()
        for i, path in enumerate(images):
            with open(path, "rb") as f:
                publisher.publish(topics["images"], f.read(), id=str(i)).result()
        publisher.publish(topics["images"], b"\xff\xd8 not really a JPEG", id="bad").result()
        out = Inbox(subscription_path(emulator.project, "predictions-sub"))
        dead = Inbox(subscription_path(emulator.project, "dead-sub"))
        docker(
            "run", "-d", "--name", name, "--network", "host", "-v", f"{model}:/model:ro",
            stage_images["batch_predict"], "python", "-m", "components.stream_predict",
            "--pubsub-emulator-host", emulator.host, "--model-dir", "/model",
            "--input-subscription", subscription_path(emulator.project, "images-sub"),
            "--output-topic", topics["predictions"], "--dead-letter-topic", topics["dead"],
            "--max-run-seconds", "240",
        )  # fmt: skip
        try:
            deadline = time.time() + 240
            answered = out.wait_for(len(images), deadline) and dead.wait_for(1, deadline)
            log = docker("logs", name, check=False)
            assert answered, (log.stdout + log.stderr)[-5000:]
            assert docker("exec", name, "id", "-u").stdout.strip() == "1000"
        finally:
            out.close()
            dead.close()
            docker("rm", "-f", name, check=False)
    assert set(out.received) == {str(i) for i in range(len(images))}
    # The same answers as the model here gives.
    here = LoadedModel(exported_model)
    labels = read_export_labels(exported_model)
    for i, path in enumerate(images):
        with open(path, "rb") as f:
            probabilities = here.predict([f.read()])[0]
        body = json.loads(out.received[str(i)][1])
        assert body["label"] == labels[int(probabilities.argmax())], body
        assert abs(body["top_k"][0]["probability"] - probabilities.max()) < 1e-4, body
    assert dead.received["bad"][2]["error_reason"] == "undecodable_image"


# --- kfp local's DockerRunner ---------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_pipeline_run(stage_images, tmp_path_factory):
    """The README's demo in the stage images: 400 generated images, demo-sized training."""
    data = generate(str(tmp_path_factory.mktemp("sample")), per_class=100)
    work = tmp_path_factory.mktemp("docker-run")
    return work, run_local(str(work), image_dir=data.image_dir, runner="docker", **DEMO_SETTINGS)


def test_pipeline_runs_every_stage_in_its_image(docker_pipeline_run):
    work, summary = docker_pipeline_run
    assert summary["runner"] == "docker"
    assert read_json(str(work / "summary.json")) == summary
    assert summary["rejected"] == 0 and sum(summary["splits"].values()) == 400
    assert summary["test_metrics"]["accuracy"] >= 0.8, summary
    assert summary["test_metrics"]["examples"] == summary["splits"]["test"]
    assert summary["deployed"] and summary["batch_predictions"]["rows"] == summary["splits"]["test"]
    rows = list(
        read_jsonl(glob.glob(os.path.join(summary["batch_predictions"]["path"], "*.jsonl")))
    )
    assert len(rows) == summary["splits"]["test"]
    assert {row["label"] for row in rows} <= set(summary["labels"])
    model_dir = summary["serving"]["model_dir"]
    assert model_dir.startswith(str(work / "model_repository"))
    assert os.path.exists(os.path.join(model_dir, "saved_model.pb"))
    assert summary["serving"]["serve_command"].startswith("docker run")
    assert stage_image("deploy") in summary["serving"]["serve_command"]


# The detection pipeline in the stage images, against the same run in this environment.
@pytest.fixture(scope="module")
def detection_runs(stage_images, detection_sample, detection_pipeline_run, tmp_path_factory):
    """The detection pipeline on the same 60 VOC pictures in the stage images (export_edge
    included) and here (conftest's run)."""
    work = tmp_path_factory.mktemp("det-docker")
    docker = run_local(
        str(work),
        task="detection",
        voc_dir=detection_sample.voc_dir,
        runner="docker",
        map50_threshold=0.0,
        **DETECTION_TINY,
    )
    return detection_sample, {"docker": docker, "subprocess": detection_pipeline_run[1]}


def test_detection_pipeline_runs_every_stage_in_its_image(detection_runs):
    sample, runs = detection_runs
    docker, here = runs["docker"], runs["subprocess"]
    assert docker["runner"] == "docker" and docker.keys() == here.keys()
    assert docker["splits"] == here["splits"] and docker["rejected"] == here["rejected"] == 0
    assert sum(docker["splits"].values()) == len(sample.boxes)
    assert docker["test_metrics"].keys() == here["test_metrics"].keys()
    # The same records, seed and TensorFlow version: the same detector, up to kernels.
    assert abs(docker["test_metrics"]["map_50"] - here["test_metrics"]["map_50"]) <= 0.05
    assert docker["deployed"] and docker["serving"]["serve_command"].startswith("docker run")
    assert docker["batch_predictions"]["rows"] == docker["splits"]["test"]
    edge = docker["edge_exports"]  # the export image converts a detector too
    assert set(edge["agreement"]) == {"float32", "float16", "int8", "tfjs"}
    assert edge["examples"] == docker["splits"]["test"]
    for name in ("model_float32.tflite", "model_float16.tflite", "model_int8.tflite"):
        assert os.path.getsize(os.path.join(edge["tflite_dir"], name)) > 0
    assert os.path.exists(os.path.join(edge["tfjs_dir"], "model.json"))
    assert here["edge_exports"] is None  # switched off
    rows = list(read_jsonl(glob.glob(os.path.join(docker["batch_predictions"]["path"], "*.jsonl"))))
    assert len(rows) == docker["splits"]["test"]
    assert all({"uri", "detections", "true_classes"} <= set(row) for row in rows)


def test_docker_summary_has_the_subprocess_summary_keys(docker_pipeline_run, pipeline_run):
    _, in_docker = docker_pipeline_run
    _, in_subprocess = pipeline_run
    assert in_docker.keys() == in_subprocess.keys()
    assert in_docker["serving"].keys() == in_subprocess["serving"].keys()
    assert in_docker["training"].keys() == in_subprocess["training"].keys()


def test_what_containers_wrote_belongs_to_the_user(docker_pipeline_run):
    work, _ = docker_pipeline_run
    paths = [os.path.join(d, f) for d, _, files in os.walk(work) for f in files]
    assert len(paths) > 20
    assert {os.stat(p).st_uid for p in paths} == {os.getuid()}
    for path in paths:
        with open(path, "rb") as f:
            f.read(1)


def test_a_stage_that_fails_in_its_container_fails_the_run_and_is_named(stage_images, tmp_path):
    """create_tfrecords on a folder without class folders: its container fails."""
    empty = tmp_path / "no-classes"
    empty.mkdir()
    result = subprocess.run(
        [
            sys.executable, "-m", "pipelines.run_local", "--runner", "docker",
            "--image-dir", str(empty), "--work-dir", str(tmp_path / "work"),
        ],
        capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("run_local: ") and "'create-tfrecords'" in last_line, result.stderr
    assert not (tmp_path / "work" / "summary.json").exists()


@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def exits_at_once(status: int) -> int:
    """Ends its process at once, before the kfp executor writes any output."""
    import os

    os._exit(status)


@pytest.mark.parametrize("status", [3, 0])
def test_a_container_that_ends_at_once_is_a_failure(status, stage_images, tmp_path):
    """kfp 2.17 alone reports SUCCESS when such a container is removed before its status is
    read; one that exits 0 without its executor output did not finish either."""
    from kfp import local

    from pipelines.local_docker import docker_runner

    @dsl.pipeline(name="ends-at-once")
    def ends_at_once():
        exits_at_once(status=status)

    root = str(tmp_path / "root")
    local.init(runner=docker_runner(), pipeline_root=root)
    with pytest.raises(PipelineFailed, match="Inner task failed: 'exits-at-once'"):
        run_pipeline(ends_at_once, root)


def test_containers_run_as_any_uid_given(stage_images, tmp_path):
    """A non-root UID other than the image's writes the task's outputs."""
    from kfp import local

    from pipelines.local_docker import docker_runner
    from pipelines.vertex_target import worker_replicas

    root = tmp_path / "root"
    root.mkdir(mode=0o777)
    root.chmod(0o1777)
    local.init(runner=docker_runner(user="4321:4321"), pipeline_root=str(root))
    assert worker_replicas(replica_count=3).output == 2
    outputs = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    assert outputs and {os.stat(p).st_uid for p in outputs} == {4321}


def test_a_components_yaml_loaded_from_its_file_runs_in_its_stage_image(stage_images, tmp_path):
    """create_tfrecords as another pipeline takes it: compiled to its own YAML
    (``make components``), loaded from the file and run in the image the file names; the
    records hold every image in the split its URI gives, with its label."""
    import tensorflow as tf
    from kfp import components, local

    from components.classification import schema
    from components.create_tfrecords.splits import assign_split
    from pipelines.compile_components import compile_components
    from pipelines.local_docker import docker_runner, input_folders

    data = generate(str(tmp_path / "sample"), per_class=5)
    compile_components(str(tmp_path / "components"))
    create_tfrecords = components.load_component_from_file(
        str(tmp_path / "components" / "create_tfrecords.yaml")
    )
    executor = create_tfrecords.pipeline_spec.deployment_spec["executors"]
    (image,) = [e["container"]["image"] for e in executor.values()]
    assert image == stage_images["create_tfrecords"]

    local.init(
        runner=docker_runner(read_only=input_folders(image_dir=data.image_dir)),
        pipeline_root=str(tmp_path / "root"),
    )
    dataset = create_tfrecords(image_dir=data.image_dir).outputs["dataset"]

    labels = read_text_lines(os.path.join(dataset.path, "labels.txt"))
    records = {}
    for split in ("train", "valid", "test"):
        files = sorted(glob.glob(os.path.join(dataset.path, split, "*.tfrecord")))
        for serialized in tf.data.TFRecordDataset(files):
            example = tf.train.Example.FromString(serialized.numpy()).features.feature
            text = example[schema.TEXT].bytes_list.value[0].decode()
            assert labels[example[schema.LABEL].int64_list.value[0]] == text
            records[example[schema.FILENAME].bytes_list.value[0].decode()] = (split, text)
    images = sorted(glob.glob(os.path.join(data.image_dir, "*", "*.jpg")))
    assert len(images) == 20 and labels == sorted(
        {os.path.basename(os.path.dirname(p)) for p in images}
    )
    assert records == {
        path: (assign_split(path, 0.8, 0.1), os.path.basename(os.path.dirname(path)))
        for path in images
    }
    counts = {
        s: sum(split == s for split, _ in records.values()) for s in ("train", "valid", "test")
    }
    assert dataset.metadata["splits"] == counts


def read_text_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
