"""The default detector: a CenterNet-style head on a keras.applications backbone.

Why a head of our own rather than a library detector: it is the fast anchor-free family
(Zhou et al., "Objects as Points", 2019) that trains to useful accuracy from random
initialisation on two CPU cores, which the demo and the tests need, where KerasHub's
RetinaNet and D-FINE are built for fine-tuning their COCO presets on a GPU. It is a few
standard Keras layers (the saved model loads without custom objects) and three small
functions: the training targets, the loss and the decoding.

* **Model** (``build_detector``): the backbone's last feature map (stride 32), narrowed
  by a 1x1 convolution, three upsampling steps (bilinear x2 then a 3x3 convolution,
  BatchNormalization, ReLU) to stride 4, the backbone's stride-16 and stride-8 maps
  added on the way (a small FPN, as the Object Detection API's CenterNet MobileNetV2 FPN;
  without it, or with CenterNet's transposed 4x4 convolutions, the head learns slower:
  docs/benchmarks.md), then three 3x3 + 1x1 heads: ``heatmap`` (one sigmoid channel per class, its bias set
  so it starts at 0.1), ``size`` (box width and height, normalized to the image) and
  ``offset`` (the centre's sub-cell position).
* **Targets** (``encode_targets``): per class, a Gaussian bump at each box centre on the
  stride-4 grid (radius from the box size, CenterNet's recipe), and at each centre cell
  the box's size and offset with a mask.
* **Loss**: CenterNet's penalty-reduced focal loss on the heatmap, L1 on size and offset
  at the centres only, each normalized by the number of objects.
* **Decoding** (``decode``): 3x3 max-pooling keeps each local peak of the heatmap (the
  method's own non-maximum suppression), the top candidates become boxes, then a
  class-aware IoU non-maximum suppression (``tf.image.non_max_suppression_padded``) drops
  the remaining overlaps: standard TensorFlow ops that run in TF Serving.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from components.detection import suppression

STRIDE = 4
HEADS = ("heatmap", "size", "offset")
_PRIOR = 0.1  # The heatmap's initial probability everywhere.


def output_size(image_size: int) -> int:
    """The side of the heatmap for an input of ``image_size`` pixels."""
    return image_size // STRIDE


UPSAMPLING = ("fpn", "bilinear", "transposed")


def feature_maps(
    backbone: keras.Model, strides: tuple[int, ...] = (8, 16)
) -> dict[int, keras.KerasTensor]:
    """The backbone's last feature map at each of ``strides`` (for the ``fpn`` head's
    lateral connections): the output of its last layer of that resolution, which in
    keras.applications' MobileNets and EfficientNets is the expansion activation of the
    block that halves it (the maps the Object Detection API's SSD and CenterNet FPN
    feature extractors take)."""
    side = backbone.input.shape[1]
    found = {}
    for layer in backbone.layers:
        shape = layer.output.shape
        if len(shape) == 4 and shape[1] and shape[1] == shape[2] and side % shape[1] == 0:
            stride = side // shape[1]
            if stride in strides:
                found[stride] = layer.output
    missing = set(strides) - set(found)
    if missing:
        raise ValueError(f"the backbone {backbone.name} has no feature map of stride {missing}")
    return found


def _conv_bn_relu(x, width: int, kernel: int, name: str):
    x = keras.layers.Conv2D(width, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_detector(
    backbone: keras.Model,
    num_classes: int,
    widths: tuple[int, ...] = (128, 64, 32),
    upsampling: str = "fpn",
) -> keras.Model:
    """The detector on ``backbone`` (a keras.applications model without its top, taking
    ``[0, 255]`` pixels, whose output has stride 32): outputs ``heatmap``
    ``[batch, S/4, S/4, classes]``, ``size`` and ``offset`` ``[batch, S/4, S/4, 2]``.

    ``upsampling``: ``fpn`` (x2 bilinear resize and a 3x3 convolution per step, plus
    the backbone's stride-16 and stride-8 maps through 1x1 convolutions, as the Object
    Detection API's CenterNet MobileNetV2 FPN), ``bilinear`` (the same without those
    lateral connections) or ``transposed`` (4x4 transposed convolutions, CenterNet's)."""
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
    lateral = feature_maps(backbone) if upsampling == "fpn" else {}
    x = backbone.output
    if upsampling != "transposed":
        x = _conv_bn_relu(x, widths[0], 1, "reduce")
    for i, width in enumerate(widths):
        if upsampling == "transposed":
            x = keras.layers.Conv2DTranspose(
                width, 4, strides=2, padding="same", use_bias=False, name=f"up{i}_deconv"
            )(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"up{i}_bn")(x)
            x = keras.layers.ReLU(name=f"up{i}_relu")(x)
            continue
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}_resize")(x)
        x = _conv_bn_relu(x, width, 3, f"up{i}")
        stride = 32 // 2 ** (i + 1)
        if stride in lateral:
            skip = _conv_bn_relu(lateral[stride], width, 1, f"lateral{stride}")
            x = keras.layers.Add(name=f"up{i}_add")([x, skip])

    def head(name: str, channels: int, activation: str | None, bias: float = 0.0):
        y = keras.layers.Conv2D(
            widths[-1], 3, padding="same", activation="relu", name=f"{name}_conv"
        )(x)
        return keras.layers.Conv2D(
            channels,
            1,
            activation=activation,
            bias_initializer=keras.initializers.Constant(bias),
            dtype="float32",  # Sigmoid and L1 in float32 under mixed precision.
            name=name,
        )(y)

    outputs = {
        "heatmap": head("heatmap", num_classes, "sigmoid", -math.log((1 - _PRIOR) / _PRIOR)),
        "size": head("size", 2, None),
        "offset": head("offset", 2, None),
    }
    return keras.Model(backbone.input, outputs, name="centernet")


def _radius(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """CenterNet's Gaussian radius (cells) of a ``height`` x ``width`` box: the largest
    shift of its corners that keeps an IoU of 0.7 with the true box (the smallest of the
    three cases of the original code)."""
    overlap = 0.7
    b1 = height + width
    c1 = width * height * (1 - overlap) / (1 + overlap)
    r1 = (b1 + tf.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - overlap) * width * height
    r2 = (b2 + tf.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * overlap
    b3 = -2 * overlap * (height + width)
    c3 = (overlap - 1) * width * height
    r3 = (b3 + tf.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return tf.maximum(0.0, tf.floor(tf.minimum(tf.minimum(r1, r2), r3)))


def encode_targets(
    boxes: tf.Tensor, classes: tf.Tensor, num_classes: int, image_size: int
) -> dict[str, tf.Tensor]:
    """Training targets of one image.

    Args:
        boxes: ``[n, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
        classes: ``[n]`` class indices from 0.
        num_classes: Classes of the model.
        image_size: The model's input side.

    Returns:
        ``heatmap`` ``[R, R, classes]``; ``size`` and ``offset`` ``[R, R, 3]``: the
        target's two values and, last, 1 at object centres (the loss's mask).
    """
    side = output_size(image_size)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    heights = (boxes[:, 2] - boxes[:, 0]) * side
    widths = (boxes[:, 3] - boxes[:, 1]) * side
    cy = (boxes[:, 0] + boxes[:, 2]) / 2 * side
    cx = (boxes[:, 1] + boxes[:, 3]) / 2 * side
    iy = tf.clip_by_value(tf.floor(cy), 0, side - 1)
    ix = tf.clip_by_value(tf.floor(cx), 0, side - 1)
    sigma = (2 * _radius(heights, widths) + 1) / 6
    grid = tf.range(side, dtype=tf.float32)
    dy = (grid[None, :] - iy[:, None]) ** 2  # [n, side]
    dx = (grid[None, :] - ix[:, None]) ** 2
    bumps = tf.exp(
        -(dy[:, :, None] + dx[:, None, :]) / (2 * sigma[:, None, None] ** 2)
    )  # [n, y, x]
    one_hot = tf.one_hot(tf.cast(classes, tf.int32), num_classes)  # [n, classes]
    heatmap = tf.reduce_max(bumps[:, :, :, None] * one_hot[:, None, None, :], axis=0)
    heatmap = tf.cond(
        tf.shape(boxes)[0] > 0, lambda: heatmap, lambda: tf.zeros([side, side, num_classes])
    )
    cells = tf.cast(tf.stack([iy, ix], axis=1), tf.int32)
    ones = tf.ones_like(cy)
    size = tf.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0], ones], axis=1)
    offset = tf.stack([cx - ix, cy - iy, ones], axis=1)
    return {
        "heatmap": heatmap,
        "size": tf.scatter_nd(cells, size, [side, side, 3]),
        "offset": tf.scatter_nd(cells, offset, [side, side, 3]),
    }


def focal_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), per image, divided by
    the image's number of objects (at least 1)."""
    y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-4, 1 - 1e-4)
    peaks = tf.cast(tf.equal(y_true, 1.0), tf.float32)
    positive = -tf.math.log(y_pred) * (1 - y_pred) ** 2 * peaks
    negative = -tf.math.log(1 - y_pred) * y_pred**2 * (1 - y_true) ** 4 * (1 - peaks)
    count = tf.maximum(tf.reduce_sum(peaks, axis=[1, 2, 3]), 1.0)
    return tf.reduce_sum(positive + negative, axis=[1, 2, 3]) / count


def masked_l1(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """L1 between the target's two values and the prediction at object centres (the
    target's last channel), per image, divided by its number of objects."""
    mask = y_true[..., 2:]
    error = tf.abs(y_true[..., :2] - tf.cast(y_pred, tf.float32)) * mask
    count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2, 3]), 1.0)
    return tf.reduce_sum(error, axis=[1, 2, 3]) / count


LOSSES = {"heatmap": focal_loss, "size": masked_l1, "offset": masked_l1}
LOSS_WEIGHTS = {"heatmap": 1.0, "size": 5.0, "offset": 1.0}


def peak_candidates(outputs: dict[str, tf.Tensor], candidates: int = 100) -> dict[str, tf.Tensor]:
    """The ``candidates`` best heatmap peaks of a batch of model outputs as boxes, before
    the IoU suppression (3x3 max-pooling keeps each local peak: the method's own
    non-maximum suppression).

    Returns:
        ``boxes`` ``[batch, k, 4]`` normalized ``[ymin, xmin, ymax, xmax]`` (not yet
        clipped), ``classes`` (int32, from 0), ``scores`` ``[batch, k]`` best first,
        ``multiclass_scores`` ``[batch, k, classes]`` (every class's heatmap value at the
        peak), as ``suppression.suppress`` takes them.
    """
    heatmap = tf.cast(outputs["heatmap"], tf.float32)
    size, offset = tf.cast(outputs["size"], tf.float32), tf.cast(outputs["offset"], tf.float32)
    shape = tf.shape(heatmap)
    batch, side, classes = shape[0], shape[1], shape[3]
    peaks = tf.cast(tf.equal(heatmap, tf.nn.max_pool2d(heatmap, 3, 1, "SAME")), tf.float32)
    flat = tf.reshape(heatmap * peaks, [batch, -1])
    k = tf.minimum(candidates, tf.shape(flat)[1])
    scores, index = tf.math.top_k(flat, k=k)
    cell, class_index = index // classes, index % classes
    iy, ix = cell // side, cell % side
    cells = tf.stack([iy, ix], axis=-1)

    def at(values: tf.Tensor) -> tf.Tensor:
        """``values`` ``[batch, R, R, c]`` at each candidate's cell: ``[batch, k, c]``."""
        return tf.gather_nd(values, cells, batch_dims=1)

    wh, delta = at(size), at(offset)
    side_f = tf.cast(side, tf.float32)
    cx = (tf.cast(ix, tf.float32) + delta[..., 0]) / side_f
    cy = (tf.cast(iy, tf.float32) + delta[..., 1]) / side_f
    w, h = tf.maximum(wh[..., 0], 0.0), tf.maximum(wh[..., 1], 0.0)
    return {
        "boxes": tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1),
        "classes": class_index,
        "scores": scores,
        "multiclass_scores": at(heatmap),
    }


def decode(
    outputs: dict[str, tf.Tensor],
    max_detections: int = 100,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.6,
    candidates: int = 100,
) -> dict[str, tf.Tensor]:
    """The detections of a batch of model outputs, the Object Detection API's way: the
    ``peak_candidates``, then ``suppression.suppress``.

    Returns:
        ``boxes`` ``[batch, max_detections, 4]`` normalized ``[ymin, xmin, ymax, xmax]``
        inside ``[0, 1]``; ``classes`` (int32, from 0) and ``scores`` ``[batch,
        max_detections]``, highest score first; ``multiclass_scores`` ``[batch,
        max_detections, classes]`` (every class's heatmap value at the detection's
        centre); ``num_detections`` (int32 ``[batch]``): how many are real, the rest
        being zeros.
    """
    return suppression.suppress(
        **peak_candidates(outputs, candidates),
        max_detections=max_detections,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
    )
