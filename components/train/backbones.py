"""keras.applications backbones the train stage supports, and the classifier built on one.

Every backbone here takes float pixels in ``[0, 255]``: most carry their own
normalisation; for the others a ``Rescaling`` layer in front does it, so the saved
model never depends on a separate ``preprocess_input`` function.
"""

from __future__ import annotations

import os
import tempfile

import keras

from components.common import io

# name -> (scale, offset) of a Rescaling layer in front, or None when built in.
BACKBONES: dict[str, tuple[float, float] | None] = {
    **{f"EfficientNetB{i}": None for i in range(8)},
    **{f"EfficientNetV2{v}": None for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    "MobileNetV3Small": None,
    "MobileNetV3Large": None,
    "ConvNeXtTiny": None,
    "ConvNeXtSmall": None,
    "MobileNetV2": (1.0 / 127.5, -1.0),
}


def is_pretrained(weights: str) -> bool:
    """True when ``weights`` names pretrained weights (``"imagenet"`` or a file)."""
    return weights.strip().lower() not in ("", "none", "random")


def resolve_weights(weights: str) -> str | None:
    """Maps the ``weights`` parameter to what keras.applications takes.

    Args:
        weights: ``"imagenet"`` (downloaded by Keras), ``""``/``"none"`` (random
            initialisation), or a path to a weights file of the backbone without its
            top (local or ``gs://``; a remote file is copied to a local temp file).
    """
    if not is_pretrained(weights):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not io.exists(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    if io.is_remote(weights):
        local = os.path.join(tempfile.mkdtemp(prefix="weights-"), os.path.basename(weights))
        io.write_bytes(local, io.read_bytes(weights))
        return local
    return weights


def build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """A keras.applications backbone without its top, taking ``[0, 255]`` pixels."""
    if name not in BACKBONES:
        raise ValueError(f"unsupported backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    constructor = getattr(keras.applications, name)
    return constructor(
        include_top=False,
        weights=resolve_weights(weights),
        input_shape=(image_size, image_size, 3),
    )


def build_classifier(
    backbone_name: str,
    num_classes: int,
    image_size: int,
    weights: str = "imagenet",
    dropout: float = 0.2,
    pretrained: bool | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Backbone + new head (global pooling, dropout, softmax).

    The softmax layer is float32 whatever the mixed-precision policy, so the
    probabilities stay numerically sound. With pretrained ``weights`` the backbone is
    called in inference mode: its BatchNormalization layers keep their ImageNet
    statistics even when the backbone is unfrozen for fine-tuning (Keras guide
    "Transfer learning & fine-tuning"); from random initialisation it trains as usual.

    Args:
        backbone_name: A name from ``BACKBONES``.
        num_classes: Outputs of the softmax layer.
        image_size: Side of the square input, in pixels.
        weights: See :func:`resolve_weights`.
        dropout: Dropout rate before the classification layer.
        pretrained: Whether the backbone is used as a pretrained one (inference-mode
            BatchNormalization); default: whether ``weights`` are pretrained. Set it to
            build the same network without loading ``weights``, e.g. to load a trained
            model's weights into it.

    Returns:
        ``(classifier, backbone)``; the backbone is returned so callers can freeze or
        unfreeze it.
    """
    backbone = build_backbone(backbone_name, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    rescale = BACKBONES[backbone_name]
    if rescale is not None:
        x = keras.layers.Rescaling(rescale[0], offset=rescale[1], name="rescale")(x)
    if pretrained is None:
        pretrained = is_pretrained(weights)
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(
        x
    )
    return keras.Model(inputs, outputs, name=f"{backbone_name}_classifier"), backbone


def unfreeze_top_layers(backbone: keras.Model, num_layers: int) -> list[str]:
    """Makes the top ``num_layers`` layers of ``backbone`` trainable, the rest frozen.

    BatchNormalization layers stay frozen wherever they are: fine-tuning on a small
    dataset would otherwise wreck the statistics the pretrained weights rely on.

    Args:
        backbone: The backbone :func:`build_classifier` returned.
        num_layers: How many layers, counted from the output; ``-1`` means all.

    Returns:
        The names of the layers made trainable that have weights.
    """
    backbone.trainable = True
    layers = backbone.layers
    top = layers if num_layers < 0 else layers[len(layers) - min(num_layers, len(layers)) :]
    top_ids = {id(layer) for layer in top}
    unfrozen = []
    for layer in layers:
        trainable = id(layer) in top_ids and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        if trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen
