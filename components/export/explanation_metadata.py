"""The explanation spec a Vertex AI Model upload needs to serve explanations.

Vertex Explainable AI explains a TensorFlow 2 SavedModel whose serving input is not
differentiable (encoded image bytes) through two extra signatures: ``xai_preprocess``
(the request's inputs -> the model's differentiable input) and ``xai_model`` (that input
-> the outputs to explain). The export stage writes both (see
:mod:`components.export.saved_model`) and, next to them, the spec that names their
tensors, in the Vertex AI REST form (camelCase JSON, as ``gcloud ai models upload
--explanation-metadata-file`` takes it)::

    assets.extra/explanation_metadata.json     ExplanationMetadata
    assets.extra/explanation_parameters.json   ExplanationParameters

Writing needs only TensorFlow (the export image has no Google Cloud SDK);
:func:`vertex_explanation_spec` turns the files into the SDK's own
``google.cloud.aiplatform_v1`` types for an upload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf

# Vertex AI's signature keys for TensorFlow 2 models with a preprocessing function.
from components.classification.signature import XAI_MODEL_SIGNATURE, XAI_PREPROCESS_SIGNATURE
from components.common import io, serving

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1.types import ExplanationMetadata, ExplanationParameters

METADATA_FILE = "explanation_metadata.json"
PARAMETERS_FILE = "explanation_parameters.json"
FEATURE_NAME = "image"  # the key attributions come back under

INTEGRATED_GRADIENTS = "integrated_gradients"
XRAI = "xrai"
METHODS = {INTEGRATED_GRADIENTS: "integratedGradientsAttribution", XRAI: "xraiAttribution"}
DEFAULT_STEPS = 50
MAX_STEPS = 100  # Vertex AI's upper bound for both methods' step count
# A black image (a scalar baseline is broadcast to the input's shape).
DEFAULT_BASELINES = (0.0,)

# Vertex AI's recommended image visualisations: per-pixel attributions for integrated
# gradients, regions coloured by importance for XRAI; the weakest 70% are left out.
_VISUALIZATIONS = {
    INTEGRATED_GRADIENTS: {
        "type": "PIXELS",
        "polarity": "POSITIVE",
        "colorMap": "PINK_GREEN",
        "clipPercentUpperbound": 99.9,
        "clipPercentLowerbound": 70.0,
        "overlayType": "GRAYSCALE",
    },
    XRAI: {
        "polarity": "POSITIVE",
        "colorMap": "VIRIDIS",
        "clipPercentUpperbound": 99.9,
        "clipPercentLowerbound": 70.0,
        "overlayType": "GRAYSCALE",
    },
}


def spec_dir(export_dir: str) -> str:
    """The folder next to the SavedModel's graph where the spec files go."""
    return io.join(export_dir, serving.EXTRA_DIR)


def xai_tensor_names(export_dir: str) -> tuple[str, str]:
    """The input and output names of an exported SavedModel's ``xai_model`` signature.

    Read from the SavedModel itself, so the spec names what servers will find; see
    :func:`signature_tensor_names` for the checks.
    """
    return signature_tensor_names(tf.saved_model.load(export_dir).signatures)


def signature_tensor_names(signatures: Mapping[str, Any]) -> tuple[str, str]:
    """The input and output names of the ``xai_model`` signature of loaded signatures.

    Checks the contract Vertex AI relies on: ``xai_model`` takes one float image batch
    ``[batch, height, width, 3]``, and ``xai_preprocess`` returns exactly that input.

    Args:
        signatures: ``tf.saved_model.load(export_dir).signatures``.

    Returns:
        ``(input_name, output_name)``; the output is ``probabilities`` when the
        signature has several.

    Raises:
        ValueError: when the signatures are missing or break the contract.
    """
    missing = {XAI_PREPROCESS_SIGNATURE, XAI_MODEL_SIGNATURE} - set(signatures.keys())
    if missing:
        raise ValueError(
            f"the SavedModel has no {sorted(missing)} signature(s): re-export the model with "
            "this version of the export stage"
        )
    model = signatures[XAI_MODEL_SIGNATURE]
    inputs = model.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(f"{XAI_MODEL_SIGNATURE} must take one input, it takes {sorted(inputs)}")
    ((input_name, spec),) = inputs.items()
    if spec.dtype != tf.float32 or spec.shape.rank != 4 or spec.shape[-1] != 3:
        raise ValueError(
            f"{XAI_MODEL_SIGNATURE} input {input_name!r} must be float32 [batch, h, w, 3], "
            f"it is {spec.dtype.name} {spec.shape}"
        )
    preprocessed = signatures[XAI_PREPROCESS_SIGNATURE].structured_outputs
    if set(preprocessed) != {input_name}:
        raise ValueError(
            f"{XAI_PREPROCESS_SIGNATURE} returns {sorted(preprocessed)}, but "
            f"{XAI_MODEL_SIGNATURE} takes {input_name!r}: they must match"
        )
    outputs = sorted(model.structured_outputs)
    if len(outputs) > 1 and "probabilities" not in outputs:
        raise ValueError(f"{XAI_MODEL_SIGNATURE} has several outputs {outputs}: which to explain?")
    output_name = "probabilities" if "probabilities" in outputs else outputs[0]
    return input_name, output_name


def explanation_spec(
    input_tensor_name: str,
    output_tensor_name: str,
    labels: Sequence[str],
    method: str = INTEGRATED_GRADIENTS,
    step_count: int = DEFAULT_STEPS,
    baselines: Sequence[float] = DEFAULT_BASELINES,
) -> tuple[dict, dict]:
    """The explanation metadata and parameters, as Vertex AI REST JSON objects.

    Args:
        input_tensor_name: The ``xai_model`` signature's input (float pixels).
        output_tensor_name: Its output to explain (class probabilities).
        labels: Class labels in index order: attributions are reported per class under
            these names.
        method: ``integrated_gradients`` (per-pixel) or ``xrai`` (regions).
        step_count: Integration steps, 1 to 100 (Vertex AI's range; 50 is its usual
            choice).
        baselines: Pixel values of constant baseline images (0 black, 255 white);
            Vertex AI averages the attributions over several.

    Returns:
        ``(metadata, parameters)``: the JSON of ``ExplanationMetadata`` and
        ``ExplanationParameters``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {list(METHODS)}")
    if not 1 <= step_count <= MAX_STEPS:
        raise ValueError(f"step_count must be 1 to {MAX_STEPS}, got {step_count}")
    if not baselines:
        raise ValueError("give at least one baseline")
    metadata = {
        "inputs": {
            FEATURE_NAME: {
                "inputTensorName": input_tensor_name,
                "modality": "image",
                "inputBaselines": [float(b) for b in baselines],
                "visualization": dict(_VISUALIZATIONS[method]),
            }
        },
        "outputs": {
            output_tensor_name: {
                "outputTensorName": output_tensor_name,
                "indexDisplayNameMapping": list(labels),
            }
        },
    }
    parameters = {METHODS[method]: {"stepCount": int(step_count)}}
    return metadata, parameters


def write_explanation_spec(
    export_dir: str,
    labels: Sequence[str],
    method: str = INTEGRATED_GRADIENTS,
    step_count: int = DEFAULT_STEPS,
    baselines: Sequence[float] = DEFAULT_BASELINES,
) -> dict:
    """Writes the spec of an exported SavedModel to ``assets.extra/``.

    The tensor names come from the SavedModel (:func:`xai_tensor_names`); the other
    arguments are those of :func:`explanation_spec`.

    Returns:
        ``{"explanation_metadata": ..., "explanation_parameters": ...}``, the JSON
        written, for the export artifact's metadata.
    """
    input_name, output_name = xai_tensor_names(export_dir)
    metadata, parameters = explanation_spec(
        input_name, output_name, labels, method, step_count, baselines
    )
    io.write_json(io.join(spec_dir(export_dir), METADATA_FILE), metadata)
    io.write_json(io.join(spec_dir(export_dir), PARAMETERS_FILE), parameters)
    return {"explanation_metadata": metadata, "explanation_parameters": parameters}


def read_explanation_spec(export_dir: str) -> tuple[dict, dict]:
    """The spec JSON the export stage wrote next to a SavedModel.

    Raises:
        FileNotFoundError: for a SavedModel exported without one.
    """
    paths = [io.join(spec_dir(export_dir), name) for name in (METADATA_FILE, PARAMETERS_FILE)]
    for path in paths:
        if not io.exists(path):
            raise FileNotFoundError(
                f"no explanation spec at {path}: re-export the model with this version of "
                "the export stage"
            )
    metadata, parameters = (io.read_json(path) for path in paths)
    return metadata, parameters


def to_vertex_types(
    metadata: dict, parameters: dict
) -> tuple[ExplanationMetadata, ExplanationParameters]:
    """The spec JSON as ``google.cloud.aiplatform_v1`` messages; an unknown field or enum
    value is an error, so a spec the API would not understand fails here, not at upload."""
    from google.cloud.aiplatform_v1.types import ExplanationMetadata, ExplanationParameters

    return (
        ExplanationMetadata.from_json(json.dumps(metadata)),
        ExplanationParameters.from_json(json.dumps(parameters)),
    )


def vertex_explanation_spec(
    export_dir: str, method: str = "", step_count: int = 0
) -> tuple[ExplanationMetadata, ExplanationParameters]:
    """The explanation spec of an exported SavedModel, for ``Model.upload``.

    Reads the spec the export stage wrote in ``assets.extra/`` (so it works on
    ``gs://`` without loading the model) and returns it as the Vertex AI SDK's types,
    e.g. for ``aiplatform.Model.upload(explanation_metadata=..., explanation_parameters=...)``
    or ``ModelServiceClient.upload_model`` (``Model.explanation_spec``).

    Args:
        export_dir: SavedModel written by the export stage.
        method: ``integrated_gradients`` or ``xrai`` to replace the exported method;
            empty keeps it.
        step_count: Step count to replace the exported one (1 to 100); 0 keeps it.

    Returns:
        ``(ExplanationMetadata, ExplanationParameters)`` from
        ``google.cloud.aiplatform_v1.types``.
    """
    metadata, parameters = read_explanation_spec(export_dir)
    if method or step_count:
        ((exported_key, exported),) = parameters.items()
        exported_method = next(m for m, key in METHODS.items() if key == exported_key)
        (feature,) = metadata["inputs"].values()
        (output,) = metadata["outputs"].values()
        metadata, parameters = explanation_spec(
            feature["inputTensorName"],
            output["outputTensorName"],
            output.get("indexDisplayNameMapping", []),
            method or exported_method,
            step_count or exported["stepCount"],
            feature.get("inputBaselines", DEFAULT_BASELINES),
        )
    return to_vertex_types(metadata, parameters)
