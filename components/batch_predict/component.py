"""The batch_predict KFP component: a thin wrapper over ``beam_pipeline.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("batch_predict"), install_kfp_package=False)
def batch_predict(
    model: Input[Model],
    predictions: Output[Dataset],
    dataset: Input[Dataset] = None,
    input_uris: str = "",
    top_k: int = 3,
    batch_size: int = 32,
    runner: str = "DirectRunner",
    beam_args: list = [],  # noqa: B006
    max_error_fraction: float = 0.1,
):
    """Predicts the class of many images with an exported model, on Apache Beam.

    Runs Beam's RunInference with the SavedModel's serving signature over every listed
    image (DirectRunner here, Dataflow at scale) and writes JSON Lines. An image that
    cannot be read or decoded is recorded in ``errors.jsonl`` with its reason; the step
    fails only when such errors pass ``max_error_fraction`` of the inputs.

    Args:
        model: The exported serving SavedModel (the export stage's output), with its
            labels in ``assets.extra/labels.txt``.
        dataset: A create_tfrecords dataset: its test manifest (``manifests/test.csv``)
            lists the images. Used only when ``input_uris`` is empty.
        input_uris: A file listing the images to predict (a ``uri,label`` CSV or one URI
            per line; local or ``gs://``). When set, it is used instead of ``dataset``.
        top_k: Classes listed per image, most probable first.
        batch_size: Images per model call.
        runner: Beam runner: ``DirectRunner`` or ``DataflowRunner``.
        beam_args: Extra Beam pipeline arguments, e.g. ``["--project=p", "--region=r",
            "--temp_location=gs://b/tmp", "--sdk_container_image=<this stage's image>"]``.
        max_error_fraction: Largest tolerated share of inputs without a prediction.

    Returns:
        predictions: The output directory: ``predictions-SSSSS-of-NNNNN.jsonl`` (one object
            per image: ``uri``, ``label``, ``probability``, ``top_k`` and, when listed,
            ``true_label``), ``errors.jsonl`` (``uri``, ``reason``, ``detail``, ``stage``)
            and ``stats.json``. Its metadata holds ``rows``, ``errors``,
            ``errors_by_reason``, ``predictions`` (glob of the shards),
            ``prediction_files``, ``errors_path``, ``labels``, ``top_k``, ``input`` and
            ``counters``.
    """
    from components.batch_predict.beam_pipeline import run
    from components.common.io import artifact_location

    summary = run(
        model_dir=artifact_location(model),
        output_dir=artifact_location(predictions),
        input_uris=input_uris,
        dataset_dir="" if input_uris or dataset is None else artifact_location(dataset),
        top_k=top_k,
        batch_size=batch_size,
        runner=runner,
        beam_args=[str(arg) for arg in beam_args],
        max_error_fraction=max_error_fraction,
    )
    predictions.metadata.update(summary)
