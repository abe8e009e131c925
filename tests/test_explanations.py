"""Integrated gradients on the exported model and the explanations HTML page."""

import base64
import csv
import io as stdio
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.classification.schema import ENCODED
from components.evaluate import explanations
from components.export.saved_model import export_saved_model
from components.train.training import save_model_dir
from pipelines.sample_data import CLASSES

SIZE = 16


def _smooth_model(seed: int = 3) -> keras.Model:
    """A tiny random classifier with smooth activations: the trapezoid rule's error then
    falls as 1/steps^2."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        len(CLASSES),
        activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=3.0),
    )(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> str:
    """An exported SavedModel of ``_smooth_model`` at 16 px with the sample labels."""
    base = tmp_path_factory.mktemp("tiny")
    save_model_dir(
        _smooth_model(),
        str(base / "model"),
        list(CLASSES),
        {"backbone": "tiny", "image_size": SIZE},
    )
    export_saved_model(str(base / "model"), str(base / "export"))
    return str(base / "export")


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)


def test_completeness_gap_shrinks_with_more_steps():
    """The attributions sum to f(x) - f(baseline) up to the trapezoid rule's error,
    which falls as 1/steps^2 for a smooth model; with black and white baselines too."""
    model = _smooth_model()
    image = _image()
    target = int(model(image[None]).numpy().argmax())
    gaps = []
    for steps in (2, 8, 32):
        (attributions,), (delta,) = explanations.integrated_gradients(
            model, image[None], [target], steps
        )
        assert attributions.shape == image.shape
        assert abs(delta) > 1e-3  # a non-trivial check
        relative = abs(attributions.sum() - delta) / abs(delta)
        assert relative <= 2.0 / steps**2
        gaps.append(relative)
    assert gaps[0] > gaps[1] > gaps[2]
    (attributions,), (delta,) = explanations.integrated_gradients(
        model, image[None], [target], 32, baselines=(0.0, 255.0), batch_size=5
    )
    assert abs(attributions.sum() - delta) <= 2.0 * abs(delta) / 32**2 + 1e-6


def test_attributions_lie_where_the_model_looks():
    """A model that sees only the left half of the image gives the right half none."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Cropping2D(((0, 0), (0, SIZE // 2)))(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    images = np.stack([_image(1), _image(2)])
    both, _ = explanations.integrated_gradients(model, images, [0, 1], steps=8)
    for attributions in both:
        left, right = attributions[:, : SIZE // 2], attributions[:, SIZE // 2 :]
        assert np.abs(right).max() == 0.0
        assert np.abs(left).sum() > 0.0
    heat = explanations.heatmap(attributions)
    assert heat[:, SIZE // 2 :].max() == 0.0 and heat.max() == pytest.approx(1.0)


def test_heatmap_colours_and_overlay_are_images():
    heat = explanations.heatmap(np.linspace(-1, 1, 4 * 4 * 3).reshape(4, 4, 3))
    assert heat.min() >= 0.0 and heat.max() == 1.0
    colours = explanations.colorize(heat)
    assert colours.shape == (4, 4, 3) and colours.dtype == np.uint8
    assert colours[heat == heat.max()].tolist()[0] == [252, 255, 164]
    blended = explanations.overlay(np.full((4, 4, 3), 200.0), heat)
    assert blended.shape == (4, 4, 3) and blended.dtype == np.uint8
    assert explanations.heatmap(np.zeros((4, 4, 3))).max() == 0.0


def _test_labels(dataset_dir: str) -> list[str]:
    with open(os.path.join(dataset_dir, "manifests", "test.csv")) as f:
        return [row[1] for row in csv.reader(f) if row]


def test_explanations_of_the_served_model_and_their_page(tiny_export, tfrecord_dataset, tmp_path):
    """On the SavedModel: the sample spreads over classes, the predicted class and score
    are the served ones, completeness holds; the page shows every image and its labels."""
    from components.common.serving import load_signature

    # Enough steps that the trapezoid rule's error (about 1/steps^2 here) stays well
    # under 1% whichever images the URI hash puts in the test split.
    explained = explanations.explain_split(tiny_export, tfrecord_dataset, "test", 4, steps=96)
    present = set(_test_labels(tfrecord_dataset))
    assert len(explained) == 4
    first = [x.true_label for x in explained[: len(present)]]
    assert len(set(first)) == len(first)  # every class present before any repeats
    for x in explained:
        assert x.pixels.shape == (SIZE, SIZE, 3) and x.attributions.shape == (SIZE, SIZE, 3)
        # Relative to f(x) - f(b), plus an absolute floor: when that difference is near
        # 0 the path's ups and downs still leave a small (float32) remainder.
        assert abs(x.completeness_gap) <= 0.01 * abs(x.delta) + 1e-4
    # The explained class and score are those serving_default returns for the image.
    records = explanations.sample_examples(tfrecord_dataset, "test", 4, len(CLASSES))
    served = load_signature(tiny_export)(image_bytes=tf.stack([r[ENCODED] for r in records]))
    assert [s.decode() for s in served["label"].numpy()] == [x.predicted_label for x in explained]
    np.testing.assert_allclose(served["score"].numpy(), [x.score for x in explained], atol=1e-5)

    page = explanations.render_html(explained, steps=96)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 * len(explained)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    shown = Image.open(stdio.BytesIO(base64.b64decode(sources[0].split(",", 1)[1])))
    assert shown.size == (160, 160)  # 16 px enlarged 10x
    assert re.findall(r'class="true-label">([^<]+)<', page) == [x.true_label for x in explained]
    predicted = re.findall(r'class="predicted-label">([^ <]+)', page)
    assert predicted == [x.predicted_label for x in explained]
    assert len(re.findall(r'class="gap"', page)) == len(explained)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page


def test_write_explanations_and_the_page_when_off(tiny_export, tfrecord_dataset, tmp_path):
    path = str(tmp_path / "page" / "explanations.html")
    summary = explanations.write_explanations(
        path, tiny_export, tfrecord_dataset, examples=2, steps=8
    )
    assert summary["examples"] == 2 and summary["ig_steps"] == 8
    assert summary["baselines"] == [0.0]
    assert summary["max_abs_completeness_gap"] >= summary["mean_abs_completeness_gap"] >= 0
    assert Path(path).read_text().count("<img ") == 6

    summary = explanations.write_explanations(path, tiny_export, tfrecord_dataset, examples=0)
    assert summary["examples"] == 0 and "max_abs_completeness_gap" not in summary
    page = Path(path).read_text()
    assert "Explanations are off" in page and "<img" not in page
    with pytest.raises(ValueError, match="ig_steps"):
        explanations.write_explanations(path, tiny_export, tfrecord_dataset, steps=0)
