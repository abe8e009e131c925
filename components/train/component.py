"""KFP component of the train stage."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("train"), install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 0.001,
    dropout: float = 0.2,
    early_stopping_patience: int = 3,
    backup_dir: str = "",
    seed: int = 42,
):
    """Trains an image classifier by transfer learning on a keras.applications backbone.

    Reads the train and valid splits of the TFRecord dataset with tf.data, trains a new
    classification head (and, from random initialisation, the whole network) with
    early stopping, best-epoch checkpointing, TensorBoard logs and BackupAndRestore.

    Args:
        dataset: TFRecord dataset written by create_tfrecords.
        backbone: keras.applications backbone, e.g. EfficientNetB0, MobileNetV3Small.
        weights: "imagenet", "none" (random initialisation) or a path / gs:// URI of a
            no-top weights file for the backbone.
        image_size: Side of the square model input, in pixels.
        batch_size: Images per training batch.
        epochs: Maximum number of epochs.
        learning_rate: Adam learning rate.
        dropout: Dropout rate before the classification layer.
        early_stopping_patience: Epochs without validation-loss improvement before
            stopping; 0 disables early stopping.
        backup_dir: Durable directory (e.g. gs://) for BackupAndRestore, so a preempted
            run resumes at its last completed epoch; empty keeps it in the model directory.
        seed: Random seed for initialisation and shuffling.

    Returns:
        model: The model directory: model.keras, labels.txt, training_config.json,
            TensorBoard logs under logs/.
        metrics: Metrics of the kept (best) epoch: accuracy, loss, val_accuracy,
            val_loss, epochs_run, best_epoch.
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
        backup_dir=backup_dir,
        seed=seed,
    )
    for name in ("accuracy", "loss", "val_accuracy", "val_loss", "epochs_run", "best_epoch"):
        metrics.log_metric(name, result[name])
    model.metadata.update(
        {"backbone": backbone, "image_size": image_size, "framework": "tensorflow"}
    )
