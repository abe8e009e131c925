"""The tune stage on the vertex target: a Vertex AI hyperparameter tuning job (GCPC's
HyperparameterTuningJobRunOp) whose trials run train's image, or, with no trials, the
tune step that returns the given values without training.

    vertex_tuning_spec -> HyperparameterTuningJobRunOp -> best_vertex_trial   (trials > 0)
    tune (trials = 0: the given values, nothing trained)                      (else)

Either way :func:`tune_on_vertex` returns the values train takes; the best values and
the best score are the Metrics artifact of the step that chose them.
"""

from __future__ import annotations

from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
    HyperparameterTuningJobRunOp,
)
from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from components.images import stage_image
from components.tune.component import best_vertex_trial, tune, vertex_tuning_spec
from components.tune.space import TUNED
from pipelines.tasks import stage_task


def _tuning_job(
    dataset,
    tuning: dict,
    machine_type,
    accelerator_type,
    accelerator_count,
    project,
    location,
    parallel_trials,
    algorithm: str,
    rules: dict,
) -> dsl.PipelineTask:
    """The tuning job and the steps around it; returns the step with the best values."""
    spec = stage_task(
        vertex_tuning_spec,
        "export",  # it only computes the job's spec
        dataset=dataset,
        tuning=tuning,
        image=stage_image("train"),
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
    )
    job = HyperparameterTuningJobRunOp(
        display_name="tune",
        base_output_directory=spec.outputs["base_output_directory"],
        worker_pool_specs=spec.outputs["worker_pool_specs"],
        study_spec_metrics=spec.outputs["study_spec_metrics"],
        study_spec_parameters=spec.outputs["study_spec_parameters"],
        max_trial_count=tuning["trials"],
        parallel_trial_count=parallel_trials,
        study_spec_algorithm=algorithm,
        project=project,
        location=location,
        **rules,
    )
    return stage_task(
        best_vertex_trial,
        "deploy",  # it only calls the Vertex AI API: the image with its SDK
        gcp_resources=job.outputs["gcp_resources"],
        fixed=spec.outputs["fixed"],
        objective=tuning.get("objective", "val_accuracy"),
    )


def tune_on_vertex(
    dataset,
    tuning: dict,
    machine_type,
    accelerator_type,
    accelerator_count,
    project,
    location,
    parallel_trials=1,
    algorithm: str = "ALGORITHM_UNSPECIFIED",
    *,
    rules: dict,
) -> dict:
    """The tune stage on Vertex AI; returns the values for train's arguments.

    Call it in the pipeline's body and pass what it returns to train::

        tuned = tune_on_vertex(dataset, tuning, machine_type, accelerator_type,
                               accelerator_count, project, location, rules=rules)
        train(..., **tuned)   # learning_rate, dropout, crop_area_min, fine_tune_layers

    Args:
        dataset: create_tfrecords' Dataset output.
        tuning: The tune component's arguments but ``dataset`` (pipeline parameters or
            constants): ``trials`` (a pipeline parameter: the branch is chosen at run
            time; an int: at compile time), ``objective``, the four values train gets
            when a setting is not searched, the ranges, and train's settings that every
            trial shares. Those left out take the tune component's defaults.
        machine_type: Each trial's machine type, e.g. g2-standard-8.
        accelerator_type: Each trial's accelerator, e.g. NVIDIA_L4;
            ACCELERATOR_TYPE_UNSPECIFIED with accelerator_count 0 for none.
        accelerator_count: Accelerators per trial.
        project: The Google Cloud project of the tuning job.
        location: Its region.
        parallel_trials: Trials Vertex AI runs at once (fewer lets its Bayesian
            optimisation learn from more finished trials).
        algorithm: The study's algorithm: "ALGORITHM_UNSPECIFIED" (Vertex AI's
            default, Bayesian optimisation), "RANDOM_SEARCH" or "GRID_SEARCH".
        rules: The project's rules the tuning job runs under
            (``vertex_target.job_rules``: its service account, KMS key and network).

    Returns:
        ``learning_rate``, ``dropout``, ``crop_area_min`` and ``fine_tune_layers``:
        pipeline channels, the best trial's values with trials, else the given ones.
    """
    search = (
        dataset,
        tuning,
        machine_type,
        accelerator_type,
        accelerator_count,
        project,
        location,
        parallel_trials,
        algorithm,
        rules,
    )
    trials = tuning.get("trials", 0)
    if not isinstance(trials, PipelineChannel):
        task = (
            _tuning_job(*search) if trials else stage_task(tune, "train", dataset=dataset, **tuning)
        )
        return {name: task.outputs[name] for name in TUNED}
    with dsl.If(trials > 0, name="vertex-hyperparameter-tuning"):
        searched = _tuning_job(*search)
    with dsl.Else(name="no-hyperparameter-tuning"):
        given = stage_task(tune, "train", dataset=dataset, **tuning)
    return {name: dsl.OneOf(searched.outputs[name], given.outputs[name]) for name in TUNED}
