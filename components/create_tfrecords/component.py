"""The create_tfrecords KFP component: a thin, lightweight component on the stage image."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("create_tfrecords"), install_kfp_package=False)
def create_tfrecords(
    dataset: Output[Dataset],
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    num_shards: int = 0,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006
):
    """Turns labelled images into gzip-compressed, sharded TFRecords with an Apache Beam
    pipeline (DirectRunner or Dataflow), split into train/valid/test by a stable hash of
    each image's URI. Bad images are skipped and listed in errors.jsonl.

    Args:
        csv_uri: CSV of uri,label lines (the book's format); needs labels_uri. Give either
            this or image_dir.
        labels_uri: Label file, one label per line; its order gives the class indices.
            Optional with image_dir (default: the sorted subdirectory names).
        image_dir: Root of a <label>/<image> folder tree. Give either this or csv_uri.
        train_fraction: Share of images in the train split.
        valid_fraction: Share of images in the valid split; the rest is the test split.
        num_shards: TFRecord shards per split; 0 lets the Beam runner choose.
        max_image_side: Images with a longer side are scaled down to it and re-encoded as
            JPEG; 0 keeps every size.
        max_error_fraction: The step fails when a larger share of the inputs is rejected
            (missing, empty, corrupt, unknown label, malformed line).
        runner: Beam runner: DirectRunner (in the step's own process) or DataflowRunner.
        beam_args: Extra Beam pipeline arguments, e.g. ["--project=p", "--region=r",
            "--temp_location=gs://bucket/tmp"] for Dataflow.

    Returns:
        dataset: The dataset directory: <split>/<split>-SSSSS-of-NNNNN.tfrecord.gz shards
            for train, valid and test, manifests/<split>.csv, labels.txt, errors.jsonl and
            stats.json. Its metadata holds the counts (labels, splits, classes, kept,
            rejected, rejected_by_reason, image_bytes, reencoded, resized).
    """
    from components.common.io import artifact_location
    from components.create_tfrecords.beam_pipeline import run

    stats = run(
        output_dir=artifact_location(dataset),
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
    )
    dataset.metadata.update(stats)  # The counts show in the KFP and Vertex UIs.
