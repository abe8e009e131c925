"""KFP component of the train stage."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("train"), install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 0.001,
    dropout: float = 0.2,
    early_stopping_patience: int = 3,
    fine_tune_layers: int = 20,
    fine_tune_epochs: int = 5,
    fine_tune_learning_rate: float = 0.00001,
    warmup_epochs: int = 1,
    learning_rate_schedule: str = "cosine",
    class_weight: str = "none",
    augment: bool = True,
    flip: str = "horizontal",
    crop_area_min: float = 0.5,
    crop_area_max: float = 1.0,
    crop_aspect_ratio_max: float = 1.33,
    rotation_degrees: float = 0.0,
    right_angle_rotation: bool = False,
    brightness: float = 0.08,
    contrast: float = 0.15,
    precision: str = "auto",
    jit_compile: str = "auto",
    steps_per_execution: int = 0,
    cache: bool = False,
    initial_model: str = "",
    initial_epoch: int = 0,
    backup_dir: str = "",
    seed: int = 42,
):
    """Trains an image classifier by transfer learning on a keras.applications backbone.

    Reads the train and valid splits of the TFRecord dataset with tf.data. With
    pretrained weights, phase one trains a new head on the frozen backbone and phase two
    fine-tunes the backbone's top layers (BatchNormalization frozen) at a low, warmed-up,
    cosine-decayed learning rate; from random initialisation the whole network trains in
    one phase. Early stopping and best-epoch checkpointing per phase, the best epoch
    overall kept. Runs on one device, several GPUs (MirroredStrategy) or several
    workers (MultiWorkerMirroredStrategy, from TF_CONFIG or Vertex AI's CLUSTER_SPEC);
    mixed precision and XLA on GPUs; resumes after preemption (BackupAndRestore).

    Args:
        dataset: TFRecord dataset written by create_tfrecords.
        backbone: keras.applications backbone, e.g. EfficientNetB0, MobileNetV3Small.
        weights: "imagenet", "none" (random initialisation) or a path / gs:// URI of a
            no-top weights file for the backbone.
        image_size: Side of the square model input, in pixels.
        batch_size: Images per batch on each replica (GPU); a step processes
            batch_size x replicas images (all GPUs of all workers).
        epochs: Epoch phase one ends at (Keras fit semantics: counted from
            initial_epoch, 0 for a new model); fewer with early stopping.
        learning_rate: Adam learning rate of phase one (the only phase from scratch).
        dropout: Dropout rate before the classification layer.
        early_stopping_patience: Epochs without validation-loss improvement before a
            phase stops; 0 disables early stopping. A phase whose rate follows a cosine
            is watched over its second half only (its rate is still high before).
        fine_tune_layers: Top backbone layers phase two unfreezes (pretrained weights
            only); -1 for the whole backbone, 0 for no phase two.
        fine_tune_epochs: Epochs of phase two; 0 for no phase two.
        fine_tune_learning_rate: Peak learning rate of phase two.
        warmup_epochs: Epochs of linear learning-rate warm-up at the start of each phase
            whose rate follows a cosine (phase two always does).
        learning_rate_schedule: Phase one's learning rate: "cosine" (warm-up, then
            cosine decay to 0 by epochs), "constant", or "plateau" (halved when the
            validation loss stops improving).
        class_weight: "none" or "balanced": each class weighs in the loss by the
            inverse of its share of the train split (for unbalanced classes).
        augment: Vary the training images at random; false turns every variation below
            off (evaluation and serving never vary images).
        flip: Random mirroring: "none", "horizontal", "vertical" or "both" (no flip for
            digits and text).
        crop_area_min: Smallest share of an image's area a random crop keeps; 1 (with
            crop_aspect_ratio_max 1) trains on whole images.
        crop_area_max: Largest share of an image's area a random crop keeps.
        crop_aspect_ratio_max: Crops' width/height ratio lies between its inverse and it.
        rotation_degrees: Random rotation within plus or minus this many degrees; 0 for
            none.
        right_angle_rotation: Also rotate by a random multiple of 90 degrees (satellite,
            microscope and texture images, which have no "up").
        brightness: Random brightness shift, up to this share of the pixel range.
        contrast: Random contrast factor within 1 plus or minus this.
        precision: "auto" (mixed_float16 on GPUs with compute capability 7.0 or more,
            else float32), "float32", "mixed_float16" or "mixed_bfloat16". The saved
            model is float32 either way.
        jit_compile: XLA compilation of the train step: "auto" (on GPUs), "true", "false".
        steps_per_execution: Batches per compiled call; 0 is 1 on CPU, 32 on a GPU.
        cache: Keep the decoded train and valid images in memory after the first
            epoch; only for datasets that fit in the machine's memory.
        initial_model: Model directory (gs:// URI or path) of a previous train run to
            continue training from: same backbone, image size and labels. Empty: none.
        initial_epoch: Epoch to continue at; 0 takes the initial model's epoch count.
        backup_dir: Durable directory (e.g. gs://) for the state a preempted run resumes
            from, one run's only; empty keeps it in the model directory.
        seed: Random seed for initialisation and shuffling.

    Returns:
        model: The model directory: model.keras (float32), labels.txt,
            training_config.json (settings and per-epoch history), history.csv,
            curves.html, TensorBoard logs under logs/.
        metrics: Metrics of the kept (best) epoch: accuracy, loss, val_accuracy,
            val_loss; and of the run: epochs_run, phase_one_epochs, phase_two_epochs,
            best_epoch, train_seconds, images_per_second, global_batch_size, replicas;
            train_images_<label>: the images of each class in the train split.
        curves: Loss and accuracy curves (train and validation) per epoch, the
            fine-tuning phase marked, as an HTML page.
    """
    from components.common.io import artifact_location
    from components.train.training import train as train_model

    result = train_model(
        dataset_dir=artifact_location(dataset),
        model_dir=artifact_location(model),
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        dropout=dropout,
        early_stopping_patience=early_stopping_patience,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_epochs=warmup_epochs,
        learning_rate_schedule=learning_rate_schedule,
        class_weight=class_weight,
        augment=augment,
        flip=flip,
        crop_area_min=crop_area_min,
        crop_area_max=crop_area_max,
        crop_aspect_ratio_max=crop_aspect_ratio_max,
        rotation_degrees=rotation_degrees,
        right_angle_rotation=right_angle_rotation,
        brightness=brightness,
        contrast=contrast,
        precision=precision,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        cache=cache,
        initial_model=initial_model,
        initial_epoch=initial_epoch,
        backup_dir=backup_dir,
        curves_path=curves.path,
        seed=seed,
    )
    for name in (
        "accuracy",
        "loss",
        "val_accuracy",
        "val_loss",
        "epochs_run",
        "phase_one_epochs",
        "phase_two_epochs",
        "best_epoch",
        "train_seconds",
        "images_per_second",
        "global_batch_size",
        "replicas",
    ):
        metrics.log_metric(name, result[name])
    for label, count in result["train_images"].items():
        metrics.log_metric(f"train_images_{label}", count)
    model.metadata.update(
        {"backbone": backbone, "image_size": image_size, "framework": "tensorflow"}
    )
