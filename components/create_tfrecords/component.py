"""The create_tfrecords KFP component: a thin, lightweight component on the stage image."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("create_tfrecords"), install_kfp_package=False)
def create_tfrecords(
    dataset: Output[Dataset],
    report: Output[Markdown],
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    target_shard_mb: float = 150.0,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    runner: str = "DirectRunner",
    direct_num_workers: int = 1,
    project: str = "",
    region: str = "",
    temp_location: str = "",
    worker_machine_type: str = "",
    max_num_workers: int = 0,
    sdk_container_image: str = "",
    service_account_email: str = "",
    dataflow_kms_key: str = "",
    beam_args: list = [],  # noqa: B006
):
    """Turns labelled images into sharded TFRecords with an Apache Beam
    pipeline (DirectRunner or Dataflow), split into train/valid/test by a stable hash of
    each image's URI. Bad images are skipped and listed in errors.jsonl; byte-identical
    copies of an image are kept once.

    Args:
        csv_uri: CSV of uri,label lines (the book's format); needs labels_uri. Give either
            this or image_dir.
        labels_uri: Label file, one label per line; its order gives the class indices.
            Optional with image_dir (default: the sorted subdirectory names).
        image_dir: Root of a <label>/<image> folder tree. Give either this or csv_uri.
        train_fraction: Share of images in the train split.
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: TFRecord shards per split; 0 derives each split's count from the
            image bytes it stores and target_shard_mb (the count follows the data).
        target_shard_mb: Size a shard should have, in MiB, when num_shards is 0.
        max_image_side: Images with a longer side are scaled down to it and re-encoded as
            JPEG; 0 keeps every size.
        max_error_fraction: The step fails when a larger share of the inputs is rejected
            (missing, empty, corrupt, unknown or conflicting label, malformed line).
        runner: Beam runner: DirectRunner (in the step's own process) or DataflowRunner.
        direct_num_workers: DirectRunner only: 1 runs in the step's process; 0 starts one
            worker process per core (Beam's multi-process mode), n > 1 that many.
        project: Google Cloud project of the Dataflow job; empty leaves it unset.
        region: Dataflow region, e.g. us-central1; empty leaves it unset.
        temp_location: gs:// folder for Dataflow's temporary and staging files.
        worker_machine_type: Dataflow worker machine type, e.g. n2-standard-4; empty:
            Dataflow's default.
        max_num_workers: Most Dataflow workers autoscaling may start; 0: Dataflow's
            default.
        sdk_container_image: Image the Dataflow workers run: this stage's dataflow-worker
            image (containers/create_tfrecords/Dockerfile); other runners ignore it.
        service_account_email: Service account the Dataflow workers run as; empty: the
            Compute Engine default service account. Other runners ignore it.
        dataflow_kms_key: Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K)
            of the Dataflow job's state and temporary data; empty: Google-managed
            encryption. Other runners ignore it.
        beam_args: Other Beam pipeline arguments, e.g. ["--job_name=j"]; an option also
            given by a parameter above must agree with it.

    Returns:
        dataset: The dataset directory: <split>/<split>-SSSSS-of-NNNNN.tfrecord shards
            for train, valid and test, manifests/<split>.csv, labels.txt, errors.jsonl,
            stats.json and report.md. Its metadata holds the counts (splits, classes,
            kept, rejected by reason, skipped inputs, conversions, image sizes, shards
            and bytes per split).
        report: A Markdown summary of the run: images per split and class, rejected
            inputs by reason with examples, conversions, the stored image size
            distribution, and shards and bytes per split.
    """
    from components.common.beam import DataflowSettings
    from components.common.io import artifact_location, write_text
    from components.create_tfrecords.beam_pipeline import run
    from components.create_tfrecords.report import render_report

    output_dir = artifact_location(dataset)
    stats = run(
        output_dir=output_dir,
        csv_uri=csv_uri,
        labels_uri=labels_uri,
        image_dir=image_dir,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        num_shards=num_shards,
        max_image_side=max_image_side,
        max_error_fraction=max_error_fraction,
        runner=runner,
        beam_args=[str(arg) for arg in beam_args],
        direct_num_workers=direct_num_workers,
        target_shard_mb=target_shard_mb,
        dataflow=DataflowSettings(
            project=project,
            region=region,
            temp_location=temp_location,
            worker_machine_type=worker_machine_type,
            max_num_workers=max_num_workers,
            sdk_container_image=sdk_container_image,
            service_account_email=service_account_email,
            dataflow_kms_key=dataflow_kms_key,
        ),
    )
    dataset.metadata.update(stats)  # The counts show in the KFP and Vertex UIs.
    write_text(artifact_location(report), render_report(stats, csv_uri or image_dir, output_dir))
    report.metadata.update({"kept": stats["kept"], "rejected": stats["rejected"]})
