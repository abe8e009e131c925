"""KFP component of the export_edge stage (on the export image, which holds the converters)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def export_edge(
    exported_model: Input[Model],
    dataset: Input[Dataset],
    tflite_model: Output[Model],
    tfjs_model: Output[Model],
    agreement: Output[Metrics],
    representative_images: int = 100,
    float_min_agreement: float = 0.99,
    int8_min_agreement: float = 0.9,
    split: str = "test",
    max_examples: int = 0,
    tfjs_check: str = "auto",
):
    """Converts the serving SavedModel for devices and browsers: TFLite (float32,
    float16 and int8) and a TensorFlow.js graph model, each checked against it.

    The edge models take decoded RGB pixels (uint8 [batch, height, width, 3], any
    size; no JPEG decoding on device) and resize them inside exactly as the SavedModel
    does after decoding; they return its probabilities, class_index and score, the
    TFLite models also its label. int8 is calibrated on training images. Each model runs
    on the test split's images, decoded as the SavedModel decodes them, and its top-1
    class is compared with the SavedModel's; the step fails below the minimum agreement.

    Args:
        exported_model: Serving SavedModel written by the export stage.
        dataset: TFRecord dataset written by create_tfrecords (train split: int8
            calibration; the split named by split: the check).
        representative_images: Training images that calibrate the int8 model.
        float_min_agreement: Share of checked images on which float32, float16 and
            TF.js must give the SavedModel's top-1 class, else the step fails.
        int8_min_agreement: The same for int8.
        split: Dataset split the models are checked on.
        max_examples: Check on at most this many of its images; 0: all.
        tfjs_check: How the TF.js model runs in the check: "node" (TensorFlow.js in
            Node.js), "python" (its graph and weights in TensorFlow; the stage images
            have no Node.js) or "auto" (node when Node.js is there).

    Returns:
        tflite_model: model_float32.tflite, model_float16.tflite, model_int8.tflite and
            labels.txt; signature serving_default (pixels -> probabilities,
            class_index, label, score).
        tfjs_model: model.json (labels in its userDefinedMetadata), weight shards and
            labels.txt; load with tf.loadGraphModel.
        agreement: Per format (float32, float16, int8, tfjs) the share of checked
            images whose top-1 class agrees with the SavedModel's (for int8, a tie of
            classes the SavedModel scores less than int8's step of 1/256 apart counts,
            and unresolved_ties says how many), and examples; the metadata also holds
            file sizes, conversion seconds and which TF.js check ran.
    """
    from components.common.io import artifact_location
    from components.export_edge.edge import export_edge as export_edge_models

    result = export_edge_models(
        artifact_location(exported_model),
        artifact_location(dataset),
        artifact_location(tflite_model),
        artifact_location(tfjs_model),
        representative_images=representative_images,
        float_min_agreement=float_min_agreement,
        int8_min_agreement=int8_min_agreement,
        split=split,
        max_examples=max_examples,
        tfjs_check=tfjs_check,
    )
    for kind, figures in result["agreement"].items():
        agreement.log_metric(kind, figures["agreement"])
    agreement.log_metric("examples", result["examples"])
    agreement.metadata.update({k: v for k, v in result.items() if k != "agreement"})
    for figure in ("max_probability_difference", "unresolved_ties"):
        agreement.metadata[figure] = {
            kind: figures[figure] for kind, figures in result["agreement"].items()
        }
    common = {k: result[k] for k in ("labels", "image_size", "input")}
    tflite_model.metadata.update(
        common, files=result["tflite_files"], outputs=result["outputs"]["tflite"]
    )
    tfjs_model.metadata.update(common, outputs=result["outputs"]["tfjs"])
