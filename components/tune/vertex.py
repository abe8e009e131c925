"""The tune stage on Vertex AI: a hyperparameter tuning job whose trials each run train
on the train image, and the best trial's values read back from the finished job.

- :func:`tuning_job_spec`: the job's study (the searched ranges, in the form GCPC's
  ``serialize_parameters`` and ``serialize_metrics`` give, built here without the Vertex
  SDK, which the image that runs it lacks) and its trial's worker pool: the train image
  running ``python -m components.tune.trial`` with every fixed setting as one of
  train's flags. Vertex AI appends each trial's values (``--learning_rate=0.003``).
- :func:`best_trial`: the best succeeded trial of the finished job, by the objective.

The search space and the objective are the local search's (``space``); the algorithm is
Vertex AI's (by default its Bayesian optimisation, which runs its trials in parallel).
"""

from __future__ import annotations

import json

from components.tune.space import TUNED, SearchSpace, check_objective

TRIAL_MODULE = "components.tune.trial"
# How Vertex AI draws each searched setting: a learning rate acts by orders of magnitude.
SCALES = {
    "learning_rate": "UNIT_LOG_SCALE",
    "dropout": "UNIT_LINEAR_SCALE",
    "crop_area_min": "UNIT_LINEAR_SCALE",
}
GOALS = {"max": "MAXIMIZE", "min": "MINIMIZE"}
# The search's own parameters (the tune component's); the rest are train's settings.
SEARCH_PARAMETERS = (
    "trials",
    "objective",
    *TUNED,
    "learning_rate_low",
    "learning_rate_high",
    "dropout_low",
    "dropout_high",
    "crop_area_min_low",
    "crop_area_min_high",
    "fine_tune_layers_choices",
)


def study_spec_parameters(ranges: dict[str, tuple]) -> list[dict]:
    """The study's ParameterSpecs for ``SearchSpace.ranges``.

    fine_tune_layers is categorical, its values strings: as a discrete (ordered) value
    -1, the whole backbone, would sit below 0, no fine-tuning.
    """
    specs = []
    for name, values in ranges.items():
        if name == "fine_tune_layers":
            specs.append(
                {
                    "parameter_id": name,
                    "categorical_value_spec": {"values": [str(int(v)) for v in values]},
                }
            )
        else:
            specs.append(
                {
                    "parameter_id": name,
                    "double_value_spec": {
                        "min_value": float(values[0]),
                        "max_value": float(values[1]),
                    },
                    "scale_type": SCALES[name],
                }
            )
    return specs


def study_spec_metrics(objective: str) -> list[dict]:
    """The study's MetricSpec: the objective, as each trial reports it, and its goal."""
    return [{"metric_id": objective, "goal": GOALS[check_objective(objective)]}]


def train_flags(settings: dict) -> list[str]:
    """``python -m components.train``'s flags for ``settings`` (training.train's names
    and values)."""
    flags = []
    for name, value in settings.items():
        if name == "augment":
            flags += [] if value else ["--no-augment"]
        elif isinstance(value, bool):
            flags += [f"--{name.replace('_', '-')}"] if value else []
        else:
            flags.append(f"--{name.replace('_', '-')}={value}")
    return flags


def _typed(value, default):
    """``value`` as the type of ``default``: a pipeline parameter inside a dict argument
    may reach the step as text (``"0.001"``, ``"false"``) or a JSON number (``10.0``)."""
    if isinstance(default, bool):
        return value.strip().lower() == "true" if isinstance(value, str) else bool(value)
    if isinstance(default, int):
        return int(float(value))
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple | list):
        values = json.loads(value) if isinstance(value, str) else value
        return tuple(int(float(v)) for v in values)
    return str(value)


def _trial_settings(tuning: dict, fixed: dict) -> dict:
    """train's settings that every trial shares: the tune stage's training settings and
    the tuned settings the search leaves fixed."""
    settings = {k: v for k, v in tuning.items() if k not in SEARCH_PARAMETERS}
    return {**settings, **fixed}


def tuning_job_spec(
    tuning: dict,
    dataset_uri: str,
    image: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
) -> dict:
    """What a Vertex AI hyperparameter tuning job needs for the search ``tuning`` asks.

    Args:
        tuning: The tune stage's parameters (``tuning.tune``'s, without its directories):
            the objective, the values, the ranges and train's settings. Those left out
            take ``tune``'s defaults.
        dataset_uri: The create_tfrecords dataset's gs:// URI.
        image: The train image the trials run.
        machine_type: Each trial's machine, e.g. ``g2-standard-8``.
        accelerator_type: Its accelerator, e.g. ``NVIDIA_L4`` (``ACCELERATOR_TYPE_UNSPECIFIED``
            with ``accelerator_count`` 0 for none).
        accelerator_count: Accelerators per trial.

    Returns:
        ``worker_pool_specs``, ``study_spec_parameters`` and ``study_spec_metrics`` for
        GCPC's HyperparameterTuningJobRunOp, and ``fixed``: the tuned settings the
        search leaves alone, with their values (what train gets for them).

    Raises:
        ValueError: for an unknown objective, an invalid or empty range, or nothing
            to search.
    """
    from components.common.cli import defaults
    from components.train.backbones import is_pretrained
    from components.tune.tuning import tune

    default = defaults(tune)
    unknown = set(tuning) - set(default)
    if unknown:
        raise ValueError(f"unknown tune settings: {sorted(unknown)}")
    tuning = {name: _typed(tuning.get(name, value), value) for name, value in default.items()}
    space = SearchSpace(
        **{
            name: tuning[name]
            for name in SEARCH_PARAMETERS
            if name.endswith(("_low", "_high", "_choices"))
        }
    )
    space.check(tuning["crop_area_max"])
    pretrained = is_pretrained(tuning["weights"])
    ranges = space.ranges(pretrained, tuning["augment"])
    if not ranges:
        raise ValueError("nothing to search: every range is a single value or does not apply")
    fixed = space.fixed(tuning, pretrained, tuning["augment"])
    settings = _trial_settings(tuning, fixed)
    args = [f"--dataset-dir={dataset_uri}", f"--objective={tuning['objective']}"]
    pool = {
        "machine_spec": {
            "machine_type": machine_type,
            "accelerator_type": accelerator_type,
            "accelerator_count": accelerator_count,
        },
        "replica_count": 1,
        "container_spec": {
            "image_uri": image,
            "command": ["python", "-m", TRIAL_MODULE],
            "args": args + train_flags(settings),
        },
    }
    return {
        "worker_pool_specs": [pool],
        "study_spec_parameters": study_spec_parameters(ranges),
        "study_spec_metrics": study_spec_metrics(tuning["objective"]),
        "fixed": fixed,
    }


def _value(name: str, value) -> float | int:
    return int(float(value)) if name == "fine_tune_layers" else float(value)


def best_trial(job: dict, objective: str) -> dict:
    """The best succeeded trial of a finished hyperparameter tuning job.

    Args:
        job: The HyperparameterTuningJob as a dict (proto field names, enum names).
        objective: The metric the trials reported; its direction decides.

    Returns:
        ``trial`` (its id), ``score`` and ``values``: the trial's searched settings.

    Raises:
        RuntimeError: when no trial succeeded with the metric.
    """
    sign = 1 if check_objective(objective) == "max" else -1
    scored = []
    for trial in job.get("trials", []):
        metrics = {
            m["metric_id"]: m["value"]
            for m in (trial.get("final_measurement") or {}).get("metrics", [])
        }
        if trial.get("state") != "SUCCEEDED" or objective not in metrics:
            continue
        values = {
            p["parameter_id"]: _value(p["parameter_id"], p["value"]) for p in trial["parameters"]
        }
        scored.append({"trial": trial["id"], "score": float(metrics[objective]), "values": values})
    if not scored:
        states = [t.get("state") for t in job.get("trials", [])]
        raise RuntimeError(
            f"no trial of {job.get('name', 'the tuning job')} succeeded with {objective}; "
            f"trial states: {states}"
        )
    return max(scored, key=lambda t: (sign * t["score"], -int(t["trial"])))


def tuning_job_name(gcp_resources: str) -> str:
    """The job's resource name, from GCPC's ``gcp_resources`` output."""
    for resource in json.loads(gcp_resources).get("resources", []):
        if resource.get("resourceType") == "HyperparameterTuningJob":
            # https://<region>-aiplatform.googleapis.com/v1/projects/.../hyperparameterTuningJobs/<id>
            return resource["resourceUri"].split("/v1/", 1)[1]
    raise ValueError(f"no HyperparameterTuningJob in gcp_resources: {gcp_resources}")


def read_tuning_job(gcp_resources: str, job_client=None) -> dict:
    """The finished job GCPC's HyperparameterTuningJobRunOp ran, as a dict.

    Args:
        gcp_resources: That op's ``gcp_resources`` output.
        job_client: A Vertex AI JobServiceClient; by default one for the job's region,
            with Application Default Credentials.
    """
    from google.cloud import aiplatform_v1

    name = tuning_job_name(gcp_resources)
    if job_client is None:
        region = name.split("/locations/", 1)[1].split("/", 1)[0]
        job_client = aiplatform_v1.JobServiceClient(
            client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"}
        )
    job = job_client.get_hyperparameter_tuning_job(name=name)
    return aiplatform_v1.HyperparameterTuningJob.to_dict(
        job, use_integers_for_enums=False, preserving_proto_field_name=True
    )
