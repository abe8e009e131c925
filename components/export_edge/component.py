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
    min_score: float = 0.3,
):
    """Converts the serving SavedModel of a classifier or a detector (its outputs say
    which) for devices and browsers: TFLite (float32, float16 and int8) and a
    TensorFlow.js graph model, each checked against it.

    The edge models take decoded RGB pixels (uint8 [batch, height, width, 3], any size;
    a detector's one image at a time; no JPEG decoding on device) and resize them inside
    exactly as the SavedModel does after decoding; they return its outputs: a
    classifier's probabilities, class_index and score, a detector's detection_boxes,
    detection_classes, detection_scores, num_detections and
    detection_multiclass_scores, the TFLite models also its label (detection_labels).
    int8 is calibrated on training images. Each model runs on the test split's images,
    decoded as the SavedModel decodes them, and is compared with the SavedModel: a
    classifier's top-1 class; a detector's detections scoring at least min_score, which
    agree when the other model has one of the same class with IoU >= 0.5. The step fails
    below the minimum agreement.

    Args:
        exported_model: Serving SavedModel written by the export stage or by
            export_detector.
        dataset: TFRecord dataset written by create_tfrecords or
            create_detection_tfrecords (train split: int8 calibration; the split named
            by split: the check).
        representative_images: Training images that calibrate the int8 model.
        float_min_agreement: Share on which float32, float16 and TF.js must agree with
            the SavedModel (of the checked images for a classifier, of the detections
            for a detector), else the step fails.
        int8_min_agreement: The same for int8.
        split: Dataset split the models are checked on.
        max_examples: Check on at most this many of its images; 0: all.
        tfjs_check: How the TF.js model runs in the check: "node" (TensorFlow.js in
            Node.js), "python" (its graph and weights in TensorFlow; the stage images
            have no Node.js) or "auto" (node when Node.js is there).
        min_score: Detection only: the detections of either model scoring at least this
            are the ones compared.

    Returns:
        tflite_model: model_float32.tflite, model_float16.tflite, model_int8.tflite and
            labels.txt; signature serving_default (pixels -> the outputs above).
        tfjs_model: model.json (labels in its userDefinedMetadata), weight shards and
            labels.txt; load with tf.loadGraphModel (a detector's runs with
            executeAsync: its suppression is an asynchronous op).
        agreement: Per format (float32, float16, int8, tfjs) the agreement with the
            SavedModel, and examples; the metadata also holds the task's other figures
            per format (a classifier's max_probability_difference and unresolved_ties;
            a detector's detection counts, images_agreeing, max_score_difference and
            max_box_difference), file sizes, conversion seconds and which TF.js check
            ran.
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
        min_score=min_score,
    )
    for kind, figures in result["agreement"].items():
        agreement.log_metric(kind, figures["agreement"])
    agreement.log_metric("examples", result["examples"])
    agreement.metadata.update({k: v for k, v in result.items() if k != "agreement"})
    for figure in next(iter(result["agreement"].values())):
        if figure != "agreement":
            agreement.metadata[figure] = {
                kind: figures[figure] for kind, figures in result["agreement"].items()
            }
    common = {k: result[k] for k in ("task", "labels", "image_size", "input")}
    tflite_model.metadata.update(
        common, files=result["tflite_files"], outputs=result["outputs"]["tflite"]
    )
    tfjs_model.metadata.update(common, outputs=result["outputs"]["tfjs"])
