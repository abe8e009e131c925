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

:func:`train` runs these steps; the pieces live in ``plan`` (strategy, precision,
batch and epoch sizes and the phases, fixed up front), ``inputs`` (the datasets),
``resume`` (the starting point, the run's directories and what a preempted attempt
left), ``phases`` (compile and ``fit`` of one phase) and ``history`` (the epoch log
across restarts and the metrics drawn from it).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import keras

from components.common import io, labels as label_io
from components.common.model_dir import CURVES_FILE, HISTORY_FILE, MODEL_FILE, save_model_dir
from components.train import backbones, curves, distribution, history, phases, resume
from components.train.augmentation import FLIPS, Augmentation
from components.train.hardware import JIT_COMPILE, PRECISIONS, dtype_policy
from components.train.history import EpochLog
from components.train.inputs import (
    CLASS_WEIGHTS,
    Datasets,
    class_weights,
    make_datasets,
    train_class_counts,
)
from components.train.plan import SCHEDULES, TrainingPlan, make_plan
from components.train.resume import ResumeState, RunDirs

log = logging.getLogger(__name__)

# The values of ``train``'s settings that name a choice (its command line's, and tune's).
CHOICES = {
    "learning_rate_schedule": SCHEDULES,
    "class_weight": CLASS_WEIGHTS,
    "flip": FLIPS,
    "precision": PRECISIONS,
    "jit_compile": JIT_COMPILE,
}


def _faster_batchnorm_statistics(model: keras.Model, momentum: float) -> None:
    """Lowers BatchNormalization momentum of a randomly initialised backbone.

    keras.applications builds BN layers with momentum 0.99-0.999, tuned for long
    ImageNet runs; a short run from scratch leaves their moving statistics near their
    initial values, and the model then predicts badly in inference mode.

    Every BatchNormalization layer of the supported backbones is one of their
    ``layers`` (none sits in a nested block), as ``backbones.unfreeze_top_layers``
    also relies on.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _build_model(
    backbone: str,
    num_classes: int,
    weights: str,
    dropout: float,
    initial_model: str,
    plan: TrainingPlan,
) -> tuple[keras.Model, keras.Model]:
    """The classifier to train and its backbone, ready for phase one: the backbone frozen
    if pretrained, else with faster BatchNormalization statistics; the weights of
    ``initial_model`` if one is given. Call it under the plan's dtype policy."""
    with plan.strategy.scope():
        model, base = backbones.build_classifier(
            backbone,
            num_classes,
            plan.image_size,
            "none" if initial_model else weights,
            dropout,
            pretrained=plan.pretrained,
        )
        if initial_model:
            phases.load_weights(model, io.join(initial_model, MODEL_FILE))
        if plan.pretrained:
            base.trainable = False
        else:
            _faster_batchnorm_statistics(base, momentum=0.9)
    return model, base


def _log_plan(backbone: str, plan: TrainingPlan) -> None:
    """Logs how the run trains."""
    log.info(
        "training %s at %d px: %s, %d replica(s) x %d images per batch, precision %s, "
        "XLA %s, %d step(s) per execution, %d steps per epoch",
        backbone,
        plan.image_size,
        distribution.strategy_name(plan.strategy),
        plan.replicas,
        plan.batch_size,
        plan.precision,
        "on" if plan.jit_compile else "off",
        plan.steps_per_execution,
        plan.steps_per_epoch,
    )


def _run_phase_one(
    model: keras.Model,
    plan: TrainingPlan,
    state: ResumeState,
    datasets: Datasets,
    dirs: RunDirs,
    epoch_log: EpochLog,
) -> int:
    """Phase one: the new head on the frozen backbone, or the whole network from random
    weights; skipped when a preempted attempt finished it.

    Returns:
        The epoch phase one ended at, where phase two starts.
    """
    if state.phase_one_end is not None:
        log.info(
            "phase 1 finished before a restart (epochs to %d): skipping it", state.phase_one_end
        )
        phases.load_weights(model, dirs.phase_one_weights)
        return state.phase_one_end
    phase = plan.phase_one
    if not phase.epochs:
        return plan.first_epoch
    log.info(
        "phase 1: %s, epochs %d-%d, learning rate %g",
        "new head on the frozen backbone" if plan.pretrained else "whole network",
        plan.first_epoch + 1,
        plan.first_epoch + phase.epochs,
        phase.peak_learning_rate,
    )
    phases.run_phase(model, phase, plan.first_epoch, plan, datasets, dirs, epoch_log)
    phase_one_epochs = [e for e, r in epoch_log.rows().items() if r.get("phase") == 1]
    end_epoch = max(phase_one_epochs) + 1 if phase_one_epochs else plan.first_epoch
    if plan.phase_two is not None:
        # Fine-tuning starts from phase one's best epoch, and so does a restart.
        phases.restore_best_weights(model, dirs)
        resume.save_phase_one(model, dirs, plan.chief, end_epoch)
    return end_epoch


def _fine_tune(
    model: keras.Model,
    base: keras.Model,
    first_epoch: int,
    plan: TrainingPlan,
    datasets: Datasets,
    dirs: RunDirs,
    epoch_log: EpochLog,
) -> None:
    """Phase two: unfreezes the backbone's top layers (BatchNormalization stays frozen)
    and trains on from ``first_epoch`` at the plan's low learning rate."""
    phase = plan.phase_two
    unfrozen = backbones.unfreeze_top_layers(base, phase.unfreeze_layers)
    log.info(
        "phase 2: fine-tuning the top %s backbone layers (%d with weights; "
        "BatchNormalization frozen), epochs %d-%d, learning rate up to %g "
        "(%d warm-up epoch(s), cosine decay)",
        "all" if phase.unfreeze_layers < 0 else phase.unfreeze_layers,
        len(unfrozen),
        first_epoch + 1,
        first_epoch + phase.epochs,
        phase.peak_learning_rate,
        phase.warmup_epochs,
    )
    phases.run_phase(model, phase, first_epoch, plan, datasets, dirs, epoch_log)


def _float32_model(
    model: keras.Model,
    backbone: str,
    num_classes: int,
    dropout: float,
    learning_rate: float,
    plan: TrainingPlan,
) -> keras.Model:
    """A float32 copy of the trained classifier, compiled, to save."""
    # Saved in float32, whatever the training precision: what export and serving load.
    with dtype_policy("float32"):
        final, _ = backbones.build_classifier(
            backbone, num_classes, plan.image_size, "none", dropout, pretrained=plan.pretrained
        )
    final.set_weights(model.get_weights())
    # Compiled (optimizer built), so that loading the model finds the optimizer it saved.
    phases.compile_model(final, learning_rate, jit_compile=False, steps_per_execution=1)
    return final


def _training_record(
    plan: TrainingPlan,
    *,
    cache: bool,
    epochs: int,
    learning_rate: float,
    dropout: float,
    fine_tune_layers: int,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    warmup_epochs: int,
    learning_rate_schedule: str,
    class_weight: str,
    augmentation: Augmentation,
    initial_model: str,
    phase_boundary: int | None,
    seed: int,
) -> dict:
    """The settings the run trained with: the ``training`` of training_config.json."""
    fine_tune = plan.phase_two is not None
    return {
        "strategy": distribution.strategy_name(plan.strategy),
        "workers": plan.workers,
        "replicas": plan.replicas,
        "batch_size": plan.batch_size,
        "global_batch_size": plan.global_batch,
        "precision": plan.precision,
        "jit_compile": plan.jit_compile,
        "steps_per_execution": plan.steps_per_execution,
        "steps_per_epoch": plan.steps_per_epoch,
        "cache": cache,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "dropout": dropout,
        "early_stopping_patience": plan.early_stopping_patience,
        "fine_tune_layers": fine_tune_layers if fine_tune else 0,
        "fine_tune_epochs": fine_tune_epochs if fine_tune else 0,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "warmup_epochs": warmup_epochs,
        "learning_rate_schedule": learning_rate_schedule,
        "class_weight": class_weight,
        "augmentation": dataclasses.asdict(augmentation),
        "initial_model": initial_model,
        "initial_epoch": plan.first_epoch,
        "phase_boundary": phase_boundary,
        "seed": seed,
    }


def _write_model_dir(
    final: keras.Model,
    plan: TrainingPlan,
    dirs: RunDirs,
    *,
    backbone: str,
    weights: str,
    labels: list[str],
    settings: dict,
    columns: dict[str, list[float]],
    metrics: dict,
    phase_boundary: int | None,
    curves_path: str,
) -> None:
    """Writes this worker's model directory (see the module's doc) and, on the chief,
    the curves to ``curves_path`` too."""
    page = curves.render_html(
        columns,
        title=f"{backbone} training curves",
        phase_boundary=phase_boundary,
        best_epoch=metrics["best_epoch"],
        facts={
            "image size": plan.image_size,
            "batch": f"{plan.batch_size} x {plan.replicas} replica(s)",
            "precision": plan.precision,
            "best epoch": metrics["best_epoch"],
            "val_accuracy": f"{metrics['val_accuracy']:.4f}",
        },
    )
    save_model_dir(
        final,
        dirs.own_model_dir,
        labels,
        {
            "backbone": backbone,
            "weights": weights,
            "image_size": plan.image_size,
            "training": settings,
            "history": columns,
            "metrics": metrics,
        },
    )
    io.write_text(io.join(dirs.own_model_dir, CURVES_FILE), page)
    history.write_history_csv(io.join(dirs.own_model_dir, HISTORY_FILE), columns)
    if plan.chief and curves_path:
        io.write_text(curves_path, page)


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
    learning_rate_schedule: str = "cosine",
    class_weight: str = "none",
    augment: bool = True,
    flip: str = "horizontal",
    crop_area_min: float = 0.5,
    crop_area_max: float = 1.0,
    crop_aspect_ratio_max: float = 1.33,
    rotation_degrees: float = 0.0,
    right_angle_rotation: bool = False,
    brightness: float = 0.08,
    contrast: float = 0.15,
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
        model_dir: Where to write the model directory (model.keras, labels.txt,
            training_config.json, history and curves; see the module's doc).
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
            phase stops; 0 disables early stopping. A phase whose rate follows a cosine
            is watched over its second half only (its rate is still high before).
        fine_tune_layers: With pretrained weights, how many top layers of the backbone
            phase two unfreezes (BatchNormalization layers stay frozen); -1 for all of
            them, 0 for no phase two.
        fine_tune_epochs: Epochs of phase two; 0 for no phase two.
        fine_tune_learning_rate: Peak Adam learning rate of phase two.
        warmup_epochs: Epochs of linear learning-rate warm-up at the start of each phase
            whose rate follows a cosine (phase two always does).
        learning_rate_schedule: Phase one's learning rate: ``"cosine"`` (warm-up, then
            cosine decay to 0 by ``epochs``), ``"constant"``, or ``"plateau"`` (halved
            when the validation loss stops improving).
        class_weight: ``"none"`` or ``"balanced"``: each class weighs in the loss by
            the inverse of its share of the train split (unbalanced classes).
        augment: Vary the training images at random (False: none of the variations
            below, training sees what serving sees).
        flip: Random mirroring: ``"none"``, ``"horizontal"``, ``"vertical"`` or
            ``"both"`` (no flip for digits and text).
        crop_area_min: Smallest share of an image's area a random crop keeps; 1 (with
            ``crop_aspect_ratio_max`` 1) trains on whole images.
        crop_area_max: Largest share of the area a random crop keeps.
        crop_aspect_ratio_max: Crops' width/height ratio lies between its inverse and it.
        rotation_degrees: Random rotation within plus or minus this many degrees; 0 for
            none.
        right_angle_rotation: Also rotate by a random multiple of 90 degrees (satellite,
            microscope and texture images, which have no "up").
        brightness: Random brightness shift, up to this share of the pixel range.
        contrast: Random contrast factor within 1 plus or minus this.
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
        ``global_batch_size``, ``replicas`` and ``train_images`` (images of each class
        in the train split).
    """
    # The strategy first: MultiWorkerMirroredStrategy must come before other TF ops.
    tf_config = distribution.load_tf_config()
    strategy = distribution.make_strategy(tf_config)
    labels = label_io.read_labels(io.join(dataset_dir, label_io.LABELS_FILE))
    start = resume.read_starting_point(initial_model, initial_epoch, backbone, labels, image_size)
    augmentation = (
        Augmentation(
            flip=flip,
            crop_area_min=crop_area_min,
            crop_area_max=crop_area_max,
            crop_aspect_ratio_max=crop_aspect_ratio_max,
            rotation_degrees=rotation_degrees,
            right_angle_rotation=right_angle_rotation,
            brightness=brightness,
            contrast=contrast,
        )
        if augment
        else Augmentation.off()
    )
    counts = train_class_counts(dataset_dir, labels)
    weights_by_class = class_weights(counts, class_weight)
    plan = make_plan(
        strategy,
        tf_config,
        dataset_dir,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        early_stopping_patience=early_stopping_patience,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_epochs=warmup_epochs,
        learning_rate_schedule=learning_rate_schedule,
        precision=precision,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        first_epoch=start.epoch,
    )
    keras.utils.set_random_seed(seed)
    datasets = make_datasets(dataset_dir, plan, cache, seed, augmentation, weights_by_class)
    dirs = resume.make_run_dirs(model_dir, backup_dir or io.join(model_dir, "backup"), plan.chief)
    state = resume.read_resume_state(dirs.backup_dir, fine_tune=plan.phase_two is not None)
    epoch_log = EpochLog(dirs.epoch_log, state.prior_rows)

    with dtype_policy(plan.precision):
        model, base = _build_model(backbone, len(labels), weights, dropout, initial_model, plan)
        _log_plan(backbone, plan)
        phase_one_end = _run_phase_one(model, plan, state, datasets, dirs, epoch_log)
        if plan.phase_two is not None:
            _fine_tune(model, base, phase_one_end, plan, datasets, dirs, epoch_log)
        rows = epoch_log.rows()
        if not rows:
            raise RuntimeError("training ran no epoch")
        phases.restore_best_weights(model, dirs)

    final = _float32_model(model, backbone, len(labels), dropout, learning_rate, plan)
    metrics = history.run_metrics(rows, plan.steps_per_epoch, plan.global_batch, plan.replicas)
    metrics["train_images"] = counts
    phase_boundary = phase_one_end if metrics["phase_two_epochs"] else None
    settings = _training_record(
        plan,
        cache=cache,
        epochs=epochs,
        learning_rate=learning_rate,
        dropout=dropout,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_epochs=warmup_epochs,
        learning_rate_schedule=learning_rate_schedule,
        class_weight=class_weight,
        augmentation=augmentation,
        initial_model=initial_model,
        phase_boundary=phase_boundary,
        seed=seed,
    )
    _write_model_dir(
        final,
        plan,
        dirs,
        backbone=backbone,
        weights=weights,
        labels=labels,
        settings=settings,
        columns=history.history_columns({**start.rows, **rows}),
        metrics=metrics,
        phase_boundary=phase_boundary,
        curves_path=curves_path,
    )
    resume.remove_backups(dirs, plan.chief)
    log.info("trained %s: %s", backbone, json.dumps(metrics))
    return metrics
