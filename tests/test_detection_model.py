"""Tests of the detector: CenterNet targets and decoding (a perfect prediction decodes to the
true boxes), the losses against hand-computed values, training on generated records, and
the export's Object Detection API signatures, loaded with tf.saved_model.load and called
in graph mode."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.common import schema as common_schema
from components.detection import centernet, create_tfrecords, export, schema, training
from pipelines import sample_detection_data


def perfect_outputs(boxes, classes, num_classes=3, image_size=128):
    targets = centernet.encode_targets(
        tf.constant(boxes, tf.float32), tf.constant(classes), num_classes, image_size
    )
    return {
        "heatmap": targets["heatmap"][None],
        "size": targets["size"][None, ..., :2],
        "offset": targets["offset"][None, ..., :2],
    }


def test_a_perfect_prediction_decodes_to_the_true_boxes():
    boxes = [[0.1, 0.2, 0.5, 0.6], [0.6, 0.6, 0.9, 0.95], [0.12, 0.22, 0.48, 0.61]]
    found = centernet.decode(perfect_outputs(boxes, [0, 2, 1]), score_threshold=0.5)
    assert int(found["num_detections"][0]) == 3
    got = sorted(
        zip(
            found["classes"][0, :3].numpy().tolist(),
            found["boxes"][0, :3].numpy().tolist(),
            strict=True,
        )
    )
    expected = sorted(zip([0, 2, 1], boxes, strict=True))
    for (c, b), (ce, be) in zip(got, expected, strict=True):
        assert c == ce
        np.testing.assert_allclose(b, be, atol=1e-5)
    # Past num_detections: zeros, and every box inside [0, 1].
    assert float(tf.reduce_sum(tf.abs(found["boxes"][0, 3:]))) == 0.0
    assert float(tf.reduce_max(found["scores"][0, 3:])) == 0.0
    assert found["multiclass_scores"].shape == (1, 100, 3)


def test_overlapping_boxes_of_one_class_are_suppressed_not_of_two():
    two = [[0.1, 0.1, 0.6, 0.6], [0.12, 0.1, 0.62, 0.6]]
    same = centernet.decode(perfect_outputs(two, [1, 1]), score_threshold=0.5, iou_threshold=0.6)
    assert int(same["num_detections"][0]) == 1
    other = centernet.decode(perfect_outputs(two, [1, 2]), score_threshold=0.5, iou_threshold=0.6)
    assert int(other["num_detections"][0]) == 2


def test_an_image_without_objects_has_empty_targets_and_no_detection():
    targets = centernet.encode_targets(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 3, 64)
    assert (
        targets["heatmap"].shape == (16, 16, 3) and float(tf.reduce_sum(targets["heatmap"])) == 0.0
    )
    assert float(tf.reduce_sum(targets["size"])) == 0.0
    empty = {
        k: v
        for k, v in perfect_outputs(
            np.zeros([0, 4]), np.zeros([0], np.int32), image_size=64
        ).items()
    }
    assert int(centernet.decode(empty, score_threshold=0.1)["num_detections"][0]) == 0


def test_the_losses_by_hand():
    y_true = np.zeros([1, 2, 2, 1], np.float32)
    y_true[0, 0, 0, 0] = 1.0  # one object
    y_true[0, 0, 1, 0] = 0.5
    y_pred = np.full([1, 2, 2, 1], 0.2, np.float32)
    positive = -math.log(0.2) * 0.8**2
    negatives = -math.log(0.8) * 0.2**2 * (0.5**4 + 1 + 1)
    assert float(centernet.focal_loss(y_true, y_pred)[0]) == pytest.approx(
        positive + negatives, rel=1e-5
    )
    target = np.zeros([1, 2, 2, 3], np.float32)
    target[0, 1, 1] = [0.3, 0.4, 1.0]
    prediction = np.full([1, 2, 2, 2], 0.1, np.float32)
    assert float(centernet.masked_l1(target, prediction)[0]) == pytest.approx(0.2 + 0.3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_model")
    sample = sample_detection_data.generate(str(root / "sample"), images=48)
    dataset = str(root / "dataset")
    create_tfrecords.run(dataset, voc_dir=sample.voc_dir)
    model_dir = str(root / "model")
    config = training.train(
        dataset, model_dir, image_size=64, batch_size=8, epochs=3, early_stopping_patience=0
    )
    export_dir = str(root / "export")
    meta = export.export_detector(model_dir, export_dir, max_detections=20, score_threshold=0.0)
    return sample, dataset, model_dir, config, export_dir, meta


def test_training_writes_a_model_directory_and_learns(trained):
    sample, dataset, model_dir, config, _, _ = trained
    assert config["epochs_run"] == 3 and config["labels"] == list(sample.labels)
    for name in ("model.keras", "labels.txt", "training_config.json", "history.csv"):
        assert Path(model_dir, name).exists()
    rows = Path(model_dir, "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(row.split(",")[header.index("loss")]) for row in rows[1:]]
    assert losses[-1] < losses[0]  # The loss falls from its start.


def test_training_rejects_what_cannot_work(trained, tmp_path):
    _, dataset, *_ = trained
    with pytest.raises(ValueError, match="multiple of 32"):
        training.train(dataset, str(tmp_path / "m"), image_size=100)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        training.train(dataset, str(tmp_path / "m"), batch_size=10_000)


def _check_outputs(out: dict, batch: int, max_detections: int, labels: list[str]):
    assert set(out) == set(export.OUTPUT_NAMES)
    assert out["detection_boxes"].shape == (batch, max_detections, 4)
    for name in ("detection_boxes", "detection_classes", "detection_scores", "num_detections"):
        assert out[name].dtype == tf.float32, name
    boxes = out["detection_boxes"].numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert np.all(boxes[..., 2] >= boxes[..., 0]) and np.all(boxes[..., 3] >= boxes[..., 1])
    for i in range(batch):
        n = int(out["num_detections"][i])
        classes = out["detection_classes"][i].numpy()
        assert 0 <= n <= max_detections
        assert np.all(classes[:n] >= 1) and np.all(classes[n:] == 0)
        scores = out["detection_scores"][i].numpy()
        assert np.all(np.diff(scores[:n]) <= 1e-6)  # highest first
        names = [v.decode() for v in out["detection_labels"][i].numpy()]
        assert names[:n] == [labels[int(c) - 1] for c in classes[:n]]
        assert set(names[n:]) <= {""}
    assert out["detection_multiclass_scores"].shape == (batch, max_detections, len(labels))


def test_the_export_answers_with_the_object_detection_apis_signatures(trained):
    sample, dataset, _, _, export_dir, meta = trained
    labels = list(sample.labels)
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {
        "serving_default",
        "image_tensor",
        "tf_example",
        "edge_detect",
    }
    serving = loaded.signatures["serving_default"]
    assert list(serving.structured_input_signature[1]) == ["inputs"]
    images = sorted(sample.boxes)[:2]  # two sizes in one batch
    encoded = tf.constant([Path(p).read_bytes() for p in images])
    from_bytes = serving(inputs=encoded)
    _check_outputs(from_bytes, 2, 20, labels)
    pixels = tf.io.decode_jpeg(encoded[0], channels=3)[None]
    from_pixels = loaded.signatures["image_tensor"](input_tensor=pixels)
    _check_outputs(from_pixels, 1, 20, labels)
    np.testing.assert_allclose(
        from_pixels["detection_scores"][0], from_bytes["detection_scores"][0], atol=1e-5
    )
    records = list(common_schema.read_records(common_schema.shard_files(dataset, "train")).take(3))
    from_examples = loaded.signatures["tf_example"](input_tensor=tf.stack(records))
    _check_outputs(from_examples, 3, 20, labels)
    assert (
        schema.parse_label_map(Path(export_dir, "assets.extra", "label_map.pbtxt").read_text())
        == labels
    )
    assert Path(export_dir, "assets.extra", "labels.txt").read_text().split() == labels
    assert meta["outputs"] == list(export.OUTPUT_NAMES) and meta["input"] == "inputs"


def test_the_score_threshold_and_maximum_are_export_parameters(trained, tmp_path):
    sample, _, model_dir, *_ = trained
    strict = str(tmp_path / "strict")
    export.export_detector(model_dir, strict, max_detections=5, score_threshold=0.99)
    out = tf.saved_model.load(strict).signatures["serving_default"](
        inputs=tf.constant([Path(sorted(sample.boxes)[0]).read_bytes()])
    )
    assert out["detection_boxes"].shape == (1, 5, 4)
    n = int(out["num_detections"][0])
    assert np.all(out["detection_scores"][0, :n].numpy() >= 0.99)
    with pytest.raises(ValueError, match="max_detections"):
        export.export_detector(model_dir, str(tmp_path / "x"), max_detections=0)


# --------------------------------------------------------------------------- COCO metrics


def _truth() -> dict:
    from components.detection import coco
    from components.detection.boxes import Box

    images = [
        ("/a.jpg", 100, 100, [Box("cat", 0.1, 0.1, 0.5, 0.5)]),
        ("/b.jpg", 100, 200, [Box("dog", 0.5, 0.5, 1.0, 1.0), Box("cat", 0.0, 0.0, 0.25, 0.5)]),
    ]
    return coco.ground_truth(images, ["cat", "dog"])


def _as_detections(truth: dict, score: float = 0.9) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": score,
        }
        for a in truth["annotations"]
    ]


def test_coco_metrics_by_hand():
    from components.detection.evaluation import coco_metrics

    truth = _truth()
    perfect = coco_metrics(truth, _as_detections(truth))
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_50"] == pytest.approx(1.0)
    assert perfect["per_class_map"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert perfect["mar_100"] == pytest.approx(1.0)
    assert perfect["map_small"] == -1.0  # no object under 32x32 pixels: nothing to measure
    # A false positive ranked above the one true dog: precision 1/2 at every recall.
    dog = [d for d in _as_detections(truth) if d["category_id"] == 2]
    false = {"image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "score": 0.95}
    cats = [d for d in _as_detections(truth) if d["category_id"] == 1]
    scored = coco_metrics(truth, cats + dog + [false])
    assert scored["per_class_map"]["dog"] == pytest.approx(0.5)
    assert scored["per_class_map"]["cat"] == pytest.approx(1.0)
    assert scored["map"] == pytest.approx(0.75)
    # The cat of image 1 found 10 pixels off on each axis (IoU 0.39: missed at every
    # threshold), scored below the found one: recall stops at 1/2, precision 1 up to it,
    # so AP is 51 of COCO's 101 recall points.
    shifted = [dict(d, bbox=[20, 20, 40, 40], score=0.5) if d["image_id"] == 1 else d for d in cats]
    cat_ap = coco_metrics(truth, shifted + dog)["per_class_map"]["cat"]
    assert cat_ap == pytest.approx(51 / 101)
    nothing = coco_metrics(truth, [])
    assert nothing["map"] == 0.0 and nothing["per_class_map"] == {"cat": 0.0, "dog": 0.0}


def test_detections_of_the_export_in_coco_pixels():
    from components.detection.evaluation import detections_of

    outputs = {
        "num_detections": np.array([1.0, 0.0]),
        "detection_boxes": np.array([[[0.1, 0.2, 0.5, 0.6]], [[0, 0, 0, 0]]]),
        "detection_classes": np.array([[2.0], [0.0]]),
        "detection_scores": np.array([[0.7], [0.0]]),
    }
    (found,) = detections_of(outputs, [5, 6], [(100, 200), (10, 10)])
    assert (
        found["image_id"] == 5
        and found["category_id"] == 2
        and found["score"] == pytest.approx(0.7)
    )
    assert found["bbox"] == pytest.approx([40, 10, 80, 40])


def test_evaluating_the_trained_export(trained):
    from components.detection.evaluation import METRIC_NAMES, evaluate_detector

    _, dataset, _, _, export_dir, _ = trained
    metrics = evaluate_detector(export_dir, dataset, split="train")
    assert metrics["images"] > 0 and metrics["objects"] > 0
    for name in METRIC_NAMES:
        assert -1.0 <= metrics[name] <= 1.0
    assert set(metrics["per_class_map"]) == {"circle", "square", "triangle"}


def test_the_gate_and_the_champion(trained, tmp_path):
    """AP50 decides; the export faced with itself as champion passes with no margin; a
    champion trained on other labels is not compared, and the report says why."""
    from components.detection.evaluation import evaluate_export

    _, dataset, _, _, export_dir, _ = trained
    page = tmp_path / "boxes.html"
    report = evaluate_export(
        export_dir,
        dataset,
        "train",
        map50_threshold=0.0,
        champion_dir=export_dir,
        boxes_page_path=str(page),
        page_examples=3,
    )
    assert report["gate_metric"] == "map_50" and report["passed"] is True
    assert report["champion"]["map_50"] == pytest.approx(report["map_50"])
    assert page.read_text().count("<figure>") == 3
    failed = evaluate_export(export_dir, dataset, "train", map50_threshold=1.01)
    assert failed["passed"] is False and "champion" not in failed
    other_labels = tmp_path / "classifier"
    shutil.copytree(export_dir, other_labels)
    Path(other_labels, "assets.extra", "labels.txt").write_text("other\n")
    skipped = evaluate_export(
        export_dir, dataset, "train", map50_threshold=0.0, champion_dir=str(other_labels)
    )
    assert "differ" in skipped["champion"]["skipped"] and skipped["passed"] is True


def test_scale_and_crop_moves_and_drops_boxes():
    image = tf.zeros([100, 200, 3], tf.uint8)
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.2], [0.5, 0.5, 0.9, 0.9]])
    classes = tf.constant([0, 2])
    tf.random.set_seed(3)
    for _ in range(20):
        window, moved, kept = training.scale_and_crop(image, boxes, classes, 0.5, 1.5)
        h, w = window.shape[0], window.shape[1]
        assert 0.5 * 100 - 1 <= h <= 1.5 * 100 + 1 and abs(h / 100 - w / 200) < 0.02
        assert moved.shape[0] == kept.shape[0] <= 2
        values = moved.numpy()
        assert np.all(values >= 0.0) and np.all(values <= 1.0)
        assert np.all(values[:, 2] > values[:, 0]) and np.all(values[:, 3] > values[:, 1])
    # Zooming out by 2 with the image at the window's top left: boxes halve.
    window, moved, kept = training.scale_and_crop(image, boxes, classes, 2.0, 2.0)
    assert window.shape[:2] == (200, 400)
    assert kept.numpy().tolist() == [0, 2]
    box_sides = (moved[:, 2:] - moved[:, :2]).numpy()
    np.testing.assert_allclose(box_sides, (boxes[:, 2:] - boxes[:, :2]).numpy() / 2, atol=0.01)


def test_the_fpn_head_takes_the_backbones_stride_8_and_16_maps():
    from components.train.backbones import build_backbone

    for name in ("MobileNetV3Small", "EfficientNetB0"):
        backbone = build_backbone(name, 128, "none")
        maps = centernet.feature_maps(backbone)
        assert maps[8].shape[1] == 16 and maps[16].shape[1] == 8
        model = centernet.build_detector(backbone, 2)
        assert model.get_layer("up0_add") is not None and model.get_layer("up1_add") is not None
        assert model.output["heatmap"].shape[1:] == (32, 32, 2)


# KerasHub's RetinaNet: the preset path, from a preset folder written here (a stand-in for
# the COCO preset the cloud downloads: other classes, ImageNet normalization), so the
# head replacement, the preprocessor's scaling and the suite's export are exercised
# without a download.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def retinanet(trained, tmp_path_factory):
    import keras_hub

    from components.detection import keras_hub_detectors

    sample, dataset, *_ = trained
    root = tmp_path_factory.mktemp("retinanet")
    coco_like = keras_hub_detectors.build("retinanet", num_classes=5, image_size=64)
    coco_like.preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(
        image_converter=keras_hub.layers.RetinaNetImageConverter(
            image_size=(64, 64),
            scale=1 / 255,
            offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
        )
    )
    coco_like.preprocessor.image_converter.scale = [1 / (255 * s) for s in IMAGENET_STD]
    preset = str(root / "preset")
    coco_like.save_to_preset(preset)
    model_dir = str(root / "model")
    config = training.train(
        dataset,
        model_dir,
        family="retinanet",
        preset=preset,
        image_size=64,
        batch_size=8,
        epochs=2,
        learning_rate=0.0005,
        early_stopping_patience=0,
    )
    export_dir = str(root / "export")
    meta = export.export_detector(model_dir, export_dir, max_detections=20, score_threshold=0.0)
    return sample, dataset, model_dir, config, export_dir, meta


def test_retinanet_fine_tunes_a_preset_for_the_datasets_classes(retinanet):
    sample, _, model_dir, config, _, meta = retinanet
    assert config["family"] == "retinanet" and config["epochs_run"] == 2
    assert config["labels"] == list(sample.labels)
    # The preset's ImageNet normalization is what training and the export apply.
    assert config["input_scale"] == pytest.approx([1 / (255 * s) for s in IMAGENET_STD])
    assert config["input_offset"] == pytest.approx(
        [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    assert Path(model_dir, "model.keras").exists() and meta["family"] == "retinanet"


def test_retinanet_exports_the_object_detection_apis_contract(retinanet):
    from components.detection.evaluation import evaluate_detector

    sample, dataset, _, _, export_dir, _ = retinanet
    labels = list(sample.labels)
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {
        "serving_default",
        "image_tensor",
        "tf_example",
        "edge_detect",
    }
    images = sorted(sample.boxes)[:2]
    encoded = tf.constant([Path(p).read_bytes() for p in images])
    from_bytes = loaded.signatures["serving_default"](inputs=encoded)
    _check_outputs(from_bytes, 2, 20, labels)
    pixels = tf.io.decode_jpeg(encoded[0], channels=3)[None]
    from_pixels = loaded.signatures["image_tensor"](input_tensor=pixels)
    np.testing.assert_allclose(
        from_pixels["detection_scores"][0], from_bytes["detection_scores"][0], atol=1e-5
    )
    metrics = evaluate_detector(export_dir, dataset, split="train")
    assert metrics["images"] > 0 and set(metrics["per_class_map"]) == set(labels)


def test_retinanet_without_a_preset_is_a_small_random_model():
    from components.detection import keras_hub_detectors

    model = keras_hub_detectors.build("retinanet", num_classes=3, image_size=64)
    assert model.num_classes == 3 and model.count_params() < 10_000_000
    scale, offset = keras_hub_detectors.input_scaling(model)
    assert scale == pytest.approx([1 / 255] * 3) and offset == [0.0] * 3
    assert model.preprocessor is None


def test_the_family_and_its_preset_are_checked(trained, tmp_path):
    _, dataset, *_ = trained
    with pytest.raises(ValueError, match="family must be one of"):
        training.train(dataset, str(tmp_path / "m"), family="yolo")
    with pytest.raises(ValueError, match="preset is a KerasHub family"):
        training.train(dataset, str(tmp_path / "m"), preset="retinanet_resnet50_fpn_coco")


def test_mixed_precision_trains_and_exports_the_float32_contract(trained, tmp_path):
    """The precision setting is the classification stage's (components.train.hardware);
    a mixed-precision detector still answers float32 outputs."""
    sample, dataset, *_ = trained
    model_dir, export_dir = str(tmp_path / "model"), str(tmp_path / "export")
    config = training.train(
        dataset,
        model_dir,
        image_size=64,
        batch_size=8,
        epochs=1,
        precision="mixed_float16",
        early_stopping_patience=0,
    )
    assert config["precision"] == "mixed_float16" and config["replicas"] == 1
    export.export_detector(model_dir, export_dir, max_detections=20)
    loaded = tf.saved_model.load(export_dir)
    images = sorted(sample.boxes)[:2]
    out = loaded.signatures["serving_default"](
        inputs=tf.constant([Path(p).read_bytes() for p in images])
    )
    _check_outputs(out, 2, 20, list(sample.labels))
    with pytest.raises(ValueError, match="precision must be one of"):
        training.train(dataset, str(tmp_path / "m"), precision="float8")
