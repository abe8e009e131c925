"""How well a detector's edge model agrees with its SavedModel: detections matched by
class and box.

A detection agrees when the other model has one of the same class whose box overlaps it
by IoU >= ``min_iou`` (0.5, the overlap at which COCO's AP50 calls a detection right).
Each model's detections scoring at least ``min_score`` are counted, best first, and each
takes the other model's unused detection of its class that overlaps it most (one-to-one,
as COCO matches). The partner may score below ``min_score``: a detection whose score sits
on the threshold, just above it in one model and just below in the other, is the same
detection, not a disagreement; what must agree is that it is there, its class and its
box. Scores are compared apart (``max_score_difference`` of the matched pairs).

``agreement`` is the share of the counted detections of both models that agree: it falls
when the edge model misses a detection of the SavedModel and when it finds one the
SavedModel does not. NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

MIN_IOU = 0.5


def iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The ``[n, m]`` IoU of ``[n, 4]`` and ``[m, 4]`` boxes ``[ymin, xmin, ymax, xmax]``
    (0 where the union is empty)."""
    boxes, others = np.asarray(boxes, np.float64), np.asarray(others, np.float64)
    top = np.maximum(boxes[:, None, 0], others[None, :, 0])
    left = np.maximum(boxes[:, None, 1], others[None, :, 1])
    bottom = np.minimum(boxes[:, None, 2], others[None, :, 2])
    right = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)

    def area(b):
        return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)

    union = area(boxes)[:, None] + area(others)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def real_detections(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An image's ``num_detections`` real detections from its outputs (the Object
    Detection API's, without the batch dimension): ``boxes``, ``classes``, ``scores``."""
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    return {
        "boxes": np.asarray(outputs["detection_boxes"], np.float64).reshape(-1, 4)[:count],
        "classes": np.asarray(outputs["detection_classes"]).reshape(-1)[:count].astype(int),
        "scores": np.asarray(outputs["detection_scores"], np.float64).reshape(-1)[:count],
    }


def match(
    detections: Mapping[str, np.ndarray],
    others: Mapping[str, np.ndarray],
    min_score: float,
    min_iou: float = MIN_IOU,
) -> list[tuple[int, int]]:
    """(detection, other) index pairs: each detection scoring at least ``min_score``, best
    first, with the unused other detection of its class that overlaps it most, where that
    IoU is at least ``min_iou``. Both are ``real_detections``."""
    overlaps = iou(detections["boxes"], others["boxes"])
    overlaps[detections["classes"][:, None] != others["classes"][None, :]] = -1.0
    used = np.zeros(len(others["scores"]), bool)
    pairs = []
    for i in np.argsort(-detections["scores"], kind="stable"):
        if detections["scores"][i] < min_score:
            break
        candidates = np.where(used, -1.0, overlaps[i])
        if candidates.size and candidates.max() >= min_iou:
            j = int(candidates.argmax())
            used[j] = True
            pairs.append((int(i), j))
    return pairs


def image_agreement(
    reference: Mapping[str, np.ndarray],
    edge: Mapping[str, np.ndarray],
    min_score: float,
    min_iou: float = MIN_IOU,
) -> dict[str, float]:
    """One image's counts: ``reference_detections`` (the SavedModel's scoring at least
    ``min_score``) and how many the edge model ``found``; the edge model's
    ``detections`` and how many the SavedModel ``confirmed``; and the largest score and
    box coordinate differences of the found pairs. Both are ``real_detections``."""
    found = match(reference, edge, min_score, min_iou)
    confirmed = match(edge, reference, min_score, min_iou)
    rows = np.array([i for i, _ in found], int)
    columns = np.array([j for _, j in found], int)
    return {
        "reference_detections": int(np.sum(reference["scores"] >= min_score)),
        "found": len(found),
        "detections": int(np.sum(edge["scores"] >= min_score)),
        "confirmed": len(confirmed),
        "max_score_difference": float(
            np.abs(reference["scores"][rows] - edge["scores"][columns]).max(initial=0.0)
        ),
        "max_box_difference": float(
            np.abs(reference["boxes"][rows] - edge["boxes"][columns]).max(initial=0.0)
        ),
    }


def detection_agreement(
    images: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
    min_score: float,
    min_iou: float = MIN_IOU,
) -> dict[str, float]:
    """The agreement of an edge model with the SavedModel over images.

    Args:
        images: Per image, (the SavedModel's outputs, the edge model's outputs), each
            the Object Detection API's outputs without the batch dimension.
        min_score: Detections scoring less are not counted (they may still be the
            partner of a counted one).
        min_iou: The overlap at which two detections of a class are the same.

    Returns:
        ``agreement`` ((found + confirmed) / (reference_detections + detections); 1.0
        when neither model has a counted detection), ``images_agreeing`` (the share of
        images where every counted detection agrees), the summed counts of
        ``image_agreement`` and the largest differences.
    """
    totals = dict.fromkeys(("reference_detections", "found", "detections", "confirmed"), 0)
    differences = {"max_score_difference": 0.0, "max_box_difference": 0.0}
    count = agreeing = 0
    for reference, edge in images:
        one = image_agreement(real_detections(reference), real_detections(edge), min_score, min_iou)
        for key in totals:
            totals[key] += one[key]
        for key in differences:
            differences[key] = max(differences[key], one[key])
        count += 1
        agreeing += (
            one["found"] == one["reference_detections"] and one["confirmed"] == one["detections"]
        )
    counted = totals["reference_detections"] + totals["detections"]
    agree = (totals["found"] + totals["confirmed"]) / counted if counted else 1.0
    return {
        "agreement": agree,
        "images_agreeing": agreeing / count if count else 1.0,
        **totals,
        **differences,
    }
