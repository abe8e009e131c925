"""``suppression.suppress`` of one image, in the op TFLite and TensorFlow.js run natively.

The serving export suppresses a batch with ``tf.image.non_max_suppression_padded``, which
TensorFlow builds as a tiled ``while`` loop. It does convert (TFLite's ``WHILE`` and
TensorFlow.js' control-flow ops run it), but as a loop of some sixty ops: on TFLite's CPU
runtime 5 ms for 100 candidates where the ``NonMaxSuppressionV4`` kernel takes 0.02 ms,
about 300 KB more flatbuffer, and a loop int8's quantizer would have to pass through.
``NonMaxSuppressionV4`` is a builtin of both runtimes (TFLite's
``NON_MAX_SUPPRESSION_V4``; TensorFlow.js' ``NonMaxSuppressionV4``, padded to the output
size with its count of real detections). Not ``NonMaxSuppressionV5``: TensorFlow.js runs
it without padding and without the count. Not TFLite's ``TFLite_Detection_PostProcess``:
TensorFlow.js lacks it, and it decodes SSD anchor offsets, which CenterNet has none of.

So the edge models suppress one image with ``NonMaxSuppressionV4``, class-aware the same
way as ``suppression.suppress`` (each class's boxes moved apart by twice the class index),
with the same thresholds (both keep a score above ``score_threshold`` and drop a box
overlapping a kept one by more than ``iou_threshold``) and, as the padded op, never a
box clipped to all zeros, so they keep the same detections.
"""

from __future__ import annotations

import tensorflow as tf


def suppress_one(
    boxes: tf.Tensor,
    classes: tf.Tensor,
    scores: tf.Tensor,
    multiclass_scores: tf.Tensor,
    max_detections: int = 100,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.6,
) -> dict[str, tf.Tensor]:
    """Class-aware non-maximum suppression of a batch of one image's candidates.

    Args:
        boxes: ``[1, k, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
        classes: ``[1, k]`` int32 class indices from 0.
        scores: ``[1, k]``.
        multiclass_scores: ``[1, k, classes]``.
        max_detections: Detections in the outputs.
        score_threshold: Candidates scoring no more are dropped.
        iou_threshold: Two boxes of one class overlapping more are one detection.

    Returns:
        What ``suppression.suppress`` returns for the image: ``boxes`` ``[1,
        max_detections, 4]`` clipped to ``[0, 1]``, ``classes``, ``scores``,
        ``multiclass_scores``, zeros past ``num_detections`` (int32 ``[1]``).
    """
    boxes = tf.clip_by_value(tf.cast(boxes[0], tf.float32), 0.0, 1.0)
    scores = tf.cast(scores[0], tf.float32)
    classes = classes[0]
    shifted = boxes + 2.0 * tf.cast(classes, tf.float32)[:, None]
    # non_max_suppression_padded takes an all-zero box for padding and never keeps it.
    padding = tf.reduce_all(tf.equal(shifted, 0.0), axis=-1)
    keep, valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=shifted,
        scores=tf.where(padding, tf.minimum(score_threshold, 0.0), scores),
        max_output_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_to_max_output_size=True,
    )
    real = tf.range(max_detections) < valid

    def picked(values: tf.Tensor) -> tf.Tensor:
        """``values`` of the kept candidates, zeros past the real ones, batch of one."""
        chosen = tf.gather(values, keep)
        mask = tf.cast(real, values.dtype)
        return (chosen * (mask[:, None] if chosen.shape.rank == 2 else mask))[None]

    return {
        "boxes": picked(boxes),
        "classes": picked(classes),
        "scores": picked(scores),
        "multiclass_scores": picked(tf.cast(multiclass_scores[0], tf.float32)),
        "num_detections": tf.reshape(valid, [1]),
    }
