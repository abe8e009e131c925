"""Each augmentation parameter changes the training input as documented, and evaluation
and serving input never; phase one's learning-rate schedules; class weights."""

import inspect
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.classification import schema
from components.common import preprocessing, schema as common_schema
from components.common.io import read_json
from components.create_tfrecords.beam_pipeline import run as create_tfrecords
from components.train import data, plan as plan_lib
from components.train.augmentation import Augmentation
from components.train.inputs import class_weights, train_class_counts

SIZE = 32
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


@pytest.fixture(scope="module")
def quadrant_dataset(tmp_path_factory) -> str:
    """48 square images, bright in their top-left quarter and dark elsewhere (each with
    a little noise, so none is a duplicate), in two classes."""
    root = tmp_path_factory.mktemp("quadrants")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        os.makedirs(root / "images" / label)
        for i in range(24):
            pixels = rng.integers(0, 30, (64, 64, 3)).astype(np.uint8)
            pixels[:32, :32] = 225 + rng.integers(0, 30, (32, 32, 3))
            Image.fromarray(pixels).save(root / "images" / label / f"{i}.jpg", quality=95)
    out = str(root / "dataset")
    create_tfrecords(
        output_dir=out, image_dir=str(root / "images"), train_fraction=0.8, valid_fraction=0.1
    )
    return out


def _training_images(dataset_dir: str, augmentation: Augmentation, count: int = 96):
    ds = data.make_dataset(
        dataset_dir, "train", SIZE, 16, training=True, seed=1, augmentation=augmentation
    )
    return np.concatenate([x.numpy() for x, _ in ds.take(count // 16)])


def _bright_quadrants(images: np.ndarray) -> set[str]:
    """Which quarter of each image is the bright one."""
    half = SIZE // 2
    means = np.stack(
        [
            images[:, :half, :half].mean(axis=(1, 2, 3)),
            images[:, :half, half:].mean(axis=(1, 2, 3)),
            images[:, half:, :half].mean(axis=(1, 2, 3)),
            images[:, half:, half:].mean(axis=(1, 2, 3)),
        ],
        axis=1,
    )
    return {QUADRANTS[i] for i in means.argmax(axis=1)}


# Every variation off but the one under test, so each shows on its own.
STILL = Augmentation.off()


def _only(**changed) -> Augmentation:
    return Augmentation(**{**STILL.__dict__, **changed})


@pytest.mark.parametrize(
    "flip, corners",
    [
        ("none", {"top_left"}),
        ("horizontal", {"top_left", "top_right"}),
        ("vertical", {"top_left", "bottom_left"}),
        ("both", set(QUADRANTS)),
    ],
)
def test_flip_mirrors_along_the_axes_it_names(quadrant_dataset, flip, corners):
    images = _training_images(quadrant_dataset, _only(flip=flip))
    assert _bright_quadrants(images) == corners


def test_right_angle_rotation_turns_images_by_quarter_turns(quadrant_dataset):
    images = _training_images(quadrant_dataset, _only(right_angle_rotation=True))
    assert _bright_quadrants(images) == set(QUADRANTS)
    # A quarter turn of a square image moves pixels, it does not blur them.
    still = _training_images(quadrant_dataset, STILL)
    assert np.allclose(np.sort(images.ravel())[::97], np.sort(still.ravel())[::97], atol=2.0)


def test_small_rotations_tilt_but_keep_the_image_upright(quadrant_dataset):
    still = _training_images(quadrant_dataset, STILL)
    tilted = _training_images(quadrant_dataset, _only(rotation_degrees=12.0))
    assert _bright_quadrants(tilted) == {"top_left"}
    differences = np.abs(tilted - still).mean(axis=(1, 2, 3))
    assert (differences > 1.0).mean() > 0.8  # nearly every image is turned a little


def test_random_crop_area_and_whole_images(quadrant_dataset):
    still = _training_images(quadrant_dataset, STILL)
    # Without a crop, training sees exactly what evaluation and serving see.
    evaluation = np.concatenate(
        [x.numpy() for x, _ in data.make_dataset(quadrant_dataset, "train", SIZE, 16)]
    )
    assert {img.tobytes() for img in still} <= {img.tobytes() for img in evaluation}
    # Crops of a quarter of the area zoom in: many show only dark ground or mostly the
    # bright quarter, which no whole image does (each is a quarter bright).
    cropped = _training_images(
        quadrant_dataset, _only(crop_area_min=0.2, crop_area_max=0.3, crop_aspect_ratio_max=1.1)
    )
    whole_means, crop_means = still.mean(axis=(1, 2, 3)), cropped.mean(axis=(1, 2, 3))
    assert whole_means.min() > 50 and whole_means.max() < 110
    assert (crop_means < 40).mean() > 0.2 and (crop_means > 130).mean() > 0.05


def test_brightness_and_contrast_vary_each_image_by_at_most_their_strength(quadrant_dataset):
    still = _training_images(quadrant_dataset, STILL)
    brighter = _training_images(quadrant_dataset, _only(brightness=0.1))
    shift = (brighter - still).mean(axis=(1, 2, 3))
    assert shift.std() > 5 and np.abs(shift).max() <= 0.1 * 255 + 1
    contrasted = _training_images(quadrant_dataset, _only(contrast=0.3))
    spread = contrasted.std(axis=(1, 2, 3)) / still.std(axis=(1, 2, 3))
    assert spread.min() >= 0.69 and spread.max() <= 1.31 and spread.std() > 0.05


def test_evaluation_and_serving_never_see_augmentation(quadrant_dataset):
    # The evaluation dataset and the serving preprocessing take no augmentation at all.
    assert "augmentation" in inspect.signature(data.make_dataset).parameters
    wild = Augmentation(flip="both", rotation_degrees=30, right_angle_rotation=True)
    plain = data.make_dataset(quadrant_dataset, "valid", SIZE, 4)
    asked = data.make_dataset(quadrant_dataset, "valid", SIZE, 4, augmentation=wild)
    for (a, _), (b, _) in zip(plain, asked, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    record = common_schema.read_records(common_schema.shard_files(quadrant_dataset, "valid"))
    encoded = next(iter(schema.parse_examples(tf.stack(list(record)))[schema.ENCODED]))
    first = next(iter(plain))[0][0].numpy()
    np.testing.assert_array_equal(first, preprocessing.decode_and_resize(encoded, SIZE).numpy())


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"flip": "diagonal"}, "flip must be one of"),
        ({"crop_area_min": 0.0}, "area range"),
        ({"crop_area_min": 0.9, "crop_area_max": 0.5}, "area range"),
        ({"crop_aspect_ratio_max": 0.5}, "crop_aspect_ratio_max"),
        ({"rotation_degrees": 200}, "rotation_degrees"),
        ({"brightness": 2}, "brightness"),
    ],
)
def test_augmentation_settings_are_checked(changes, error):
    with pytest.raises(ValueError, match=error):
        Augmentation(**changes)


# --- phase one's learning rate --------------------------------------------------------------


def _rate_at(rate, step: int) -> float:
    return float(rate(step)) if callable(rate) else float(rate)


def test_cosine_schedule_warms_up_then_decays_to_zero_by_the_last_epoch():
    phase = plan_lib._phase_one(10, 0.01, "cosine", 2, steps_per_epoch=5)
    per_epoch = [_rate_at(phase.learning_rate, 5 * epoch) for epoch in range(11)]
    assert per_epoch[0] == pytest.approx(0.0)
    assert per_epoch[1] == pytest.approx(0.005) and per_epoch[2] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(per_epoch[2:], per_epoch[3:], strict=False))
    assert per_epoch[6] == pytest.approx(0.005, rel=1e-3)  # half way down the cosine
    assert per_epoch[10] == pytest.approx(0.0, abs=1e-9)
    assert phase.peak_learning_rate == 0.01 and phase.schedule == "cosine"


def test_constant_and_plateau_schedules_start_at_the_rate():
    for schedule in ("constant", "plateau"):
        phase = plan_lib._phase_one(10, 0.01, schedule, 2, steps_per_epoch=5)
        assert phase.learning_rate == 0.01 and phase.warmup_epochs == 0
    with pytest.raises(ValueError, match="learning_rate_schedule must be one of"):
        plan_lib._phase_one(10, 0.01, "step", 2, steps_per_epoch=5)


def test_plateau_halves_the_rate_when_validation_loss_stalls():
    from components.train.phases import _phase_callbacks
    from components.train.resume import make_run_dirs

    dirs = make_run_dirs("/tmp/unused-model", "/tmp/unused-backup", chief=False)
    phase = plan_lib._phase_one(10, 0.01, "plateau", 0, steps_per_epoch=5)
    found = [
        c
        for c in _phase_callbacks(phase, dirs, None, [], 4, first_epoch=0)
        if isinstance(c, keras.callbacks.ReduceLROnPlateau)
    ]
    assert len(found) == 1 and found[0].factor == 0.5 and found[0].patience == 2
    cosine = plan_lib._phase_one(10, 0.01, "cosine", 0, steps_per_epoch=5)
    assert not [
        c
        for c in _phase_callbacks(cosine, dirs, None, [], 4, first_epoch=0)
        if isinstance(c, keras.callbacks.ReduceLROnPlateau)
    ]


def test_early_stopping_watches_the_second_half_of_a_cosine_phase():
    from components.train.callbacks import ResumableEarlyStopping, stopped_early
    from components.train.phases import _phase_callbacks
    from components.train.resume import make_run_dirs

    dirs = make_run_dirs("/tmp/unused-model", "/tmp/unused-backup", chief=False)

    def early_stopping(schedule: str, first_epoch: int) -> ResumableEarlyStopping:
        phase = plan_lib._phase_one(10, 0.01, schedule, 1, steps_per_epoch=5)
        (found,) = [
            c
            for c in _phase_callbacks(phase, dirs, None, [], 2, first_epoch=first_epoch)
            if isinstance(c, ResumableEarlyStopping)
        ]
        return found

    assert early_stopping("cosine", 0).start_from_epoch == 5
    assert early_stopping("cosine", 3).start_from_epoch == 8  # counted as fit counts
    assert early_stopping("constant", 3).start_from_epoch == 3
    assert early_stopping("plateau", 0).start_from_epoch == 0

    # A validation loss that rises at the start, at a high rate, does not end the phase.
    callback = early_stopping("cosine", 0)
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.on_train_begin()
    losses = [1.0, 1.2, 1.3, 1.4, 1.5, 0.9, 0.8, 0.85, 0.86]
    stops = []
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        stops.append(callback.model.stop_training)
    assert stops == [False] * 8 + [True]  # patience 2 from epoch 5's best (epoch 6)
    # The resumed run's check agrees with Keras.
    assert stopped_early(losses, 2, skip=5) and not stopped_early(losses[:8], 2, skip=5)
    assert stopped_early(losses[:4], 2)  # without the skip the rise would have stopped it


# --- class balance --------------------------------------------------------------------------


def test_balanced_class_weights_make_each_class_weigh_the_same():
    counts = {"common": 60, "rare": 20, "none": 0}
    weights = class_weights(counts, "balanced")
    assert weights == {0: pytest.approx(80 / 180), 1: pytest.approx(80 / 60), 2: 1.0}
    assert weights[0] * 60 == pytest.approx(weights[1] * 20)
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="class_weight must be one of"):
        class_weights(counts, "inverse")


def test_class_weights_reach_fit_and_counts_reach_the_metrics(
    quadrant_dataset, tmp_path, monkeypatch
):
    from components.train.training import train

    seen = []
    fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(kwargs.get("class_weight"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    result = train(
        quadrant_dataset,
        str(tmp_path / "model"),
        backbone="MobileNetV3Small",
        weights="none",
        image_size=SIZE,
        batch_size=8,
        epochs=1,
        class_weight="balanced",
    )
    counts = train_class_counts(quadrant_dataset, ["a", "b"])
    assert (
        result["train_images"]
        == counts
        == read_json(os.path.join(quadrant_dataset, "stats.json"))["classes"]["train"]
    )
    assert seen == [class_weights(counts, "balanced")]
    config = read_json(str(tmp_path / "model" / "training_config.json"))["training"]
    assert config["class_weight"] == "balanced"
    assert config["augmentation"]["flip"] == "horizontal"
