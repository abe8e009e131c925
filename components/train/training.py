"""Transfer learning on the TFRecords of create_tfrecords: Keras ``fit`` at device speed,
on one device, several GPUs or several workers, resumable after preemption.

With pretrained weights (ImageNet or a weights file) training follows the Keras guide
"Transfer learning & fine-tuning": phase one trains the new head on the frozen
backbone; phase two unfreezes the backbone's top layers (BatchNormalization stays frozen
and in inference mode) and trains on at a low learning rate, warmed up then decayed
along a cosine. From random initialisation there is one phase in which everything
trains. Epochs are numbered across phases; the weights of the best epoch overall (by
validation loss) are kept.

The model directory a run writes (the ``Model`` artifact) holds::

    model.keras            the trained classifier (best epoch), float32 whatever the
                           training precision
    labels.txt             class labels, index order
    training_config.json   backbone, image size, labels, settings, per-epoch history, metrics
    history.csv            the per-epoch history (both phases, across restarts)
    curves.html            loss and accuracy curves
    logs/                  TensorBoard event files
    checkpoints/           best-epoch weights

While a run is under way, ``backup_dir`` (default ``<model_dir>/backup``) holds what a
restarted run resumes from: a BackupAndRestore directory per phase, the epoch log, and
once phase one is done its weights and a marker, so a restart goes straight to phase
two. They are removed when the run has written its model.
"""

from __future__ import annotations

import contextlib
import csv
import io as stdio
import json
import logging
import math
import warnings

import keras
import tensorflow as tf

from components.common import io, labels as label_io, schema
from components.common.model_dir import (
    CURVES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    read_config,
    save_model_dir,
)
from components.train import backbones, callbacks, curves, data, distribution, hardware

BEST_WEIGHTS = "best.weights.h5"
PHASE_ONE_WEIGHTS = "phase1.weights.h5"
PHASE_ONE_MARKER = "phase1.json"
METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

log = logging.getLogger(__name__)


def _faster_batchnorm_statistics(model: keras.Model, momentum: float) -> None:
    """Lowers BatchNormalization momentum of a randomly initialised backbone.

    keras.applications builds BN layers with momentum 0.99-0.999, tuned for long
    ImageNet runs; a short run from scratch leaves their moving statistics near their
    initial values, and the model then predicts badly in inference mode.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


@contextlib.contextmanager
def _dtype_policy(name: str):
    """Sets Keras' global dtype policy for what is built inside, then restores it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_history(path: str) -> dict[int, dict[str, float]]:
    """The rows of an epoch log (CSVLogger) by epoch index (from 0); empty if none.

    A restarted run logs again the epoch it was killed in: the last row of an epoch wins.
    """
    if not io.exists(path):
        return {}
    rows: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(io.read_text(path).splitlines()):
        epoch = _to_float(row.pop("epoch", ""))
        if math.isfinite(epoch):
            rows[int(epoch)] = {key: _to_float(value) for key, value in row.items()}
    return rows


def history_columns(rows: dict[int, dict[str, float]]) -> dict[str, list[float]]:
    """Epoch rows as per-key lists in epoch order, with ``epoch`` counted from 1."""
    epochs = sorted(rows)
    keys = sorted({key for row in rows.values() for key in row})
    columns: dict[str, list[float]] = {"epoch": [e + 1 for e in epochs]}
    for key in keys:
        columns[key] = [rows[e].get(key, math.nan) for e in epochs]
    if "phase" in columns:
        columns["phase"] = [int(p) if math.isfinite(p) else 1 for p in columns["phase"]]
    return columns


def _history_rows(columns: dict[str, list[float]], count: int) -> dict[int, dict[str, float]]:
    """The first ``count`` epochs of a saved history (per-key lists) as epoch rows."""
    keys = [key for key in columns if key != "epoch"]
    length = min(count, *(len(columns[key]) for key in keys)) if keys else 0
    return {e: {key: float(columns[key][e]) for key in keys} for e in range(length)}


def _load_weights(model: keras.Model, path: str) -> None:
    """Loads layer weights saved from the other phase's model.

    The file may hold another optimizer's state (phase one's optimizer tracks the
    head only); the layers are what counts, so Keras' note that it skips the optimizer
    is left out.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def _check_initial_model(config: dict, backbone: str, labels: list[str], image_size: int) -> None:
    """Raises ValueError unless a previous run's model has this run's network."""
    expected = {"backbone": backbone, "image_size": image_size, "labels": labels}
    found = {key: config.get(key) for key in expected}
    if found != expected:
        differences = ", ".join(
            f"{key}: {found[key]!r} there, {expected[key]!r} here"
            for key in expected
            if found[key] != expected[key]
        )
        raise ValueError(f"initial_model does not match this run ({differences})")


def _compile(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool,
    steps_per_execution: int,
) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    # Built now rather than inside the first traced step, which TensorFlow would then
    # trace a second time (the first epoch's compile time halves).
    model.optimizer.build(model.trainable_variables)


def fine_tune_schedule(
    learning_rate: float, epochs: int, warmup_epochs: int, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Phase two's learning rate: linear warm-up from 0 to ``learning_rate`` over
    ``warmup_epochs``, then cosine decay to 0 over the remaining epochs."""
    warmup_steps = min(warmup_epochs, epochs) * steps_per_epoch
    decay_steps = max(1, (epochs - min(warmup_epochs, epochs)) * steps_per_epoch)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, warmup_target=learning_rate, warmup_steps=warmup_steps
    )


def _backup_epoch(phase_backup: str) -> int | None:
    """The epoch a phase's BackupAndRestore directory resumes at, if it holds a backup."""
    path = io.join(phase_backup, "training_metadata.json")
    return int(io.read_json(path)["epoch"]) if io.exists(path) else None


def train(
    dataset_dir: str,
    model_dir: str,
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 1e-3,
    dropout: float = 0.2,
    early_stopping_patience: int = 3,
    fine_tune_layers: int = 20,
    fine_tune_epochs: int = 5,
    fine_tune_learning_rate: float = 1e-5,
    warmup_epochs: int = 1,
    precision: str = "auto",
    jit_compile: str = "auto",
    steps_per_execution: int = 0,
    cache: bool = False,
    initial_model: str = "",
    initial_epoch: int = 0,
    backup_dir: str = "",
    curves_path: str = "",
    seed: int = 42,
) -> dict:
    """Trains a classifier on a create_tfrecords dataset and saves it to ``model_dir``.

    Picks the tf.distribute strategy from the environment (see ``distribution``): under
    several workers every worker calls this function with the same arguments, and only
    the chief writes ``model_dir``, ``backup_dir`` and ``curves_path``.

    Args:
        dataset_dir: Directory (or gs:// URI) written by create_tfrecords.
        model_dir: Where to write the model directory described in this module's doc.
        backbone: A name from ``backbones.BACKBONES``, e.g. ``"EfficientNetB0"``.
        weights: ``"imagenet"``, ``"none"`` (random initialisation, one phase) or a path
            to a no-top weights file of the backbone.
        image_size: Side of the square input, in pixels.
        batch_size: Images per batch on each replica (GPU); a step processes
            ``batch_size * replicas`` images, so scale the learning rates with it.
        epochs: The epoch phase one ends at, as in Keras ``fit``: from ``initial_epoch``
            (0 for a new model) up to ``epochs``; fewer with early stopping.
        learning_rate: Adam learning rate of phase one (or of the single phase).
        dropout: Dropout rate before the classification layer.
        early_stopping_patience: Epochs without validation-loss improvement before a
            phase stops; 0 disables early stopping.
        fine_tune_layers: With pretrained weights, how many top layers of the backbone
            phase two unfreezes (BatchNormalization layers stay frozen); -1 for all of
            them, 0 for no phase two.
        fine_tune_epochs: Epochs of phase two; 0 for no phase two.
        fine_tune_learning_rate: Peak Adam learning rate of phase two.
        warmup_epochs: Epochs of linear learning-rate warm-up at the start of phase two.
        precision: ``"auto"`` (mixed_float16 on GPUs of compute capability 7.0 or more,
            else float32), ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.
            The saved model is float32 either way.
        jit_compile: XLA compilation of the train step: ``"auto"`` (on a GPU only),
            ``"true"`` or ``"false"``.
        steps_per_execution: Batches per compiled call; 0 picks 1 on CPU and 32 on a
            GPU (at most an epoch's steps). Several workers always use 1.
        cache: Keep the decoded train and valid images in memory after the first epoch,
            so later epochs skip reading and decoding (only for splits that fit in
            memory); see ``data.make_dataset``.
        initial_model: Model directory of a previous run (local or gs://) to continue
            training from: same backbone, image size and labels. Empty for none.
        initial_epoch: Epoch to continue at (Keras ``fit`` semantics); 0 takes the
            length of ``initial_model``'s history. Its history up to there heads this
            run's.
        backup_dir: Durable directory (e.g. gs://) for the state a preempted run resumes
            from; empty means ``<model_dir>/backup``. One run's only: a directory left
            by another run would be resumed from.
        curves_path: Where to also write the HTML learning curves (e.g. a KFP HTML
            artifact's path); empty for the model directory's copy only.
        seed: Seed for weight initialisation and shuffling.

    Returns:
        Metrics of the kept (best) epoch: ``val_accuracy``, ``val_loss``, ``accuracy``,
        ``loss``; and of the run: ``epochs_run``, ``phase_one_epochs``,
        ``phase_two_epochs``, ``best_epoch`` (counted from 1 across phases and
        ``initial_epoch``), ``train_seconds`` (sum of epoch times, validation included),
        ``images_per_second`` (training images per second of the fastest epoch,
        validation included),
        ``global_batch_size`` and ``replicas``.
    """
    # The strategy first: MultiWorkerMirroredStrategy must come before other TF ops.
    tf_config = distribution.load_tf_config()
    strategy = distribution.make_strategy(tf_config)
    chief = distribution.is_chief(tf_config)
    workers = distribution.num_workers(tf_config)
    multi_worker = distribution.is_multi_worker(strategy)

    for name, value in (
        ("batch_size", batch_size),
        ("image_size", image_size),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {value}")
    for name, value in (
        ("epochs", epochs),
        ("fine_tune_epochs", fine_tune_epochs),
        ("warmup_epochs", warmup_epochs),
        ("initial_epoch", initial_epoch),
        ("early_stopping_patience", early_stopping_patience),
    ):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more; got {value}")
    if fine_tune_layers < -1:
        raise ValueError(f"fine_tune_layers must be -1 (all), 0 or more; got {fine_tune_layers}")
    capabilities = hardware.gpu_compute_capabilities()
    policy = hardware.resolve_precision(precision, capabilities)
    jit = hardware.resolve_jit_compile(jit_compile, capabilities)

    keras.utils.set_random_seed(seed)
    labels = label_io.read_labels(io.join(dataset_dir, label_io.LABELS_FILE))
    replicas = strategy.num_replicas_in_sync
    global_batch = batch_size * replicas
    train_size = schema.split_size(dataset_dir, "train")
    train_ds = data.make_dataset(
        dataset_dir, "train", image_size, global_batch, True, seed=seed, cache=cache
    )
    valid_ds = data.make_dataset(dataset_dir, "valid", image_size, global_batch, cache=cache)
    # The training stream is endless: Keras takes steps_per_epoch batches per epoch from
    # one iterator, so no epoch waits for the pipeline to restart, and every worker of
    # a multi-worker run takes the same number of steps.
    steps_per_epoch = data.steps_per_epoch(train_size, global_batch)
    validation_steps = None
    valid_size = schema.split_size(dataset_dir, "valid")
    if multi_worker:
        train_ds = distribution.with_autoshard(
            train_ds,
            distribution.autoshard_policy(len(schema.shard_files(dataset_dir, "train")), workers),
        )
    if multi_worker and valid_size:
        # tf.distribute hands a worker that runs out of validation data before the others
        # empty batches, which Keras 3's layers fail on ("Incompatible shapes: [0,...]").
        # Every worker reads all valid files instead and takes the same number of full
        # batches from an endless pass (the last one repeats a few images).
        valid_ds = distribution.with_autoshard(
            data.make_dataset(
                dataset_dir, "valid", image_size, global_batch, cache=cache, repeat=True
            ),
            tf.data.experimental.AutoShardPolicy.DATA,
        )
        validation_steps = math.ceil(valid_size / global_batch)
    spe = hardware.resolve_steps_per_execution(steps_per_execution, steps_per_epoch, capabilities)
    if multi_worker and spe > 1:
        # Keras 3's multi-step loop fails under multi-worker collectives.
        log.info("steps_per_execution %d -> 1 with several workers", spe)
        spe = 1
    # Keras runs whole calls of spe steps: the epoch is what they take from the stream.
    steps_per_epoch = spe * math.ceil(steps_per_epoch / spe)

    pretrained = backbones.is_pretrained(weights)
    fine_tune = pretrained and fine_tune_layers != 0 and fine_tune_epochs > 0
    backup_dir = backup_dir or io.join(model_dir, "backup")
    # This worker's own directories: the shared ones on the chief, scratch elsewhere.
    own_model_dir = distribution.worker_dir(model_dir, chief, "train-model")
    own_backup_dir = distribution.worker_dir(backup_dir, chief, "train-backup")
    own_best = io.join(own_model_dir, "checkpoints", BEST_WEIGHTS)
    own_log = io.join(own_backup_dir, HISTORY_FILE)
    io.makedirs(io.join(own_model_dir, "checkpoints"))
    io.makedirs(own_backup_dir)
    # What a preempted run left, read by every worker before any collective step: the
    # chief cannot write again before all workers have joined the next epoch.
    prior_rows = read_history(io.join(backup_dir, HISTORY_FILE))
    marker_path = io.join(backup_dir, PHASE_ONE_MARKER)
    marker = io.read_json(marker_path) if fine_tune and io.exists(marker_path) else None
    shared_best = io.join(model_dir, "checkpoints", BEST_WEIGHTS)
    if not chief and io.exists(shared_best):
        io.write_bytes(own_best, io.read_bytes(shared_best))

    previous_rows: dict[int, dict[str, float]] = {}
    start_epoch = initial_epoch
    if initial_model:
        previous = read_config(initial_model)
        _check_initial_model(previous, backbone, labels, image_size)
        previous_history = previous.get("history", {})
        if not start_epoch:
            start_epoch = len(previous_history.get("loss", []))
        previous_rows = _history_rows(previous_history, start_epoch)
    if epochs <= start_epoch and not fine_tune:
        raise ValueError(
            f"nothing to train: epochs ({epochs}) must be above the initial epoch "
            f"({start_epoch}); like Keras fit, epochs is the epoch training ends at"
        )

    def run_rows() -> dict[int, dict[str, float]]:
        """This run's epochs so far: a preempted attempt's, then this attempt's."""
        return {**prior_rows, **read_history(own_log)}

    with _dtype_policy(policy):
        with strategy.scope():
            model, base = backbones.build_classifier(
                backbone,
                len(labels),
                image_size,
                "none" if initial_model else weights,
                dropout,
                pretrained=pretrained,
            )
            if initial_model:
                _load_weights(model, io.join(initial_model, MODEL_FILE))
            if pretrained:
                base.trainable = False
            else:
                _faster_batchnorm_statistics(base, momentum=0.9)
            _compile(model, learning_rate, jit, spe)
        if multi_worker:
            distribution.prepare_multi_worker_fit(model, strategy, image_size)
        log.info(
            "training %s at %d px: %s, %d replica(s) x %d images per batch, precision %s, "
            "XLA %s, %d step(s) per execution, %d steps per epoch",
            backbone,
            image_size,
            distribution.strategy_name(strategy),
            replicas,
            batch_size,
            policy,
            "on" if jit else "off",
            spe,
            steps_per_epoch,
        )

        def run_phase(phase: int, first_epoch: int, end_epoch: int) -> None:
            """Fits epochs ``first_epoch`` to ``end_epoch`` (excluded) of one phase, from
            where a preempted attempt stopped; nothing if that attempt finished it."""
            rows = run_rows()
            done = [
                (e, rows[e]["val_loss"])
                for e in sorted(rows)
                if rows[e].get("phase") == phase and first_epoch <= e < end_epoch
            ]
            if done and (
                done[-1][0] + 1 >= end_epoch
                or callbacks.stopped_early([v for _, v in done], early_stopping_patience)
            ):
                log.info("phase %d already complete (epoch log): not training it again", phase)
                return
            shared_phase_backup = io.join(backup_dir, f"phase{phase}")
            resume_at = _backup_epoch(shared_phase_backup)
            if resume_at is not None:
                log.info("phase %d: resuming from its backup at epoch %d", phase, resume_at + 1)
            best_so_far = [r["val_loss"] for r in rows.values() if math.isfinite(r["val_loss"])]
            phase_callbacks: list[keras.callbacks.Callback] = [
                callbacks.EpochFacts(phase),
                keras.callbacks.CSVLogger(own_log, append=True),
                keras.callbacks.ModelCheckpoint(
                    own_best,
                    monitor="val_loss",
                    mode="min",
                    save_best_only=True,
                    save_weights_only=True,
                    initial_value_threshold=min(best_so_far) if best_so_far else None,
                ),
                keras.callbacks.TensorBoard(io.join(own_model_dir, "logs")),
            ]
            if early_stopping_patience > 0:
                phase_callbacks.append(
                    callbacks.ResumableEarlyStopping(early_stopping_patience, done)
                )
            # Last, so an epoch is backed up only once its log row and checkpoint exist.
            phase_callbacks.append(
                callbacks.SharedBackupAndRestore(
                    shared_phase_backup, io.join(own_backup_dir, f"phase{phase}")
                )
            )
            # Keras keeps the epoch a BackupAndRestore restored on the model, and a
            # restore in phase one would otherwise also move phase two's start.
            model._initial_epoch = None
            model.fit(
                train_ds,
                validation_data=valid_ds,
                validation_steps=validation_steps,
                initial_epoch=first_epoch,
                epochs=end_epoch,
                steps_per_epoch=steps_per_epoch,
                callbacks=phase_callbacks,
                shuffle=False,  # train_ds shuffles itself
                verbose=2,
            )

        phase_one_end = max(start_epoch, epochs)
        if marker is not None:
            phase_one_end = int(marker["end_epoch"])
            log.info("phase 1 finished before a restart (epochs to %d): skipping it", phase_one_end)
            _load_weights(model, io.join(backup_dir, PHASE_ONE_WEIGHTS))
        elif epochs > start_epoch:
            log.info(
                "phase 1: %s, epochs %d-%d, learning rate %g",
                "new head on the frozen backbone" if pretrained else "whole network",
                start_epoch + 1,
                epochs,
                learning_rate,
            )
            run_phase(1, start_epoch, epochs)
            phase_one_epochs = [e for e, r in run_rows().items() if r.get("phase") == 1]
            phase_one_end = max(phase_one_epochs) + 1 if phase_one_epochs else start_epoch
            if fine_tune:
                if io.exists(own_best):
                    _load_weights(model, own_best)
                model.save_weights(io.join(own_backup_dir, PHASE_ONE_WEIGHTS))
                if chief:
                    io.write_json(marker_path, {"end_epoch": phase_one_end})

        if fine_tune:
            with strategy.scope():
                unfrozen = backbones.unfreeze_top_layers(base, fine_tune_layers)
                _compile(
                    model,
                    fine_tune_schedule(
                        fine_tune_learning_rate, fine_tune_epochs, warmup_epochs, steps_per_epoch
                    ),
                    jit,
                    spe,
                )
            if multi_worker:
                distribution.prepare_multi_worker_fit(model, strategy, image_size)
            log.info(
                "phase 2: fine-tuning the top %s backbone layers (%d with weights; "
                "BatchNormalization frozen), epochs %d-%d, learning rate up to %g "
                "(%d warm-up epoch(s), cosine decay)",
                "all" if fine_tune_layers < 0 else fine_tune_layers,
                len(unfrozen),
                phase_one_end + 1,
                phase_one_end + fine_tune_epochs,
                fine_tune_learning_rate,
                warmup_epochs,
            )
            run_phase(2, phase_one_end, phase_one_end + fine_tune_epochs)

        rows = run_rows()
        if not rows:
            raise RuntimeError("training ran no epoch")
        if io.exists(own_best):
            _load_weights(model, own_best)

    # Saved in float32, whatever the training precision: what export and serving load.
    with _dtype_policy("float32"):
        final, _ = backbones.build_classifier(
            backbone, len(labels), image_size, "none", dropout, pretrained=pretrained
        )
    final.set_weights(model.get_weights())
    # Compiled (optimizer built), so that loading the model finds the optimizer it saved.
    _compile(final, learning_rate, jit_compile=False, steps_per_execution=1)

    def val_loss_of(epoch: int) -> float:
        value = rows[epoch]["val_loss"]
        return value if math.isfinite(value) else math.inf

    best = min(sorted(rows), key=val_loss_of)
    seconds = [rows[e].get("epoch_seconds", math.nan) for e in sorted(rows)]
    seconds = [s for s in seconds if math.isfinite(s)]
    images_per_epoch = steps_per_epoch * global_batch
    phases = [int(r.get("phase", 1)) for r in rows.values()]
    metrics = {key: rows[best][key] for key in METRIC_KEYS}
    metrics.update(
        epochs_run=len(rows),
        phase_one_epochs=phases.count(1),
        phase_two_epochs=phases.count(2),
        best_epoch=best + 1,
        train_seconds=sum(seconds),
        # The fastest epoch: the first of each phase also traces and compiles the steps.
        images_per_second=images_per_epoch / min(seconds) if seconds else 0.0,
        global_batch_size=global_batch,
        replicas=replicas,
    )
    history = history_columns({**previous_rows, **rows})
    phase_boundary = phase_one_end if metrics["phase_two_epochs"] else None
    settings = {
        "strategy": distribution.strategy_name(strategy),
        "workers": workers,
        "replicas": replicas,
        "batch_size": batch_size,
        "global_batch_size": global_batch,
        "precision": policy,
        "jit_compile": jit,
        "steps_per_execution": spe,
        "steps_per_epoch": steps_per_epoch,
        "cache": cache,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "dropout": dropout,
        "early_stopping_patience": early_stopping_patience,
        "fine_tune_layers": fine_tune_layers if fine_tune else 0,
        "fine_tune_epochs": fine_tune_epochs if fine_tune else 0,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "warmup_epochs": warmup_epochs,
        "initial_model": initial_model,
        "initial_epoch": start_epoch,
        "phase_boundary": phase_boundary,
        "seed": seed,
    }
    page = curves.render_html(
        history,
        title=f"{backbone} training curves",
        phase_boundary=phase_boundary,
        best_epoch=best + 1,
        facts={
            "image size": image_size,
            "batch": f"{batch_size} x {replicas} replica(s)",
            "precision": policy,
            "best epoch": best + 1,
            "val_accuracy": f"{metrics['val_accuracy']:.4f}",
        },
    )
    save_model_dir(
        final,
        own_model_dir,
        labels,
        {
            "backbone": backbone,
            "weights": weights,
            "image_size": image_size,
            "training": settings,
            "history": history,
            "metrics": metrics,
        },
    )
    io.write_text(io.join(own_model_dir, CURVES_FILE), page)
    write_history_csv(io.join(own_model_dir, HISTORY_FILE), history)
    if chief:
        if curves_path:
            io.write_text(curves_path, page)
        for name in ("phase1", "phase2", PHASE_ONE_MARKER, PHASE_ONE_WEIGHTS, HISTORY_FILE):
            io.remove(io.join(backup_dir, name))
        if io.isdir(backup_dir) and not io.listdir(backup_dir):
            io.remove(backup_dir)
    else:
        io.remove(own_model_dir)
        io.remove(own_backup_dir)
    log.info("trained %s: %s", backbone, json.dumps(metrics))
    return metrics


def write_history_csv(path: str, columns: dict[str, list[float]]) -> None:
    """Writes a history (per-key lists, as :func:`history_columns` makes) as CSV."""
    keys = ["epoch", *(key for key in columns if key != "epoch")]
    out = stdio.StringIO()
    writer = csv.writer(out)
    writer.writerow(keys)
    for i in range(len(columns["epoch"])):
        writer.writerow([columns[key][i] for key in keys])
    io.write_text(path, out.getvalue())
