"""KFP components of the tune stage: the local search (KerasTuner) and, on the vertex
target, the two steps around a Vertex AI hyperparameter tuning job (its trial spec, and
the best trial's values as typed outputs)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("train"), install_kfp_package=False)
def tune(
    dataset: Input[Dataset],
    results: Output[Metrics],
    report: Output[HTML],
    search: Output[Artifact],
    trials: int = 0,
    objective: str = "val_accuracy",
    learning_rate: float = 0.001,
    dropout: float = 0.2,
    crop_area_min: float = 0.5,
    fine_tune_layers: int = 20,
    learning_rate_low: float = 0.0001,
    learning_rate_high: float = 0.01,
    dropout_low: float = 0.0,
    dropout_high: float = 0.5,
    crop_area_min_low: float = 0.25,
    crop_area_min_high: float = 1.0,
    fine_tune_layers_choices: list = [0, 20, 50, -1],  # noqa: B006 (KFP list default)
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    early_stopping_patience: int = 3,
    fine_tune_epochs: int = 5,
    fine_tune_learning_rate: float = 0.00001,
    warmup_epochs: int = 1,
    learning_rate_schedule: str = "cosine",
    class_weight: str = "none",
    augment: bool = True,
    flip: str = "horizontal",
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
    seed: int = 42,
) -> NamedTuple(
    "TunedSettings", learning_rate=float, dropout=float, crop_area_min=float, fine_tune_layers=int
):
    """Searches train's learning rate, dropout, augmentation strength and fine-tuned
    layers with KerasTuner (random search), each trial a whole training run; off (the
    given values, nothing trained) with trials 0.

    A trial trains with the settings below and its drawn values, and is scored by its
    kept epoch (the lowest validation loss, the model train would keep). Feed train's
    learning_rate, dropout, crop_area_min and fine_tune_layers from this step's outputs.

    Args:
        dataset: TFRecord dataset written by create_tfrecords.
        trials: Training runs the search makes at most; 0 turns tuning off.
        objective: What scores a trial: "val_accuracy" (higher is better) or
            "val_loss" (lower is better).
        learning_rate: Phase one's learning rate train gets when tuning is off or the
            setting is not searched; likewise dropout, crop_area_min and
            fine_tune_layers.
        dropout: Dropout when not searched.
        crop_area_min: Smallest crop share when not searched.
        fine_tune_layers: Fine-tuned backbone layers when not searched.
        learning_rate_low: Lowest learning rate a trial draws (log scale).
        learning_rate_high: Highest learning rate a trial draws; equal to the lowest
            fixes it.
        dropout_low: Lowest dropout a trial draws.
        dropout_high: Highest dropout a trial draws.
        crop_area_min_low: Lowest crop_area_min a trial draws (strongest augmentation).
        crop_area_min_high: Highest crop_area_min a trial draws, at most crop_area_max;
            not searched without augmentation.
        fine_tune_layers_choices: Fine-tuned layer counts a trial picks from (-1 all,
            0 no fine-tuning); searched with pretrained weights only.
        backbone: keras.applications backbone every trial trains.
        weights: "imagenet", "none" or a no-top weights file.
        image_size: Model input side, in pixels.
        batch_size: Images per batch on each replica.
        epochs: Epochs of each trial's phase one; fewer make a cheaper search.
        early_stopping_patience: Epochs without validation-loss improvement before a
            phase stops; 0 disables it.
        fine_tune_epochs: Epochs of each trial's phase two.
        fine_tune_learning_rate: Peak learning rate of phase two.
        warmup_epochs: Learning-rate warm-up epochs.
        learning_rate_schedule: "cosine", "constant" or "plateau".
        class_weight: "none" or "balanced".
        augment: Vary training images at random.
        flip: "none", "horizontal", "vertical" or "both".
        crop_area_max: Largest share of an image's area a random crop keeps.
        crop_aspect_ratio_max: Crops' width/height ratio bound.
        rotation_degrees: Random rotation within plus or minus this many degrees.
        right_angle_rotation: Also rotate by random multiples of 90 degrees.
        brightness: Random brightness shift, share of the pixel range.
        contrast: Random contrast factor within 1 plus or minus this.
        precision: "auto", "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: XLA: "auto", "true" or "false".
        steps_per_execution: Batches per compiled call; 0 picks.
        cache: Keep decoded images in memory after the first epoch.
        seed: Seed of every trial and of the search.

    Returns:
        results: The values train gets (learning_rate, dropout, crop_area_min,
            fine_tune_layers), trials (how many ran) and, after a search, the best
            trial's score as best_<objective>.
        report: The trials as a table, the best marked.
        search: trials.json (the search: ranges, each trial's values and scores) and
            each trial's model directory without its weights.
        learning_rate: The learning rate for train.
        dropout: The dropout for train.
        crop_area_min: The crop_area_min for train.
        fine_tune_layers: The fine_tune_layers for train.
    """
    from components.common import io
    from components.tune.tuning import TRIALS_PAGE, tune as run_tune

    output_dir = io.artifact_location(search)
    summary = run_tune(
        dataset_dir=io.artifact_location(dataset),
        output_dir=output_dir,
        trials=trials,
        objective=objective,
        learning_rate=learning_rate,
        dropout=dropout,
        crop_area_min=crop_area_min,
        fine_tune_layers=fine_tune_layers,
        learning_rate_low=learning_rate_low,
        learning_rate_high=learning_rate_high,
        dropout_low=dropout_low,
        dropout_high=dropout_high,
        crop_area_min_low=crop_area_min_low,
        crop_area_min_high=crop_area_min_high,
        fine_tune_layers_choices=fine_tune_layers_choices,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        early_stopping_patience=early_stopping_patience,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_epochs=warmup_epochs,
        learning_rate_schedule=learning_rate_schedule,
        class_weight=class_weight,
        augment=augment,
        flip=flip,
        crop_area_max=crop_area_max,
        crop_aspect_ratio_max=crop_aspect_ratio_max,
        rotation_degrees=rotation_degrees,
        right_angle_rotation=right_angle_rotation,
        brightness=brightness,
        contrast=contrast,
        precision=precision,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        cache=cache,
        seed=seed,
    )
    names = ("learning_rate", "dropout", "crop_area_min", "fine_tune_layers")
    for name in names:
        results.log_metric(name, summary[name])
    results.log_metric("trials", len(summary["trials"]))
    if summary["best_score"] is not None:
        results.log_metric(f"best_{objective}", summary["best_score"])
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(io.read_text(io.join(output_dir, TRIALS_PAGE)))
    return (
        float(summary["learning_rate"]),
        float(summary["dropout"]),
        float(summary["crop_area_min"]),
        int(summary["fine_tune_layers"]),
    )


# The next two run on the vertex target only, around GCPC's HyperparameterTuningJobRunOp
# (pipelines/vertex_tuning.py). The spec needs Keras' backbone names only: the export
# image (TensorFlow for CPUs) is enough; the best trial is read with the Vertex AI SDK,
# which the deploy image carries.
@dsl.component(base_image=stage_image("export"), install_kfp_package=False)
def vertex_tuning_spec(
    dataset: Input[Dataset],
    trial_outputs: Output[Artifact],
    tuning: dict,
    image: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
) -> NamedTuple(
    "VertexTuningSpec",
    worker_pool_specs=list,
    study_spec_parameters=list,
    study_spec_metrics=list,
    fixed=dict,
    base_output_directory=str,
):
    """The Vertex AI hyperparameter tuning job of the search that tuning asks for: its
    trials run train's image on the dataset, each with the fixed settings and the
    values Vertex AI draws.

    Args:
        dataset: TFRecord dataset written by create_tfrecords (on Cloud Storage).
        tuning: The tune step's parameters (trials, objective, the values and ranges,
            train's settings); those left out take tune's defaults.
        image: The train image the trials run.
        machine_type: Each trial's machine type, e.g. g2-standard-8.
        accelerator_type: Each trial's accelerator, e.g. NVIDIA_L4;
            ACCELERATOR_TYPE_UNSPECIFIED with accelerator_count 0 for none.
        accelerator_count: Accelerators per trial.

    Returns:
        trial_outputs: Where the trials write their model directories.
        worker_pool_specs: One trial's worker pool.
        study_spec_parameters: The searched ranges.
        study_spec_metrics: The objective and its goal.
        fixed: The tuned settings the search leaves alone, and their values.
        base_output_directory: trial_outputs' URI.
    """
    from components.tune.vertex import tuning_job_spec

    spec = tuning_job_spec(
        tuning,
        dataset.uri,
        image,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
    )
    return (
        spec["worker_pool_specs"],
        spec["study_spec_parameters"],
        spec["study_spec_metrics"],
        spec["fixed"],
        trial_outputs.uri,
    )


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def best_vertex_trial(
    gcp_resources: str,
    fixed: dict,
    objective: str,
    results: Output[Metrics],
) -> NamedTuple(
    "TunedSettings", learning_rate=float, dropout=float, crop_area_min=float, fine_tune_layers=int
):
    """The values train gets from a finished Vertex AI hyperparameter tuning job: its best
    succeeded trial's, and the fixed ones for the settings it did not search.

    Args:
        gcp_resources: The gcp_resources output of GCPC's HyperparameterTuningJobRunOp.
        fixed: The tuned settings the search left alone, and their values.
        objective: The metric the trials reported: "val_accuracy" (higher is better)
            or "val_loss" (lower is better).

    Returns:
        results: The values train gets, the trials the job ran and the best trial's
            score as best_<objective>.
        learning_rate: The learning rate for train.
        dropout: The dropout for train.
        crop_area_min: The crop_area_min for train.
        fine_tune_layers: The fine_tune_layers for train.
    """
    from components.tune.vertex import best_trial, read_tuning_job

    job = read_tuning_job(gcp_resources)
    best = best_trial(job, objective)
    values = {**fixed, **best["values"]}
    names = ("learning_rate", "dropout", "crop_area_min", "fine_tune_layers")
    for name in names:
        results.log_metric(name, values[name])
    results.log_metric("trials", len(job.get("trials", [])))
    results.log_metric(f"best_{objective}", best["score"])
    results.metadata["best_trial"] = best["trial"]
    return (
        float(values["learning_rate"]),
        float(values["dropout"]),
        float(values["crop_area_min"]),
        int(values["fine_tune_layers"]),
    )
