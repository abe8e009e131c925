"""The train and validation datasets of a training run, as ``fit`` takes them on one
machine or split among several workers (the pipelines themselves are in ``data``)."""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from components.common import schema
from components.train import data, distribution
from components.train.plan import TrainingPlan


@dataclasses.dataclass(frozen=True)
class Datasets:
    """What ``fit`` reads.

    Attributes:
        train: The endless training stream, ``plan.global_batch`` images a batch.
        valid: The validation split.
        validation_steps: Batches of ``valid`` per evaluation; None for one whole pass.
    """

    train: tf.data.Dataset
    valid: tf.data.Dataset
    validation_steps: int | None


def _training_dataset(
    dataset_dir: str, plan: TrainingPlan, cache: bool, seed: int
) -> tf.data.Dataset:
    """The endless training stream; each worker of a multi-worker run reads its share."""
    train = data.make_dataset(
        dataset_dir, "train", plan.image_size, plan.global_batch, True, seed=seed, cache=cache
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


def make_datasets(dataset_dir: str, plan: TrainingPlan, cache: bool, seed: int) -> Datasets:
    """The datasets of a run: ``data.make_dataset``'s, shared among the workers of a
    multi-worker run (see ``training.train`` for ``cache`` and ``seed``)."""
    train = _training_dataset(dataset_dir, plan, cache, seed)
    valid, validation_steps = _validation_dataset(dataset_dir, plan, cache)
    return Datasets(train, valid, validation_steps)
