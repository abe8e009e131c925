"""The tf.distribute strategy of a training run: one device, several GPUs, several workers.

* Several workers (``TF_CONFIG`` names more than one chief/worker task):
  ``MultiWorkerMirroredStrategy``, synchronous data parallelism over the network. On
  Vertex AI custom jobs, whose containers get ``CLUSTER_SPEC`` (worker pools
  ``workerpool0..3``), ``TF_CONFIG`` is made from it first.
* More than one local GPU: ``MirroredStrategy``.
* Otherwise: the default strategy (one CPU or one GPU).

Every worker runs the same program; only the chief writes shared outputs. The others
write theirs to a temporary directory, as in the TensorFlow "Multi-worker training with
Keras" tutorial, so every worker goes through the same steps.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

# Vertex AI worker pools -> TF_CONFIG task types (the mapping of Vertex's own TensorFlow
# containers): the primary replica is the chief.
VERTEX_POOL_TASK_TYPES = {
    "workerpool0": "chief",
    "workerpool1": "worker",
    "workerpool2": "ps",
    "workerpool3": "evaluator",
}
TRAINING_TASK_TYPES = ("chief", "worker")


def tf_config_from_cluster_spec(cluster_spec: dict) -> dict:
    """Translates Vertex AI's ``CLUSTER_SPEC`` (worker pools) into a ``TF_CONFIG``."""
    cluster = {
        VERTEX_POOL_TASK_TYPES[pool]: list(addresses)
        for pool, addresses in cluster_spec["cluster"].items()
        if addresses
    }
    task = cluster_spec["task"]
    config = {
        "cluster": cluster,
        "task": {"type": VERTEX_POOL_TASK_TYPES[task["type"]], "index": int(task["index"])},
    }
    if "environment" in cluster_spec:
        config["environment"] = cluster_spec["environment"]
    return config


def load_tf_config(environ: dict | None = None) -> dict:
    """The run's ``TF_CONFIG`` as a dict (empty when there is none).

    Without ``TF_CONFIG`` but with Vertex AI's ``CLUSTER_SPEC``, ``TF_CONFIG`` is made from
    it and set in ``environ`` (``os.environ`` by default), where tf.distribute reads it.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TF_CONFIG"):
        return json.loads(environ["TF_CONFIG"])
    if environ.get("CLUSTER_SPEC"):
        config = tf_config_from_cluster_spec(json.loads(environ["CLUSTER_SPEC"]))
        environ["TF_CONFIG"] = json.dumps(config)
        return config
    return {}


def num_workers(tf_config: dict) -> int:
    """Training workers (chief included) the ``TF_CONFIG`` names; 1 without one."""
    cluster = tf_config.get("cluster", {})
    return max(1, sum(len(cluster.get(kind, [])) for kind in TRAINING_TASK_TYPES))


def is_chief(tf_config: dict) -> bool:
    """True for the task that writes the shared outputs: the ``chief`` task, else worker 0
    when the cluster has no chief, and any single-machine run."""
    task = tf_config.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})


def strategy_kind(tf_config: dict, num_gpus: int) -> str:
    """``"multi_worker"``, ``"mirrored"`` or ``"default"``: which strategy fits the cluster
    and the local GPUs.

    Raises:
        ValueError: for a cluster with parameter servers, or for a task that is no
            training worker (an evaluator): neither is supported.
    """
    cluster = tf_config.get("cluster", {})
    if cluster.get("ps"):
        raise ValueError("parameter-server clusters are not supported; use chief/worker tasks")
    task_type = tf_config.get("task", {}).get("type", "chief")
    if task_type not in TRAINING_TASK_TYPES:
        raise ValueError(f"this task is a {task_type!r}; only chief and worker tasks train")
    if num_workers(tf_config) > 1:
        return "multi_worker"
    if num_gpus > 1:
        return "mirrored"
    return "default"


def make_strategy(tf_config: dict) -> tf.distribute.Strategy:
    """The strategy :func:`strategy_kind` picks, created.

    Call it before any other TensorFlow operation of the program: a
    ``MultiWorkerMirroredStrategy`` has to configure the runtime's collective ops first.
    """
    kind = strategy_kind(tf_config, len(tf.config.list_physical_devices("GPU")))
    if kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    log.info(
        "strategy %s: %d replica(s) in sync, %d worker(s)",
        strategy_name(strategy),
        strategy.num_replicas_in_sync,
        num_workers(tf_config),
    )
    return strategy


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's public name (``MultiWorkerMirroredStrategy``'s class is named
    ``CollectiveAllReduceStrategy``)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default strategy"


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a ``MultiWorkerMirroredStrategy`` over more than one worker."""
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def worker_dir(shared_dir: str, chief: bool, name: str) -> str:
    """Where this worker writes what the chief writes to ``shared_dir``: ``shared_dir``
    itself on the chief, a new temporary directory on the other workers."""
    if chief:
        return shared_dir
    return tempfile.mkdtemp(prefix=f"{name}-")


def autoshard_policy(num_files: int, workers: int) -> tf.data.experimental.AutoShardPolicy:
    """How tf.data splits a split's shard files among workers.

    ``FILE`` (each worker reads its own files) when there are at least as many files as
    workers, else ``DATA`` (every worker reads all files and keeps every n-th batch):
    with fewer files than workers, ``FILE`` would leave workers without data.
    """
    if num_files >= workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def with_autoshard(
    dataset: tf.data.Dataset, policy: tf.data.experimental.AutoShardPolicy
) -> tf.data.Dataset:
    """``dataset`` with its auto-shard policy set."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def _mean_of_scalars_across_workers(original):
    """Keras 3's ``reduce_per_replica``, fixed for the step logs of multi-worker runs.

    Under ``MultiWorkerMirroredStrategy`` Keras 3 (3.15 and earlier) averages each step's
    scalar logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails on a scalar
    ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388); the mean across replicas is ``axis=None``.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):

            def mean(value):
                local = strategy.experimental_local_results(value)[0]
                if tf.is_tensor(local) and local.shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return tree.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.fixed_for_multi_worker = True
    return reduce_per_replica


def prepare_multi_worker_fit(model, strategy: tf.distribute.Strategy, image_size: int) -> None:
    """Works around two Keras 3 failures of ``fit`` under ``MultiWorkerMirroredStrategy``.

    Call it after each ``compile``, under several workers only.

    1. The scalar step logs (see ``_mean_of_scalars_across_workers``).
    2. ``fit`` builds the model's metrics and optimizer from its first batch reduced
       with ``strategy.reduce`` over the whole ``(images, labels)`` structure, which
       multi-worker collectives cannot take. Built here from a symbolic batch of the
       input's shape instead, ``fit`` has nothing left to build from data.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not getattr(tf_trainer.reduce_per_replica, "fixed_for_multi_worker", False):
        tf_trainer.reduce_per_replica = _mean_of_scalars_across_workers(
            tf_trainer.reduce_per_replica
        )
    batch = (np.zeros((1, image_size, image_size, 3), np.float32), np.zeros((1,), np.int64))
    # Private Keras API, with no public equivalent: what fit's own build does, from a
    # batch of zeros rather than a reduced data batch.
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    # Keras' TensorFlow trainer pulls and reduces a first batch before every fit even
    # when all is built: this model's version skips that.
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
