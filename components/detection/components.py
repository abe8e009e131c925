"""The detection task's KFP components: thin, lightweight components on the stage images
(the logic is the task's plain Python, callable from a notebook)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("create_tfrecords"), install_kfp_package=False)
def create_detection_tfrecords(
    dataset: Output[Dataset],
    report: Output[Markdown],
    voc_dir: str = "",
    coco_json: str = "",
    image_dir: str = "",
    vertex_jsonl: str = "",
    label_map_uri: str = "",
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
    beam_args: list = [],  # noqa: B006
):
    """Turns box-annotated images (Pascal VOC, COCO JSON or Vertex AI JSON Lines) into the
    TF Object Detection API's TFRecords with an Apache Beam pipeline (DirectRunner or
    Dataflow), split into train/valid/test by the annotation's own split or a stable hash
    of each image's URI. Bad images and annotations are skipped and listed in
    errors.jsonl.

    Args:
        voc_dir: A Pascal VOC folder: Annotations/*.xml, JPEGImages/, optional
            ImageSets/Main split lists. Give exactly one of voc_dir, coco_json,
            vertex_jsonl.
        coco_json: A COCO JSON annotation file.
        image_dir: The folder COCO's file_name values are relative to (default: the JSON
            file's folder).
        vertex_jsonl: Vertex AI image_bounding_box JSON Lines (a glob may name several).
        label_map_uri: The classes (label_map.pbtxt or labels.txt); a box of another
            class rejects its image. Empty: every class the annotations use.
        train_fraction: Share of images in the train split, for images whose annotation
            names no split.
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: TFRecord shards per split; 0 derives each split's count from the
            image bytes it stores and target_shard_mb.
        target_shard_mb: Size a shard should have, in MiB, when num_shards is 0.
        max_image_side: Images with a longer side are scaled down to it (boxes stay
            right) and re-encoded as JPEG; 0 keeps every size.
        max_error_fraction: The step fails when a larger share of the inputs is rejected.
        runner: Beam runner: DirectRunner (in the step's own process) or DataflowRunner.
        direct_num_workers: DirectRunner only: 1 runs in the step's process; 0 starts one
            worker process per core, n > 1 that many.
        project: Google Cloud project of the Dataflow job; empty leaves it unset.
        region: Dataflow region, e.g. us-central1; empty leaves it unset.
        temp_location: gs:// folder for Dataflow's temporary and staging files.
        worker_machine_type: Dataflow worker machine type; empty: Dataflow's default.
        max_num_workers: Most Dataflow workers autoscaling may start; 0: the default.
        sdk_container_image: Image the Dataflow workers run: the create_tfrecords
            stage's dataflow-worker image; other runners ignore it.
        beam_args: Other Beam pipeline arguments; an option also given by a parameter
            above must agree with it.

    Returns:
        dataset: The dataset directory: <split>/<split>-SSSSS-of-NNNNN.tfrecord shards
            (Object Detection API records), label_map.pbtxt, labels.txt,
            coco/<split>.json ground truth, manifests/<split>.csv, errors.jsonl,
            stats.json and report.md. Its metadata holds the counts.
        report: A Markdown summary: objects per split and class, images without
            objects, rejected inputs by reason with examples, conversions, shards.
    """
    from components.common.beam import DataflowSettings
    from components.common.io import artifact_location, write_text
    from components.create_tfrecords.report import render_report
    from components.detection.create_tfrecords import run

    output_dir = artifact_location(dataset)
    stats = run(
        output_dir=output_dir,
        voc_dir=voc_dir,
        coco_json=coco_json,
        image_dir=image_dir,
        vertex_jsonl=vertex_jsonl,
        label_map_uri=label_map_uri,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        num_shards=num_shards,
        target_shard_mb=target_shard_mb,
        max_image_side=max_image_side,
        max_error_fraction=max_error_fraction,
        runner=runner,
        beam_args=[str(arg) for arg in beam_args],
        direct_num_workers=direct_num_workers,
        dataflow=DataflowSettings(
            project=project,
            region=region,
            temp_location=temp_location,
            worker_machine_type=worker_machine_type,
            max_num_workers=max_num_workers,
            sdk_container_image=sdk_container_image,
        ),
    )
    dataset.metadata.update(stats)
    source = voc_dir or coco_json or vertex_jsonl
    write_text(artifact_location(report), render_report(stats, source, output_dir))
    report.metadata.update({"kept": stats["kept"], "rejected": stats["rejected"]})
