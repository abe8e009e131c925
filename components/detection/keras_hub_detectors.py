"""KerasHub's RetinaNet behind the detection train component.

The default family (``centernet``) trains from random initialisation on two CPU cores.
For the fine-tuning on a GPU that the 2019 flow did with the Object Detection API's model
zoo, ``family="retinanet"`` trains KerasHub's ``RetinaNetObjectDetector`` from a
COCO-trained preset (``retinanet_resnet50_fpn_coco``, downloaded from Kaggle Models where
the train step runs: set ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``, or point ``preset`` at a
copy of the preset's folder, local or ``gs://``). Without a preset it builds a small
RetinaNet from random initialisation (a ResNet of basic blocks), which is what the tests
and a CPU smoke run use: nothing is downloaded.

The suite's input pipeline, export and metrics stay the same for every family: the images
are decoded, resized and scaled here (the preset's own preprocessor is dropped after its
scale and offset are read, so training and serving scale alike), the boxes go in as pixels
``[ymin, xmin, ymax, xmax]`` of the model's square input with ``-1`` padding (KerasHub's
convention), and the export turns the model's anchors into candidates for the class-aware
non-maximum suppression every family shares (``suppression``).

D-FINE is not offered yet: KerasHub 0.32's ``DFineObjectDetector.compute_loss`` counts the
``-1`` padding rows of a batch as objects (its ``num_targets_per_image`` is the padded
width), so batches of images with different numbers of boxes would train on the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

FAMILIES = ("centernet", "retinanet")
KERAS_HUB_FAMILIES = ("retinanet",)
PRESETS = {"retinanet": "retinanet_resnet50_fpn_coco"}
BOX_FORMAT = "yxyx"  # pixels of the model's square input


def _small_retinanet(num_classes: int, image_size: int) -> keras.Model:
    """A RetinaNet from random initialisation on a small ResNet (one basic block per
    stage, 64 filters): pyramid levels 3 to 7, as the preset's."""
    import keras_hub

    shape = (image_size, image_size, 3)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=shape,
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=True, image_shape=shape
    )
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format=BOX_FORMAT
    )


def build(family: str, num_classes: int, image_size: int, preset: str = "") -> keras.Model:
    """A KerasHub detector of ``family`` for ``num_classes`` classes.

    Args:
        family: One of ``KERAS_HUB_FAMILIES``.
        num_classes: The dataset's classes (a preset's COCO head is replaced).
        image_size: The model's square input side.
        preset: A KerasHub preset name or folder; empty: the small random-init model.

    Returns:
        The detector, its preprocessor still attached (``input_scaling`` reads and drops
        it).
    """
    if family not in KERAS_HUB_FAMILIES:
        raise ValueError(f"family must be one of {KERAS_HUB_FAMILIES}, got {family!r}")
    if not preset:
        return _small_retinanet(num_classes, image_size)
    import keras_hub

    return keras_hub.models.RetinaNetObjectDetector.from_preset(
        preset, num_classes=num_classes, bounding_box_format=BOX_FORMAT
    )


def input_scaling(model: keras.Model) -> tuple[list[float], list[float]]:
    """The per-channel ``scale`` and ``offset`` the model's preprocessor applies to
    0-255 pixels (a preset's ImageNet normalization; 1/255 and 0 without one). The
    preprocessor is then removed: the suite's input pipeline and export scale instead."""
    converter = getattr(model.preprocessor, "image_converter", None) if model.preprocessor else None
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    model.preprocessor = None

    def three(value, default: float) -> list[float]:
        if value is None:
            return [default] * 3
        values = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
        return values * 3 if len(values) == 1 else values

    return three(scale, 1 / 255), three(offset, 0.0)


def scale_images(images: tf.Tensor, scale: Sequence[float], offset: Sequence[float]) -> tf.Tensor:
    """0-255 float pixels as the model takes them."""
    return images * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)


def encode_targets(boxes: tf.Tensor, classes: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """One image's training targets as KerasHub's detectors take them: ``boxes`` in
    pixels of the square input and ``labels`` (classes from 0, float), with one extra
    ``-1`` row so that a batch of images without objects still has a padded width."""
    pixels = tf.cast(boxes, tf.float32) * float(image_size)
    return {
        "boxes": tf.concat([pixels, -tf.ones([1, 4])], axis=0),
        "labels": tf.concat([tf.cast(classes, tf.float32), [-1.0]], axis=0),
    }


def candidates(model: keras.Model, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Every anchor's decoded box (normalized ``[ymin, xmin, ymax, xmax]``) and class
    probabilities ``[batch, anchors, classes]`` for scaled ``images`` (square), as
    ``RetinaNetObjectDetector.decode_predictions`` decodes them before its own
    suppression."""
    outputs = model(images, training=False)
    shape = tf.shape(images)
    side = tf.cast(shape[1], tf.float32)
    anchors = model.anchor_generator(images)
    anchors = tf.concat(list(anchors.values()), axis=0)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors,
        boxes_delta=outputs["bbox_regression"],
        encoded_format="center_xywh",
        anchor_format=model.anchor_generator.bounding_box_format,
        box_format=BOX_FORMAT,
        image_shape=(images.shape[1], images.shape[2], 3),
    )
    probabilities = tf.sigmoid(tf.cast(outputs["cls_logits"], tf.float32))
    return tf.cast(boxes, tf.float32) / side, probabilities
