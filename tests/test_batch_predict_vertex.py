"""Tests of Vertex AI batch prediction (``components.batch_predict.vertex``) and its component.

No network: a fake JobService client takes the SDK's own request types, answers with
``BatchPredictionJob`` resources whose state moves along a script on each poll, and
records every request; a fake clock stands in for waiting. The component runs under
kfp local in a subprocess, where a ``sitecustomize`` on its PYTHONPATH installs the fake
(which records its requests in a JSON file).
"""

import datetime
import json
import os
import re

import pytest
from google.cloud import aiplatform_v1 as v1

from components.batch_predict import vertex

PROJECT = "my-project"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
JOB = f"projects/123456789/locations/{REGION}/batchPredictionJobs/9001"
MODEL = f"projects/123456789/locations/{REGION}/models/1001@2"
EXPORT = "gs://bucket/root/run-1/export/exported_model"
IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
FILE_LIST = "gs://bucket/inputs/images.txt"
OUTPUT_PREFIX = "gs://bucket/predictions"
OUTPUT_DIR = f"{OUTPUT_PREFIX}/prediction-image-classifier-2026_01_01T00_00_00_000Z"
S = v1.JobState
ACCOUNT = "pipelines@my-project.iam.gserviceaccount.com"
KEY = f"projects/{PROJECT}/locations/{REGION}/keyRings/ml/cryptoKeys/vertex"


class FakeJobService:
    """One batch prediction job whose state follows ``states``, one per poll (the last
    one stays); a finished job has ``final`` fields (output directory, counts, error)."""

    def __init__(
        self, states=(S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED), record_to=None, **final
    ):
        self.states = list(states)
        self.final = {
            "output_info": v1.BatchPredictionJob.OutputInfo(gcs_output_directory=OUTPUT_DIR),
            "completion_stats": v1.CompletionStats(successful_count=98, failed_count=2),
            **final,
        }
        self.job = None
        self.requests = []
        self.record_to = record_to

    def _record(self, request):
        self.requests.append(request)
        if self.record_to:
            with open(self.record_to, "a") as f:
                f.write(json.dumps([type(request).__name__, type(request).to_json(request)]) + "\n")

    def create_batch_prediction_job(self, request):
        self._record(request)
        assert request.parent == PARENT
        self.job = v1.BatchPredictionJob(
            request.batch_prediction_job,
            name=JOB,
            state=S.JOB_STATE_PENDING,
            create_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        )
        return v1.BatchPredictionJob(self.job)

    def get_batch_prediction_job(self, request):
        self._record(request)
        assert request.name == JOB
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        self.job.state = state
        if state in vertex.DONE_STATES:
            for field, value in self.final.items():
                setattr(self.job, field, value)
        return v1.BatchPredictionJob(self.job)

    def cancel_batch_prediction_job(self, request):
        self._record(request)
        self.job.state = S.JOB_STATE_CANCELLING


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def install_fakes():
    """Called by the sitecustomize of the component's subprocess."""
    record_to = os.environ["FAKE_JOB_SERVICE_LOG"]
    vertex.job_service_client = lambda region: FakeJobService(
        states=[S.JOB_STATE_SUCCEEDED], record_to=record_to
    )


def _run(jobs, clock=None, **kwargs):
    clock = clock or FakeClock()
    arguments = {
        "project": PROJECT,
        "location": REGION,
        "job_display_name": "predict-test",
        "gcs_source_uris": [FILE_LIST],
        "gcs_destination_prefix": OUTPUT_PREFIX,
        "model_resource_name": MODEL,
        **kwargs,
    }
    return vertex.run_batch_prediction(**arguments, job_client=jobs, sleep=clock.sleep, clock=clock)


# --- run_batch_prediction ------------------------------------------------------------


def test_a_job_over_a_file_list_with_a_registry_model():
    jobs = FakeJobService(states=[S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED])
    clock = FakeClock()

    info = _run(jobs, clock, starting_replica_count=2, max_replica_count=5, labels={"a": "b"})

    assert jobs.requests == [
        v1.CreateBatchPredictionJobRequest(
            parent=PARENT,
            batch_prediction_job=v1.BatchPredictionJob(
                display_name="predict-test",
                model=MODEL,
                input_config=v1.BatchPredictionJob.InputConfig(
                    instances_format="file-list",
                    gcs_source=v1.GcsSource(uris=[FILE_LIST]),
                ),
                output_config=v1.BatchPredictionJob.OutputConfig(
                    predictions_format="jsonl",
                    gcs_destination=v1.GcsDestination(output_uri_prefix=OUTPUT_PREFIX),
                ),
                dedicated_resources=v1.BatchDedicatedResources(
                    machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                    starting_replica_count=2,
                    max_replica_count=5,
                ),
                labels={"a": "b"},
            ),
        ),
        *[v1.GetBatchPredictionJobRequest(name=JOB)] * 3,
    ]
    assert clock.sleeps == [60.0, 60.0]
    assert info == {
        "job": JOB,
        "state": "JOB_STATE_SUCCEEDED",
        "gcs_output_directory": OUTPUT_DIR,
        "successful_count": 98,
        "failed_count": 2,
        "incomplete_count": 0,
        "model": MODEL,
        "artifact_uri": "",
        "serving_image": "",
        "instances_format": "file-list",
        "gcs_source_uris": [FILE_LIST],
        "region": REGION,
    }


def test_a_job_with_the_export_itself_on_a_gpu():
    jobs = FakeJobService(states=[S.JOB_STATE_SUCCEEDED])
    _run(
        jobs,
        model_resource_name="",
        export_uri=EXPORT,
        serving_image=IMAGE.replace("cpu", "gpu"),
        instances_format="jsonl",
        gcs_source_uris=["gs://bucket/instances/*.jsonl"],
        machine_type="n1-standard-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
        batch_size=16,
        service_account="batch@my-project.iam.gserviceaccount.com",
    )
    job = jobs.requests[0].batch_prediction_job
    assert job.model == ""
    assert job.unmanaged_container_model == v1.UnmanagedContainerModel(
        artifact_uri=EXPORT,
        container_spec=v1.ModelContainerSpec(image_uri=IMAGE.replace("cpu", "gpu")),
    )
    assert job.input_config.instances_format == "jsonl"
    assert list(job.input_config.gcs_source.uris) == ["gs://bucket/instances/*.jsonl"]
    assert job.dedicated_resources.machine_spec == v1.MachineSpec(
        machine_type="n1-standard-8",
        accelerator_type=v1.AcceleratorType.NVIDIA_TESLA_T4,
        accelerator_count=1,
    )
    assert job.manual_batch_tuning_parameters.batch_size == 16
    assert job.service_account == "batch@my-project.iam.gserviceaccount.com"


def test_a_job_under_the_projects_rules_runs_as_its_account_encrypted_with_its_key():
    jobs = FakeJobService(states=[S.JOB_STATE_SUCCEEDED])
    _run(jobs, service_account=ACCOUNT, encryption_spec_key_name=f" {KEY} ")

    [request, _] = jobs.requests
    assert request == v1.CreateBatchPredictionJobRequest(
        parent=PARENT,
        batch_prediction_job=v1.BatchPredictionJob(
            display_name="predict-test",
            model=MODEL,
            input_config=v1.BatchPredictionJob.InputConfig(
                instances_format="file-list", gcs_source=v1.GcsSource(uris=[FILE_LIST])
            ),
            output_config=v1.BatchPredictionJob.OutputConfig(
                predictions_format="jsonl",
                gcs_destination=v1.GcsDestination(output_uri_prefix=OUTPUT_PREFIX),
            ),
            dedicated_resources=v1.BatchDedicatedResources(
                machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                starting_replica_count=1,
                max_replica_count=1,
            ),
            service_account=ACCOUNT,
            encryption_spec=v1.EncryptionSpec(kms_key_name=KEY),
        ),
    )


def test_the_component_passes_the_key_to_the_job(monkeypatch, tmp_path):
    """The component's body (``python_func``, in process) hands the key on."""
    from google_cloud_pipeline_components.types.artifact_types import (
        VertexBatchPredictionJob,
        VertexModel,
    )

    from components.batch_predict.component import batch_predict_vertex

    jobs = FakeJobService(states=[S.JOB_STATE_SUCCEEDED])
    monkeypatch.setattr(vertex, "job_service_client", lambda region: jobs)
    batch_predict_vertex.python_func(
        batch_prediction_job=VertexBatchPredictionJob(uri=str(tmp_path / "job"), metadata={}),
        project=PROJECT,
        location=REGION,
        gcs_destination_prefix=OUTPUT_PREFIX,
        vertex_model=VertexModel(uri=str(tmp_path / "m"), metadata={"resourceName": MODEL}),
        gcs_source_uris=[FILE_LIST],
        service_account=ACCOUNT,
        encryption_spec_key_name=KEY,
    )
    job = jobs.requests[0].batch_prediction_job
    assert job.encryption_spec == v1.EncryptionSpec(kms_key_name=KEY)
    assert job.service_account == ACCOUNT


def test_without_waiting_it_returns_once_created():
    jobs = FakeJobService()
    info = _run(jobs, wait=False)
    assert [type(r) for r in jobs.requests] == [v1.CreateBatchPredictionJobRequest]
    assert info["state"] == "JOB_STATE_PENDING" and info["gcs_output_directory"] == ""


def test_a_failed_job_fails_with_its_error():
    jobs = FakeJobService(
        states=[S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED],
        error={"code": 3, "message": "Model server failed to load the model"},
        partial_failures=[{"code": 3, "message": "instance 7: image could not be decoded"}],
    )
    with pytest.raises(vertex.BatchPredictionError) as raised:
        _run(jobs)
    assert str(raised.value) == (
        f"batch prediction job {JOB} ended JOB_STATE_FAILED: Model server failed to load the "
        "model (partial failures: instance 7: image could not be decoded)"
    )


@pytest.mark.parametrize("state", [S.JOB_STATE_CANCELLED, S.JOB_STATE_EXPIRED])
def test_cancelled_and_expired_jobs_fail(state):
    with pytest.raises(vertex.BatchPredictionError, match=state.name):
        _run(FakeJobService(states=[state]))


def test_failed_instances_beyond_max_error_fraction_fail_the_step():
    stats = v1.CompletionStats(successful_count=80, failed_count=20)
    jobs = FakeJobService(states=[S.JOB_STATE_PARTIALLY_SUCCEEDED], completion_stats=stats)
    with pytest.raises(vertex.BatchPredictionError, match=r"20 of 100 instances failed \(20.0%\)"):
        _run(jobs, max_error_fraction=0.1)

    jobs = FakeJobService(states=[S.JOB_STATE_PARTIALLY_SUCCEEDED], completion_stats=stats)
    info = _run(jobs, max_error_fraction=0.25)
    assert info["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED" and info["failed_count"] == 20


def test_a_job_past_its_timeout_is_cancelled():
    jobs = FakeJobService(states=[S.JOB_STATE_RUNNING])
    clock = FakeClock()
    with pytest.raises(TimeoutError, match="still JOB_STATE_RUNNING after 300 s; cancelled it"):
        _run(jobs, clock, timeout_s=300, poll_interval_s=100)
    assert jobs.requests[-1] == v1.CancelBatchPredictionJobRequest(name=JOB)
    assert clock.sleeps == [100, 100, 100]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"gcs_source_uris": ["/data/images.txt"]}, "gs:// only"),
        ({"gcs_destination_prefix": "/tmp/out"}, "gs:// only"),
        ({"gcs_source_uris": []}, "a dataset_dir whose test split"),
        ({"instances_format": "csv"}, "instances_format"),
        ({"export_uri": EXPORT, "serving_image": IMAGE}, "exactly one model"),
        ({"model_resource_name": ""}, "exactly one model"),
        ({"starting_replica_count": 3, "max_replica_count": 2}, "replicas"),
        ({"max_error_fraction": 2}, "max_error_fraction"),
        # A key version, not a key: the job would be refused only once created.
        ({"encryption_spec_key_name": f"{KEY}/cryptoKeyVersions/1"}, "Cloud KMS key"),
    ],
)
def test_invalid_arguments_fail_before_any_request(kwargs, error):
    jobs = FakeJobService()
    with pytest.raises(ValueError, match=error):
        _run(jobs, **kwargs)
    assert jobs.requests == []


# --- file lists ----------------------------------------------------------------------


def test_write_file_list_from_a_manifest(tmp_path):
    manifest = tmp_path / "test.csv"
    manifest.write_text(
        'uri,label\ngs://b/img/1.jpg,cat\n\n"gs://b/img/2, with comma.jpg",dog\ngs://b/3.png\n'
    )
    destination = tmp_path / "out" / "file-list.txt"
    assert vertex.write_file_list(str(manifest), str(destination)) == 3
    assert destination.read_text() == (
        "gs://b/img/1.jpg\ngs://b/img/2, with comma.jpg\ngs://b/3.png\n"
    )


def test_write_file_list_rejects_local_images_and_empty_manifests(tmp_path):
    manifest = tmp_path / "test.csv"
    manifest.write_text("gs://b/1.jpg,cat\n/data/2.jpg,dog\n")
    with pytest.raises(ValueError, match="'/data/2.jpg'.*Cloud Storage only"):
        vertex.write_file_list(str(manifest), str(tmp_path / "list.txt"))
    manifest.write_text("uri,label\n")
    with pytest.raises(ValueError, match="lists no image"):
        vertex.write_file_list(str(manifest), str(tmp_path / "list.txt"))


# --- the component -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:It looks like you're using the remote file")
def test_component_in_kfp_local(kfp_local, tmp_path, monkeypatch):
    from google_cloud_pipeline_components.types.artifact_types import VertexModel
    from kfp import dsl

    from components.batch_predict.component import batch_predict_vertex
    from pipelines.run_local import output_artifact, run_pipeline, task_outputs

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.environ['FAKE_JOB_SERVICE_TESTS'])\n"
        "import test_batch_predict_vertex\n"
        "test_batch_predict_vertex.install_fakes()\n"
    )
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_JOB_SERVICE_LOG", str(log))
    monkeypatch.setenv("FAKE_JOB_SERVICE_TESTS", os.path.dirname(os.path.abspath(__file__)))
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), inherited) if p))

    @dsl.pipeline(name="batch-predict-vertex-test")
    def pipeline():
        model = dsl.importer(
            artifact_uri=f"https://us-central1-aiplatform.googleapis.com/v1/{MODEL}",
            artifact_class=VertexModel,
            metadata={"resourceName": MODEL},
        )
        batch_predict_vertex(
            vertex_model=model.output,
            project=PROJECT,
            location=REGION,
            gcs_destination_prefix=OUTPUT_PREFIX,
            gcs_source_uris=[FILE_LIST],
            max_replica_count=4,
        )

    run = run_pipeline(pipeline, str(kfp_local))

    job = output_artifact(task_outputs(run, "batch-predict-vertex"), "batch_prediction_job")
    assert job["uri"] == f"https://us-central1-aiplatform.googleapis.com/v1/{JOB}"
    metadata = job["metadata"]
    assert metadata["resourceName"] == JOB
    assert metadata["gcsOutputDirectory"] == OUTPUT_DIR
    assert metadata["state"] == "JOB_STATE_SUCCEEDED"
    assert (metadata["successful_count"], metadata["failed_count"]) == (98, 2)
    assert metadata["model"] == MODEL

    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert [kind for kind, _ in requests] == [
        "CreateBatchPredictionJobRequest",
        "GetBatchPredictionJobRequest",
    ]
    created = v1.CreateBatchPredictionJobRequest.from_json(requests[0][1]).batch_prediction_job
    assert created.model == MODEL
    assert created.dedicated_resources.max_replica_count == 4
    assert list(created.input_config.gcs_source.uris) == [FILE_LIST]


def test_component_with_the_export_picks_the_prebuilt_image(monkeypatch, tmp_path):
    """The unmanaged-model branch of the component's body (``python_func``, in process)."""
    from google_cloud_pipeline_components.types.artifact_types import VertexBatchPredictionJob
    from kfp import dsl

    from components.batch_predict.component import batch_predict_vertex

    jobs = FakeJobService(states=[S.JOB_STATE_SUCCEEDED])
    monkeypatch.setattr(vertex, "job_service_client", lambda region: jobs)
    output = VertexBatchPredictionJob(uri=str(tmp_path / "job"), metadata={})

    batch_predict_vertex.python_func(
        batch_prediction_job=output,
        project=PROJECT,
        location=REGION,
        gcs_destination_prefix=OUTPUT_PREFIX,
        model=dsl.Model(uri=EXPORT, metadata={"framework_version": "2.21.0"}),
        gcs_source_uris=[FILE_LIST],
    )

    job = jobs.requests[0].batch_prediction_job
    assert job.unmanaged_container_model.artifact_uri == EXPORT
    assert job.unmanaged_container_model.container_spec.image_uri == IMAGE
    assert output.metadata["serving_image"] == IMAGE
    assert output.metadata["resourceName"] == JOB

    # A dataset's test split becomes a file list under the destination prefix.
    written = []
    monkeypatch.setattr(
        vertex, "write_file_list", lambda manifest, to: written.append((manifest, to)) or 1
    )
    batch_predict_vertex.python_func(
        batch_prediction_job=VertexBatchPredictionJob(uri=str(tmp_path / "j"), metadata={}),
        project=PROJECT,
        location=REGION,
        gcs_destination_prefix=OUTPUT_PREFIX,
        model=dsl.Model(uri=EXPORT, metadata={"framework_version": "2.21.0"}),
        dataset=dsl.Dataset(uri=str(tmp_path / "dataset")),
    )
    [(manifest, file_list)] = written
    assert manifest == str(tmp_path / "dataset" / "manifests" / "test.csv")
    assert re.fullmatch(
        re.escape(OUTPUT_PREFIX.rstrip("/"))
        + r"/inputs/image-classifier-batch-predict-[\d-]+\.txt",
        file_list,
    )
    created = [r for r in jobs.requests if isinstance(r, v1.CreateBatchPredictionJobRequest)]
    assert list(created[-1].batch_prediction_job.input_config.gcs_source.uris) == [file_list]
    with pytest.raises(ValueError, match="exactly one of vertex_model"):
        batch_predict_vertex.python_func(
            batch_prediction_job=output,
            project=PROJECT,
            location=REGION,
            gcs_destination_prefix=OUTPUT_PREFIX,
            gcs_source_uris=[FILE_LIST],
        )


# --- the command line ----------------------------------------------------------------


def test_cli_vertex_target(monkeypatch, capsys):
    from components.batch_predict.__main__ import main

    jobs = FakeJobService(states=[S.JOB_STATE_SUCCEEDED])
    monkeypatch.setattr(vertex, "job_service_client", lambda region: jobs)
    main(
        ["--target", "vertex", "--project", PROJECT, "--region", REGION, "--model", MODEL,
         "--gcs-source-uris", FILE_LIST, "--gcs-destination-prefix", OUTPUT_PREFIX,
         "--max-replica-count", "3"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["job"] == JOB and printed["state"] == "JOB_STATE_SUCCEEDED"
    job = jobs.requests[0].batch_prediction_job
    assert job.model == MODEL and job.dedicated_resources.max_replica_count == 3
    assert "encryption_spec" not in job  # no key: Google-managed encryption

    main(
        ["--target", "vertex", "--project", PROJECT, "--region", REGION, "--model", MODEL,
         "--gcs-source-uris", FILE_LIST, "--gcs-destination-prefix", OUTPUT_PREFIX,
         "--encryption-spec-key-name", KEY, "--service-account", ACCOUNT]
    )  # fmt: skip
    job = [r for r in jobs.requests if isinstance(r, v1.CreateBatchPredictionJobRequest)][-1]
    assert job.batch_prediction_job.encryption_spec.kms_key_name == KEY
    assert job.batch_prediction_job.service_account == ACCOUNT
