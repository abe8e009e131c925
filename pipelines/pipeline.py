"""The image-classification pipeline: JPEGs to a served model and batch predictions.

    create_tfrecords -> train -> export -> evaluate --(gate)--> deploy
                                                     \\-------> batch_predict

Deploy and batch prediction run only when the evaluated accuracy reaches
``accuracy_threshold``. The defaults are full-size settings (EfficientNetB0 at 224 px
from ImageNet weights); ``pipelines.run_local`` passes demo-sized ones.
"""

from kfp import dsl

from components.batch_predict.component import batch_predict
from components.create_tfrecords.component import create_tfrecords
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.export.component import export
from components.train.component import train

PIPELINE_NAME = "image-classification"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Labelled JPEGs to TFRecords, a transfer-learned classifier, a serving "
    "SavedModel, a test-split evaluation, and (if it passes) a deployment and batch predictions.",
)
def image_classification_pipeline(
    csv_uri: str = "",
    labels_uri: str = "",
    image_dir: str = "",
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    max_image_side: int = 1024,
    max_error_fraction: float = 0.1,
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 0.001,
    early_stopping_patience: int = 3,
    backup_dir: str = "",
    accuracy_threshold: float = 0.8,
    model_name: str = "image-classifier",
    deploy_target: str = "local",
    model_repository: str = "",
    serving_port: int = 8080,
    top_k: int = 3,
    beam_runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006 (KFP list parameter default)
):
    """Builds the pipeline DAG.

    Args:
        csv_uri: The book's CSV (uri,label per line); use with labels_uri.
        labels_uri: Label file, one label per line.
        image_dir: Folder tree root/<label>/*.jpg (instead of csv_uri).
        train_fraction: Share of images in the train split (by a stable URI hash).
        valid_fraction: Share of images in the valid split; the rest is test.
        max_image_side: Longer images are resized to this side before writing.
        max_error_fraction: create_tfrecords fails when more inputs than this are bad.
        backbone: keras.applications backbone.
        weights: "imagenet", "none" or a no-top weights file.
        image_size: Model input side, in pixels.
        batch_size: Training batch size.
        epochs: Maximum training epochs.
        learning_rate: Adam learning rate.
        early_stopping_patience: Epochs without improvement before stopping.
        backup_dir: Durable BackupAndRestore directory for preemptible training.
        accuracy_threshold: Test accuracy the model must reach to be deployed.
        model_name: Name the model is served under.
        deploy_target: Where to deploy ("local").
        model_repository: Model repository directory of the local server.
        serving_port: Port the local server is documented to serve on.
        top_k: Classes per image in batch predictions.
        beam_runner: Beam runner of the Beam stages (DirectRunner, DataflowRunner).
        beam_args: Extra Beam pipeline options, e.g. ["--project=p", "--region=r"].
    """
    tfrecords = create_tfrecords(
        csv_uri=csv_uri,
        labels_uri=labels_uri,
        image_dir=image_dir,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        max_image_side=max_image_side,
        max_error_fraction=max_error_fraction,
        runner=beam_runner,
        beam_args=beam_args,
    )
    trained = train(
        dataset=tfrecords.outputs["dataset"],
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        early_stopping_patience=early_stopping_patience,
        backup_dir=backup_dir,
    )
    exported = export(model=trained.outputs["model"])
    evaluation = evaluate(
        model=exported.outputs["exported_model"],
        dataset=tfrecords.outputs["dataset"],
        accuracy_threshold=accuracy_threshold,
    )
    # kfp local resolves a condition on a task's single return value ("Output"), so the
    # gate is evaluate's return value rather than a named output.
    with dsl.If(evaluation.outputs["Output"] == True, name="quality-gate"):  # noqa: E712
        deployed = deploy(
            model=exported.outputs["exported_model"],
            model_name=model_name,
            model_repository=model_repository,
            target=deploy_target,
            port=serving_port,
        )
        deployed.set_caching_options(False)  # a deployment is a side effect: always run it
        batch_predict(
            model=exported.outputs["exported_model"],
            dataset=tfrecords.outputs["dataset"],
            top_k=top_k,
            runner=beam_runner,
            beam_args=beam_args,
        )
