"""KFP component of the export stage."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def export(
    model: Input[Model],
    exported_model: Output[Model],
    explanation_method: str = "integrated_gradients",
    explanation_steps: int = 50,
):
    """Exports the trained classifier as a serving SavedModel for encoded images.

    The SavedModel carries its preprocessing and labels. Its serving_default signature
    takes `image_bytes` (encoded JPEG/PNG; {"b64": ...} in TF Serving JSON requests) and
    returns probabilities, class_index, label and score; labels are also written to
    assets.extra/labels.txt. Vertex AI's prebuilt TensorFlow container, KServe's
    TensorFlow predictor and TF Serving serve it as is.

    For explanations it also has the xai_preprocess (image_bytes -> float pixels) and
    xai_model (pixels -> probabilities) signatures Vertex Explainable AI uses, and the
    Vertex explanation spec naming them in assets.extra/explanation_metadata.json and
    explanation_parameters.json.

    Args:
        model: Model directory written by the train stage.
        explanation_method: Attribution method of the explanation spec:
            integrated_gradients (per pixel) or xrai (regions).
        explanation_steps: Its step count, 1 to 100.

    Returns:
        exported_model: The SavedModel directory (saved_model.pb at its root); its
            metadata lists the labels, image size and signatures, and holds the
            explanation spec (explanation_metadata, explanation_parameters: Vertex AI
            REST JSON) for a Vertex AI upload.
    """
    from components.common.io import artifact_location
    from components.export.saved_model import export_saved_model

    exported_model.metadata.update(
        export_saved_model(
            artifact_location(model),
            artifact_location(exported_model),
            explanation_method,
            explanation_steps,
        )
    )
