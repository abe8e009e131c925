"""stream_predict: Pub/Sub in (the emulator on loopback), predictions and dead letters out.

The pipeline runs as a user runs it (``python -m components.stream_predict``, DirectRunner
in streaming mode) or through kfp local; the tests publish real messages and read what
comes back on the topics.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from kfp import dsl

from components.common.beam import DataflowSettings
from components.common.model_handler import LoadedModel
from components.common.serving import read_export_labels
from components.stream_predict import beam_pipeline, messages
from pipelines.pubsub_emulator import PubSubEmulator, subscription_path
from pipelines.stream_demo import Inbox

MODEL = "classifier"


class Outputs(NamedTuple):
    """What the kfp-local test pipeline returns from the stream_predict task."""

    stats: dsl.Metrics
    job_id: str
    gcp_resources: str


WAIT_S = 120


@pytest.fixture(scope="module")
def emulator():
    if not shutil.which("gcloud"):
        pytest.skip("the Pub/Sub emulator needs the Google Cloud CLI (gcloud)")
    with PubSubEmulator() as running:
        yield running


@pytest.fixture
def topics(emulator, request):
    """Fresh topics and subscriptions for one test: images, predictions, dead letters."""
    name = request.node.name.replace("_", "-")[:40]
    paths = {}
    for kind in ("images", "predictions", "dead"):
        paths[kind] = emulator.create_topic(f"{kind}-{name}", subscription=f"{kind}-{name}-sub")
        paths[f"{kind}_sub"] = subscription_path(emulator.project, f"{kind}-{name}-sub")
    return paths


def _publish(topic: str, data: bytes, **attributes: str) -> None:
    from google.cloud import pubsub_v1

    pubsub_v1.PublisherClient().publish(topic, data, **attributes).result()


def _repository(exported_model: str, root, versions=(1,)) -> str:
    for version in versions:
        # Copied beside, then renamed into place: a version appears whole, as publish makes it.
        staging = os.path.join(root, f".staging-{version}")
        shutil.copytree(exported_model, staging)
        os.makedirs(os.path.join(root, MODEL), exist_ok=True)
        os.rename(staging, os.path.join(root, MODEL, str(version)))
    return str(root)


def _start(topics, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "components.stream_predict"]
    command += ["--input-subscription", topics["images_sub"]]
    command += ["--output-topic", topics["predictions"]]
    command += ["--dead-letter-topic", topics["dead"], "--max-run-seconds", "300", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


def _file_lines(folder) -> list[str]:
    """The lines of the prediction files written so far (those still being written excluded)."""
    lines = []
    for path in glob.glob(os.path.join(folder, "predictions-*.jsonl")):
        with open(path) as f:
            lines += f.read().splitlines()
    return lines


def _expected_label(exported_model: str, path: str) -> str:
    model = LoadedModel(exported_model)
    with open(path, "rb") as f:
        probabilities = model.predict([f.read()])[0]
    return read_export_labels(exported_model)[int(np.argmax(probabilities))]


def test_each_message_gets_a_prediction_or_a_dead_letter(
    topics, exported_model, sample_data, tmp_path
):
    images = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[:3]
    repository = _repository(exported_model, tmp_path / "repository")
    files = tmp_path / "files"
    process = _start(
        topics,
        *("--model-repository", repository, "--model-name", MODEL),
        *("--output-dir", str(files), "--file-window-seconds", "2"),
    )
    predictions = Inbox(topics["predictions_sub"])
    dead = Inbox(topics["dead_sub"])
    try:
        with open(images[0], "rb") as f:
            _publish(topics["images"], f.read(), id="bytes", caller="kept")
        _publish(topics["images"], images[1].encode(), id="uri-data")
        _publish(topics["images"], b"", id="uri-attribute", image_uri=images[2])
        _publish(topics["images"], b"\xff\xd8 not really a JPEG", id="bad-bytes")
        _publish(topics["images"], b"", id="empty")
        _publish(topics["images"], str(tmp_path / "missing.jpg").encode(), id="missing")
        deadline = time.time() + WAIT_S
        answered = predictions.wait_for(3, deadline) and dead.wait_for(3, deadline)
        while len(_file_lines(files)) < 3 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # Nothing more arrives: one answer per message.
    finally:
        predictions.close()
        dead.close()
        log = _stop(process)
    assert answered, log[-5000:]
    # The files hold the same predictions as the messages, once each.
    lines = _file_lines(files)
    assert sorted(lines) == sorted(data.decode() for _, data, _ in predictions.received.values())
    names = [name for name in os.listdir(files) if not name.startswith(".")]  # Beam's .temp*
    pattern = r"predictions-\d{8}T\d{6}-\d{8}T\d{6}-\d{4}\.jsonl"
    assert names and all(re.fullmatch(pattern, name) for name in names), names

    assert set(predictions.received) == {"bytes", "uri-data", "uri-attribute"}, log[-3000:]
    for key, image in zip(("bytes", "uri-data", "uri-attribute"), images, strict=True):
        _, data, attributes = predictions.received[key]
        body = json.loads(data)
        assert body["label"] == _expected_label(exported_model, image)
        assert attributes["label"] == body["label"]
        assert body["model_version"] == attributes["model_version"] == "1"
        assert [c["label"] for c in body["top_k"]][0] == body["label"]
        assert body["message_id"] == attributes["source_message_id"]
        assert body.get("uri", "") == ("" if key == "bytes" else image)
    assert predictions.received["bytes"][2]["caller"] == "kept"

    reasons = {key: attributes["error_reason"] for key, (_, _, attributes) in dead.received.items()}
    assert reasons == {
        "bad-bytes": "undecodable_image",
        "empty": "empty_message",
        "missing": "missing_file",
    }
    _, data, attributes = dead.received["bad-bytes"]
    assert data == b"\xff\xd8 not really a JPEG"  # Unchanged, to inspect or republish.
    assert attributes["error_stage"] == "stream_predict" and attributes["error_detail"]


def test_a_version_published_mid_stream_serves_later_messages(
    topics, exported_model, sample_data, tmp_path
):
    image = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[0]
    repository = _repository(exported_model, tmp_path / "repository")
    process = _start(
        topics,
        *("--model-repository", repository, "--model-name", MODEL, "--refresh-seconds", "1"),
    )
    predictions = Inbox(topics["predictions_sub"])
    try:
        _publish(topics["images"], image.encode(), id="before")
        assert predictions.wait_for(1, time.time() + WAIT_S)
        _repository(exported_model, tmp_path / "repository", versions=(2,))
        version = "1"
        deadline = time.time() + 60
        for i in range(60):  # A worker looks again once refresh_seconds have passed.
            _publish(topics["images"], image.encode(), id=f"after-{i}")
            assert predictions.wait_for(i + 2, deadline)
            version = json.loads(predictions.received[f"after-{i}"][1])["model_version"]
            if version == "2":
                break
            time.sleep(0.5)
        later = f"after-{i + 1}"
        _publish(topics["images"], image.encode(), id=later)
        assert predictions.wait_for(i + 3, deadline)
    finally:
        predictions.close()
        log = _stop(process)
    assert json.loads(predictions.received["before"][1])["model_version"] == "1"
    assert version == "2", log[-3000:]
    assert json.loads(predictions.received[later][1])["model_version"] == "2"
    assert "now serving version 2 (was 1)" in log


def test_component_runs_through_kfp_local(topics, emulator, exported_model, sample_data, kfp_local):
    from components.stream_predict.component import stream_predict

    images = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[:2]
    for i, image in enumerate(images):
        _publish(topics["images"], image.encode(), id=f"image-{i}")
    _publish(topics["images"], b"", id="empty")

    from kfp import dsl

    @dsl.pipeline
    def stream_pipeline() -> Outputs:
        model = dsl.importer(artifact_uri=exported_model, artifact_class=dsl.Model)
        task = stream_predict(
            input_subscription=topics["images_sub"],
            output_topic=topics["predictions"],
            dead_letter_topic=topics["dead"],
            model=model.output,
            max_run_seconds=25.0,
            refresh_seconds=0.0,
            pubsub_emulator_host=emulator.host,
        )
        return Outputs(
            stats=task.outputs["stats"],
            job_id=task.outputs["Output"],
            gcp_resources=task.outputs["gcp_resources"],
        )

    outputs = stream_pipeline().outputs
    assert outputs["job_id"] == ""  # No Dataflow job: it ran in the step.
    assert json.loads(outputs["gcp_resources"]) == {"resources": []}
    stats = outputs["stats"].metadata
    assert stats["predicted"] == 2 and stats["dead_letters"] == 1, stats
    assert stats["dead_empty_message"] == 1
    predictions = Inbox(topics["predictions_sub"])
    try:
        assert predictions.wait_for(2, time.time() + 30)
    finally:
        predictions.close()
    assert set(predictions.received) == {"image-0", "image-1"}


@pytest.mark.parametrize(
    ("data", "attributes", "kind", "uri"),
    [
        (b"\xff\xd8\xff\xe0rest", {}, "bytes", ""),
        (b"\x89PNG\r\n", {}, "bytes", ""),
        (b"gs://bucket/a.jpg\n", {}, "uri", "gs://bucket/a.jpg"),
        (b"ignored", {"image_uri": "/data/b.png"}, "uri", "/data/b.png"),
        (b"two\nlines", {}, "bytes", ""),
    ],
)
def test_a_message_names_its_image_by_bytes_or_uri(data, attributes, kind, uri):
    request, parsed_kind = messages.parse_message(data, attributes, "m1")
    assert (parsed_kind, request.uri, request.data) == (kind, uri, data)


def test_a_message_without_an_image_is_refused_with_its_reason():
    with pytest.raises(messages.BadMessage) as e:
        messages.parse_message(b"", {"id": "x"}, "m1")
    assert e.value.reason == messages.EMPTY_MESSAGE and "image_uri" in e.value.detail


def test_a_dead_letter_keeps_the_data_and_fits_pubsub_attribute_limits():
    request = messages.Request("m1", {"id": "x"}, "", b"\x00data")
    data, attributes = messages.dead_letter(request, "undecodable_image", "é" * 2000)
    assert data == b"\x00data" and attributes["id"] == "x"
    assert len(attributes["error_detail"].encode()) <= 1024


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_subscription": "images"}, "projects/<project>/subscriptions/<name>"),
        ({"output_topic": "projects/p/subscriptions/s"}, "projects/<project>/topics/<name>"),
        ({"model_dir": "/m"}, "exactly one model"),
        ({"model_repository": ""}, "exactly one model"),
        ({"model_name": ""}, "model_name is required"),
        ({"model_repository": "", "endpoint": "http://h/v1/models/m"}, "labels_uri"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"file_window_seconds": 0}, "file_window_seconds must be >= 1"),
    ],
)
def test_invalid_arguments_fail_before_anything_starts(changes, message):
    arguments = {
        "input_subscription": "projects/p/subscriptions/images",
        "output_topic": "projects/p/topics/predictions",
        "dead_letter_topic": "projects/p/topics/dead",
        "model_repository": "/repository",
        "model_name": MODEL,
        **changes,
    }
    with pytest.raises(ValueError, match=message.replace("<", ".").replace(">", ".")):
        beam_pipeline.run(**arguments)


def test_a_version_that_cannot_load_yet_is_tried_again(exported_model, tmp_path):
    from components.stream_predict.model_refresh import NewestVersion

    repository = _repository(exported_model, tmp_path)
    newest = NewestVersion(repository, MODEL, refresh_seconds=0.01, namespace="test")
    served = newest.current()
    broken = tmp_path / MODEL / "2"
    broken.mkdir()  # an upload under way: a SavedModel file that is not one yet
    (broken / "saved_model.pb").write_bytes(b"half")
    time.sleep(0.02)
    assert newest.current() is served and newest.version == 1
    shutil.rmtree(broken)
    _repository(exported_model, tmp_path, versions=(2,))  # the upload completes
    time.sleep(0.02)
    assert newest.current() is not served and newest.version == 2


def test_batches_are_served_by_the_old_version_while_a_new_one_loads(tmp_path, monkeypatch):
    """A new version loads (seconds) in the thread that found it; the other threads'
    batches go on with the version serving, and the new one is loaded once."""
    from components.stream_predict import model_refresh

    loading, loaded = threading.Event(), threading.Event()
    loads = []

    def load_version(path):
        version = int(os.path.basename(path))
        loads.append(version)
        if version == 2:
            loading.set()
            assert loaded.wait(WAIT_S)
        return f"model {version}"

    def publish(version):
        (tmp_path / MODEL / str(version)).mkdir(parents=True)
        (tmp_path / MODEL / str(version) / "saved_model.pb").write_bytes(b"")

    monkeypatch.setattr(model_refresh, "load_version", load_version)
    publish(1)
    newest = model_refresh.NewestVersion(str(tmp_path), MODEL, refresh_seconds=0.01, namespace="t")
    publish(2)
    time.sleep(0.02)
    served = []
    refresher = threading.Thread(target=newest.current)
    batch = threading.Thread(target=lambda: served.append(newest.current()))
    refresher.start()
    try:
        assert loading.wait(WAIT_S)
        time.sleep(0.02)  # the check is due again for the other threads
        batch.start()
        batch.join(timeout=5)
        assert served == ["model 1"], "a batch waited for the new version to load"
    finally:
        loaded.set()
        refresher.join()
        if batch.ident is not None:
            batch.join()
    assert newest.current() == "model 2" and newest.version == 2
    assert loads == [1, 2]


@pytest.mark.parametrize(
    "model", [{"model_repository": "REPO"}, {"model_repository": "", "model_dir": "REPO/none"}]
)
def test_a_missing_model_fails_before_anything_starts(model, tmp_path):
    arguments = {
        "input_subscription": "projects/p/subscriptions/images",
        "output_topic": "projects/p/topics/predictions",
        "dead_letter_topic": "projects/p/topics/dead",
        "model_name": MODEL,
        **{name: value.replace("REPO", str(tmp_path)) for name, value in model.items()},
    }
    with pytest.raises(FileNotFoundError, match="no version of model|no SavedModel at"):
        beam_pipeline.run(**arguments)


def test_model_version_is_the_repository_version():
    assert beam_pipeline.model_version("/r/classifier/12") == "12"
    assert beam_pipeline.model_version("gs://b/export/") == "gs://b/export/"


def test_a_message_never_waits_for_a_batch_to_fill():
    from components.stream_predict import model_refresh

    for keyed in (
        model_refresh.keyed_repository_handler("/repository", MODEL, batch_size=8),
        model_refresh.keyed_fixed_handler("/model", batch_size=8),
    ):
        assert keyed.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 8}


def test_a_relaunch_on_dataflow_updates_the_running_job_of_its_name():
    """A pipeline re-run must not start a second job on the same subscription: with a job
    of its name running, the launch carries Dataflow's --update (the new model replaces
    the old in place); with none, a plain launch; off Dataflow no lookup at all."""
    dataflow = DataflowSettings(project="acme", region="europe-west4")
    looked_up = []

    def running(job_id):
        def find(options, job_name):
            cloud = options.view_as(GoogleCloudOptions)
            looked_up.append((cloud.project, cloud.region, job_name))
            return job_id

        return find

    args, replaced = beam_pipeline.launch_args(
        "DataflowRunner", "stream", ["--experiments=x"], dataflow, running("2026-11-26_1")
    )
    assert replaced == "2026-11-26_1"
    assert args == ["--streaming", "--job_name=stream", "--experiments=x", "--update"]
    assert looked_up == [("acme", "europe-west4", "stream")]

    args, replaced = beam_pipeline.launch_args(
        "DataflowRunner", "stream", [], dataflow, running("")
    )
    assert (args, replaced) == (["--streaming", "--job_name=stream"], "")

    looked_up.clear()
    for runner, job_name in (("DirectRunner", "stream"), ("DataflowRunner", "")):
        args, replaced = beam_pipeline.launch_args(runner, job_name, [], dataflow, running("j"))
        assert "--update" not in args and replaced == ""
    assert looked_up == []
    with pytest.raises(ValueError, match="project and the region"):
        beam_pipeline.running_dataflow_job(PipelineOptions(["--project=acme"]), "stream")


def test_a_launched_job_is_reported_where_vertex_links_it():
    # Project and region given as Beam arguments count as much as the named settings.
    options = PipelineOptions(["--project=acme", "--region=europe-west4"])
    assert beam_pipeline.dataflow_resources(options, "2026-11-26_1") == {
        "resources": [
            {
                "resourceType": "DataflowJob",
                "resourceUri": "https://dataflow.googleapis.com/v1b3/projects/acme/locations/"
                "europe-west4/jobs/2026-11-26_1",
            }
        ]
    }


@pytest.fixture
def served_model(exported_model, tmp_path):
    """The local model server on ``exported_model``: yields its TF Serving REST model URL."""
    from components.deploy import local
    from components.deploy.model_repository import publish

    repository = str(tmp_path / "served")
    publish(exported_model, repository, MODEL)
    port = local.free_port()
    log_path = str(tmp_path / "server.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            local.server_command(repository, MODEL, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        local.wait_until_ready(process, MODEL, port, WAIT_S, log_path)
        yield f"http://127.0.0.1:{port}/v1/models/{MODEL}"
    finally:
        local.stop_server(process)


def test_streaming_can_call_a_deployed_model(topics, exported_model, served_model, sample_data):
    images = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[:2]
    labels_uri = os.path.join(exported_model, "assets.extra", "labels.txt")
    process = _start(topics, "--endpoint", served_model, "--labels-uri", labels_uri)
    predictions = Inbox(topics["predictions_sub"])
    dead = Inbox(topics["dead_sub"])
    try:
        for i, image in enumerate(images):
            _publish(topics["images"], image.encode(), id=f"image-{i}")
        _publish(topics["images"], b"\x89PNG but no image", id="bad")
        deadline = time.time() + WAIT_S
        answered = predictions.wait_for(2, deadline) and dead.wait_for(1, deadline)
    finally:
        predictions.close()
        dead.close()
        log = _stop(process)
    assert answered, log[-5000:]
    for i, image in enumerate(images):
        body = json.loads(predictions.received[f"image-{i}"][1])
        assert body["label"] == _expected_label(exported_model, image)
        assert body["model_version"] == served_model
    assert dead.received["bad"][2]["error_reason"] == "undecodable_image"


# --------------------------------------------------------------------------- a detector


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory) -> str:
    """A tiny detector's export (64 px, one epoch: its boxes are arbitrary but well
    formed), with no score threshold, so that every image has its 5 detections."""
    from components.detection import create_tfrecords, export, training
    from pipelines import sample_detection_data

    root = tmp_path_factory.mktemp("stream_detector")
    sample = sample_detection_data.generate(str(root / "sample"), images=16)
    dataset = str(root / "dataset")
    create_tfrecords.run(dataset, voc_dir=sample.voc_dir, runner="FnApiRunner")
    model_dir = str(root / "model")
    training.train(
        dataset, model_dir, image_size=64, batch_size=8, epochs=1, early_stopping_patience=0
    )
    export_dir = str(root / "export")
    export.export_detector(model_dir, export_dir, max_detections=5, score_threshold=0.0)
    return export_dir


def _expected_detections(export_dir: str, path: str) -> list[dict]:
    """The detections batch prediction writes for the image, from the export called here."""
    from components.detection.predictions import image_record

    with open(path, "rb") as f:
        image = f.read()
    outputs = LoadedModel(export_dir).predict([image])[0]
    return image_record(path, outputs, image)["detections"]


def _same_detections(got: list[dict], expected: list[dict]) -> None:
    assert [(d["label"], d["class"]) for d in got] == [(d["label"], d["class"]) for d in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["box"], b["box"], atol=1e-4)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-2)


def _detection_images(tmp_path, count: int = 2) -> list[str]:
    """JPEGs of shapes on a plain background (what the detector saw), written here."""
    from PIL import Image

    paths = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        pixels = np.full((80, 96, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        pixels[10:40, 20:60] = rng.integers(0, 256, 3)
        path = str(tmp_path / f"shapes-{seed}.jpg")
        Image.fromarray(pixels).save(path, format="JPEG")
        paths.append(path)
    return paths


def test_a_detector_from_the_repository_answers_each_image_with_its_detections(
    topics, detector_export, tmp_path
):
    images = _detection_images(tmp_path)
    repository = _repository(detector_export, tmp_path / "repository")
    process = _start(topics, "--model-repository", repository, "--model-name", MODEL)
    predictions = Inbox(topics["predictions_sub"])
    dead = Inbox(topics["dead_sub"])
    try:
        with open(images[0], "rb") as f:
            _publish(topics["images"], f.read(), id="bytes", caller="kept")
        _publish(topics["images"], images[1].encode(), id="uri")
        _publish(topics["images"], b"\xff\xd8 not really a JPEG", id="bad-bytes")
        deadline = time.time() + WAIT_S
        answered = predictions.wait_for(2, deadline) and dead.wait_for(1, deadline)
        time.sleep(1)  # Nothing more arrives: one answer per message.
    finally:
        predictions.close()
        dead.close()
        log = _stop(process)
    assert answered, log[-5000:]
    assert set(predictions.received) == {"bytes", "uri"}, log[-3000:]
    for key, image in zip(("bytes", "uri"), images, strict=True):
        _, data, attributes = predictions.received[key]
        body = json.loads(data)
        assert set(body) == {"message_id", "detections", "model_version"} | (
            {"uri"} if key == "uri" else set()
        )
        expected = _expected_detections(detector_export, image)
        assert len(expected) == 5  # no score threshold: the export's maximum
        _same_detections(body["detections"], expected)
        assert attributes["num_detections"] == "5"
        assert attributes["label"] == body["detections"][0]["label"]
        assert body["model_version"] == attributes["model_version"] == "1"
        assert body["message_id"] == attributes["source_message_id"]
    assert predictions.received["bytes"][2]["caller"] == "kept"
    assert json.loads(predictions.received["uri"][1])["uri"] == images[1]
    assert dead.received["bad-bytes"][2]["error_reason"] == "undecodable_image"


def test_a_detector_behind_an_endpoint_answers_with_its_detections(
    topics, detector_export, tmp_path
):
    from components.deploy import local
    from components.deploy.model_repository import publish

    images = _detection_images(tmp_path, count=1)
    served = str(tmp_path / "served")
    publish(detector_export, served, MODEL)
    port = local.free_port()
    log_path = str(tmp_path / "server.log")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            local.server_command(served, MODEL, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        local.wait_until_ready(server, MODEL, port, WAIT_S, log_path)
        url = f"http://127.0.0.1:{port}/v1/models/{MODEL}"
        labels_uri = os.path.join(detector_export, "assets.extra", "labels.txt")
        process = _start(topics, "--endpoint", url, "--labels-uri", labels_uri)
        predictions = Inbox(topics["predictions_sub"])
        dead = Inbox(topics["dead_sub"])
        try:
            _publish(topics["images"], images[0].encode(), id="image")
            _publish(topics["images"], b"\x89PNG but no image", id="bad")
            deadline = time.time() + WAIT_S
            answered = predictions.wait_for(1, deadline) and dead.wait_for(1, deadline)
        finally:
            predictions.close()
            dead.close()
            log = _stop(process)
    finally:
        local.stop_server(server)
    assert answered, log[-5000:]
    body = json.loads(predictions.received["image"][1])
    _same_detections(body["detections"], _expected_detections(detector_export, images[0]))
    assert body["model_version"] == url
    assert dead.received["bad"][2]["error_reason"] == "undecodable_image"


def test_a_detection_message_names_the_top_detection_and_nothing_when_none():
    request = messages.Request("m1", {"id": "x"}, "gs://b/a.jpg", b"gs://b/a.jpg")
    detection = {
        "label": "cat",
        "class": 1,
        "score": 0.9,
        "box": [0, 0, 1, 1],
        "bbox": [0, 0, 8, 8],
    }
    data, attributes = messages.prediction_message(
        request, {"uri": "gs://b/a.jpg", "detections": [detection]}, "3"
    )
    assert json.loads(data) == {
        "message_id": "m1",
        "uri": "gs://b/a.jpg",
        "detections": [detection],
        "model_version": "3",
    }
    assert attributes == {
        "id": "x",
        "source_message_id": "m1",
        "num_detections": "1",
        "label": "cat",
        "model_version": "3",
    }
    _, attributes = messages.prediction_message(request, {"uri": "", "detections": []}, "3")
    assert attributes["num_detections"] == "0" and "label" not in attributes
