"""The train and validation datasets of a training run, as ``fit`` takes them on one
machine or split among several workers (the pipelines themselves are in ``data``)."""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from components.common import io, schema
from components.train import data, distribution
from components.train.augmentation import Augmentation
from components.train.plan import TrainingPlan

CLASS_WEIGHTS = ("none", "balanced")


@dataclasses.dataclass(frozen=True)
class Datasets:
    """What ``fit`` reads.

    Attributes:
        train: The endless training stream, ``plan.global_batch`` images a batch.
        valid: The validation split.
        validation_steps: Batches of ``valid`` per evaluation; None for one whole pass.
        class_weight: Each class index's weight in the loss; None: all weigh 1.
    """

    train: tf.data.Dataset
    valid: tf.data.Dataset
    validation_steps: int | None
    class_weight: dict[int, float] | None = None


def train_class_counts(dataset_dir: str, labels: list[str]) -> dict[str, int]:
    """How many images of each class the train split holds (``stats.json``)."""
    counts = io.read_json(io.join(dataset_dir, schema.STATS_FILE))["classes"]["train"]
    return {label: int(counts.get(label, 0)) for label in labels}


def class_weights(counts: dict[str, int], mode: str) -> dict[int, float] | None:
    """The loss weight of each class index: ``"balanced"`` weighs a class by the inverse
    of its share, ``total / (classes * count)`` (scikit-learn's and Keras' rule), so that
    every class weighs as much in an epoch; a class without images gets 1. ``"none"``:
    None, all weigh 1.

    Raises:
        ValueError: for another mode.
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {mode!r}")
    if mode == "none":
        return None
    total = sum(counts.values())
    return {
        index: total / (len(counts) * n) if n else 1.0 for index, n in enumerate(counts.values())
    }


def _training_dataset(
    dataset_dir: str, plan: TrainingPlan, cache: bool, seed: int, augmentation: Augmentation
) -> tf.data.Dataset:
    """The endless training stream; each worker of a multi-worker run reads its share."""
    train = data.make_dataset(
        dataset_dir,
        "train",
        plan.image_size,
        plan.global_batch,
        True,
        seed=seed,
        cache=cache,
        augmentation=augmentation,
    )
    if not plan.multi_worker:
        return train
    num_files = len(schema.shard_files(dataset_dir, "train"))
    return distribution.with_autoshard(
        train, distribution.autoshard_policy(num_files, plan.workers)
    )


def _validation_dataset(
    dataset_dir: str, plan: TrainingPlan, cache: bool
) -> tuple[tf.data.Dataset, int | None]:
    """The validation dataset and its ``validation_steps`` (None: one whole pass)."""
    valid_size = schema.split_size(dataset_dir, "valid")
    if not (plan.multi_worker and valid_size):
        valid = data.make_dataset(
            dataset_dir, "valid", plan.image_size, plan.global_batch, cache=cache
        )
        return valid, None
    # tf.distribute hands a worker that runs out of validation data before the others
    # empty batches, which Keras 3's layers fail on ("Incompatible shapes: [0,...]").
    # Every worker reads all valid files instead and takes the same number of full
    # batches from an endless pass (the last one repeats a few images).
    valid = distribution.with_autoshard(
        data.make_dataset(
            dataset_dir, "valid", plan.image_size, plan.global_batch, cache=cache, repeat=True
        ),
        tf.data.experimental.AutoShardPolicy.DATA,
    )
    return valid, math.ceil(valid_size / plan.global_batch)


def make_datasets(
    dataset_dir: str,
    plan: TrainingPlan,
    cache: bool,
    seed: int,
    augmentation: Augmentation,
    class_weight: dict[int, float] | None = None,
) -> Datasets:
    """The datasets of a run: ``data.make_dataset``'s, shared among the workers of a
    multi-worker run (see ``training.train`` for ``cache`` and ``seed``), the training
    stream varied by ``augmentation``, the classes weighed by ``class_weight``."""
    train = _training_dataset(dataset_dir, plan, cache, seed, augmentation)
    valid, validation_steps = _validation_dataset(dataset_dir, plan, cache)
    return Datasets(train, valid, validation_steps, class_weight)
