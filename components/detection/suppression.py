"""From a detector's candidates to the Object Detection API's padded detections.

Every detector family ends the same way: candidate boxes with a class and a score each,
class-aware non-maximum suppression, and fixed-size outputs padded with zeros past
``num_detections``. The families differ only in how they propose candidates (CenterNet's
heatmap peaks, RetinaNet's anchors), so that part is theirs and this one is shared.
Standard TensorFlow ops only, so the export runs in TF Serving.
"""

from __future__ import annotations

import tensorflow as tf


def top_candidates(
    boxes: tf.Tensor, probabilities: tf.Tensor, candidates: int
) -> dict[str, tf.Tensor]:
    """The ``candidates`` best (box, class) pairs of dense predictions.

    Args:
        boxes: ``[batch, n, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
        probabilities: ``[batch, n, classes]`` class probabilities of each box.
        candidates: How many pairs to keep per image (fewer if there are fewer).

    Returns:
        ``boxes`` ``[batch, k, 4]``, ``classes`` (int32, from 0), ``scores`` and
        ``multiclass_scores`` ``[batch, k, classes]`` (every class's probability of the
        candidate's box), best first.
    """
    shape = tf.shape(probabilities)
    classes = shape[2]
    flat = tf.reshape(probabilities, [shape[0], -1])
    scores, index = tf.math.top_k(flat, k=tf.minimum(candidates, tf.shape(flat)[1]))
    box_index = index // classes
    return {
        "boxes": tf.gather(boxes, box_index, batch_dims=1),
        "classes": index % classes,
        "scores": scores,
        "multiclass_scores": tf.gather(probabilities, box_index, batch_dims=1),
    }


def suppress(
    boxes: tf.Tensor,
    classes: tf.Tensor,
    scores: tf.Tensor,
    multiclass_scores: tf.Tensor,
    max_detections: int = 100,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.6,
) -> dict[str, tf.Tensor]:
    """Class-aware non-maximum suppression of candidates sorted by score.

    Args:
        boxes: ``[batch, k, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
        classes: ``[batch, k]`` int32 class indices from 0.
        scores: ``[batch, k]``, descending.
        multiclass_scores: ``[batch, k, classes]``.
        max_detections: Detections per image in the outputs.
        score_threshold: Candidates scoring less are dropped.
        iou_threshold: Two boxes of one class overlapping more are one detection.

    Returns:
        ``boxes`` ``[batch, max_detections, 4]`` clipped to ``[0, 1]``, ``classes``,
        ``scores``, ``multiclass_scores``, zeros past ``num_detections`` (int32
        ``[batch]``).
    """
    boxes = tf.clip_by_value(tf.cast(boxes, tf.float32), 0.0, 1.0)
    scores = tf.cast(scores, tf.float32)
    # Each class's boxes are moved apart so that boxes of different classes never overlap.
    shifted = boxes + 2.0 * tf.cast(classes, tf.float32)[..., None]
    keep, valid = tf.image.non_max_suppression_padded(
        shifted,
        scores,
        max_output_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_to_max_output_size=True,
    )
    real = tf.sequence_mask(valid, max_detections)

    def picked(values: tf.Tensor) -> tf.Tensor:
        """``values`` of the kept candidates, zeros past the real ones."""
        chosen = tf.gather(values, keep, batch_dims=1)
        mask = tf.cast(real, values.dtype)
        return chosen * (mask[..., None] if chosen.shape.rank == 3 else mask)

    return {
        "boxes": picked(boxes),
        "classes": picked(classes),
        "scores": picked(scores),
        "multiclass_scores": picked(tf.cast(multiclass_scores, tf.float32)),
        "num_detections": valid,
    }
