"""The detection task's KFP components: thin, lightweight components on the stage images
(the logic is the task's plain Python, callable from a notebook)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

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
    service_account_email: str = "",
    dataflow_kms_key: str = "",
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
        service_account_email: Service account the Dataflow workers run as; empty: the
            Compute Engine default service account. Other runners ignore it.
        dataflow_kms_key: Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K)
            of the Dataflow job's state and temporary data; empty: Google-managed
            encryption. Other runners ignore it.
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
            service_account_email=service_account_email,
            dataflow_kms_key=dataflow_kms_key,
        ),
    )
    dataset.metadata.update(stats)
    source = voc_dir or coco_json or vertex_jsonl
    write_text(artifact_location(report), render_report(stats, source, output_dir))
    report.metadata.update({"kept": stats["kept"], "rejected": stats["rejected"]})


@dsl.component(base_image=stage_image("train"), install_kfp_package=False)
def train_detector(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    backbone: str = "MobileNetV3Small",
    weights: str = "",
    image_size: int = 192,
    batch_size: int = 16,
    epochs: int = 30,
    learning_rate: float = 0.002,
    early_stopping_patience: int = 8,
    augment_flip: bool = True,
    augment_colour: bool = True,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    upsampling: str = "fpn",
    family: str = "centernet",
    preset: str = "",
    precision: str = "auto",
    backup_dir: str = "",
):
    """Trains an object detector (by default a CenterNet-style heatmap, size and offset
    head on a keras.applications backbone; or KerasHub's RetinaNet) on the Object
    Detection API records of
    create_detection_tfrecords, with box-aware augmentation, the best epoch by
    validation loss kept, early stopping, TensorBoard logs and resumption after
    preemption.

    Args:
        dataset: The dataset of create_detection_tfrecords.
        backbone: keras.applications backbone, e.g. MobileNetV3Small, EfficientNetB0.
        weights: "imagenet", a no-top weights file of the backbone, or empty / "none"
            for random initialisation.
        image_size: Side of the square model input (a multiple of 32).
        batch_size: Images per step.
        epochs: Most epochs; fewer with early stopping.
        learning_rate: Adam's peak learning rate (cosine decay over the epochs).
        early_stopping_patience: Epochs without a lower validation loss before
            stopping; 0 never stops early.
        augment_flip: Random horizontal flips (boxes mirrored).
        augment_colour: Random brightness and contrast.
        scale_min: Smallest side of a random training window as a share of the image's
            (under 1 crops, enlarging objects); 1 with scale_max 1: whole images.
        scale_max: Largest side of the window (over 1 zooms out, shrinking objects).
        upsampling: The head's upsampling: "fpn" (with the backbone's stride-8 and
            stride-16 maps), "bilinear" or "transposed".
        family: "centernet" (anchor-free, trains from random initialisation on CPUs)
            or "retinanet" (KerasHub's RetinaNet, to fine-tune a COCO preset on a GPU).
        preset: The retinanet family's KerasHub preset, e.g.
            "retinanet_resnet50_fpn_coco" (downloaded from Kaggle Models: KAGGLE_USERNAME
            and KAGGLE_KEY in the environment) or a preset folder; empty: a small
            RetinaNet from random initialisation.
        precision: "auto" (mixed float16 on GPUs with Tensor Cores, else float32),
            "float32", "mixed_float16" or "mixed_bfloat16".
        backup_dir: A durable folder to resume from after a preemption; empty: one in
            the model directory.

    Returns:
        model: The model directory: model.keras, labels.txt, training_config.json,
            history.csv, TensorBoard logs under logs/.
        metrics: epochs_run, best_epoch, best_val_loss, train_seconds,
            images_per_second.
    """
    from components.common.io import artifact_location
    from components.detection.training import train

    result = train(
        dataset_dir=artifact_location(dataset),
        model_dir=artifact_location(model),
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        early_stopping_patience=early_stopping_patience,
        augment_flip=augment_flip,
        augment_colour=augment_colour,
        scale_min=scale_min,
        scale_max=scale_max,
        upsampling=upsampling,
        family=family,
        preset=preset,
        precision=precision,
        backup_dir=backup_dir,
    )
    for name in ("epochs_run", "best_epoch", "best_val_loss", "train_seconds", "images_per_second"):
        metrics.log_metric(name, result[name])
    model.metadata.update(
        {
            "task": "detection",
            "family": family,
            "backbone": result["backbone"],
            "image_size": image_size,
            "labels": result["labels"],
            "framework": "tensorflow",
        }
    )


@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def export_detector(
    model: Input[Model],
    exported_model: Output[Model],
    max_detections: int = 100,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
):
    """Exports the trained detector as a SavedModel with the TF Object Detection API's
    contract: decoding, resizing and non-max suppression in the graph (TF Serving runs it
    as is).

    serving_default takes encoded images under the input name `inputs` ({"b64": ...} in
    TF Serving JSON, the 2019 exporter's encoded_image_string_tensor) and returns float32
    detection_boxes [batch, max_detections, 4] (normalized ymin, xmin, ymax, xmax),
    detection_classes (from 1, as label_map.pbtxt), detection_scores, num_detections,
    detection_multiclass_scores, and the label strings detection_labels. The
    image_tensor (uint8 input_tensor) and tf_example signatures are the Object Detection
    API's other two; labels.txt and label_map.pbtxt are in assets.extra/.

    Args:
        model: The model directory of train_detector.
        max_detections: Detections per image in the outputs.
        score_threshold: Detections scoring less are dropped.
        iou_threshold: Two boxes of one class overlapping more are one detection.

    Returns:
        exported_model: The SavedModel directory; its metadata lists the labels, image
            size, signatures and outputs.
    """
    from components.common.io import artifact_location
    from components.detection.export import export_detector as export_saved_model

    exported_model.metadata.update(
        export_saved_model(
            artifact_location(model),
            artifact_location(exported_model),
            max_detections,
            score_threshold,
            iou_threshold,
        )
    )


@dsl.component(base_image=stage_image("evaluate"), install_kfp_package=False)
def evaluate_detector(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    boxes: Output[HTML],
    map50_threshold: float = 0.5,
    champion_dir: str = "",
    champion_margin: float = 0.0,
    split: str = "test",
    page_examples: int = 12,
) -> bool:
    """Evaluates the exported detector on the test split with COCO's metrics
    (pycocotools) against the model serving now; its result gates deployment.

    Runs the serving SavedModel on the split's encoded images (decoding, resizing and
    non-max suppression included) and scores its detections against the split's COCO
    ground truth.

    Args:
        model: The SavedModel of export_detector.
        dataset: The dataset of create_detection_tfrecords.
        map50_threshold: The quality gate: deployment runs only when AP50 reaches it.
        champion_dir: The SavedModel serving now (the champion), scored on the same
            images; empty: none, the threshold alone decides.
        champion_margin: How much lower than the champion's AP50 the new model's may be
            and still be deployed (0: not lower).
        split: Which dataset split to evaluate.
        page_examples: Images drawn with their true and found boxes on the HTML page.

    Returns:
        metrics: map (AP at IoU 0.50:0.95), map_50, map_75, map_small, map_medium,
            map_large, mar_1, mar_10, mar_100, map_<label> per class (-1: nothing to
            measure), images, objects, champion_map_50 and champion_map (when there is
            a champion), and deploy (the gate, 1 or 0).
        boxes: An HTML page of test images with true (green) and found (red) boxes.
        Output: True when AP50 reaches map50_threshold and the champion's less
            champion_margin (the deploy gate).
    """
    from components.common.io import artifact_location
    from components.detection.evaluation import METRIC_NAMES, evaluate_export

    report = evaluate_export(
        artifact_location(model),
        artifact_location(dataset),
        split=split,
        map50_threshold=map50_threshold,
        champion_dir=champion_dir,
        champion_margin=champion_margin,
        boxes_page_path=boxes.path,
        page_examples=page_examples,
    )
    for name in (*METRIC_NAMES, "images", "objects"):
        metrics.log_metric(name, report[name])
    for label, value in report["per_class_map"].items():
        metrics.log_metric(f"map_{label}", value)
    champion = report.get("champion", {})
    for name in ("map_50", "map"):
        if name in champion:
            metrics.log_metric(f"champion_{name}", champion[name])
    metrics.log_metric("deploy", float(report["passed"]))
    metrics.metadata["champion_dir"] = champion_dir
    metrics.metadata["per_class_map"] = report["per_class_map"]
    return report["passed"]
