"""Tests of create_tfrecords for detection: the same pictures given as Pascal VOC, COCO JSON
and Vertex AI JSON Lines give the same records (the Object Detection API's keys, boxes
where the shapes are), ground truth, manifests and counts; every bad annotation and image
is rejected with its reason and nothing good is lost; the KFP component under kfp local.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.common import schema as common_schema
from components.detection import coco, create_tfrecords as detection, schema
from pipelines import sample_detection_data

IMAGES = 30


def read_records(dataset_dir: str) -> dict[str, dict]:
    """uri -> the parsed record, every split, with its split."""
    records = {}
    for split in common_schema.SPLITS:
        for serialized in common_schema.read_records(common_schema.shard_files(dataset_dir, split)):
            parsed = {k: v.numpy() for k, v in schema.parse_example(serialized).items()}
            parsed["split"] = split
            records[parsed[schema.FILENAME].decode()] = parsed
    return records


def record_boxes(record: dict) -> list[tuple]:
    """``(class, xmin, ymin, xmax, ymax)`` of a record, sorted."""
    keys = (schema.XMIN, schema.YMIN, schema.XMAX, schema.YMAX)
    return sorted(
        (text.decode(), *(float(record[k][i]) for k in keys))
        for i, text in enumerate(record[schema.CLASS_TEXT])
    )


def read_errors(dataset_dir: str) -> dict[str, dict]:
    lines = Path(dataset_dir, common_schema.ERRORS_FILE).read_text().splitlines()
    return {e["uri"]: e for e in map(json.loads, lines)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return sample_detection_data.generate(str(tmp_path_factory.mktemp("det_sample")), images=IMAGES)


@pytest.fixture(scope="module")
def runs(sample, tmp_path_factory):
    """The sample run from each format."""
    root = tmp_path_factory.mktemp("det_runs")
    inputs = {
        "voc": {"voc_dir": sample.voc_dir},
        "coco": {"coco_json": sample.coco_json, "image_dir": sample.image_dir},
        "vertex": {"vertex_jsonl": sample.vertex_jsonl},
    }
    return {
        name: (str(root / name), detection.run(str(root / name), **kw))
        for name, kw in inputs.items()
    }


def test_the_three_formats_give_the_same_dataset(sample, runs):
    objects = sum(len(b) for b in sample.boxes.values())
    outputs = {name: read_records(out) for name, (out, _) in runs.items()}
    for name, (_, stats) in runs.items():
        assert stats["kept"] == IMAGES and stats["rejected"] == 0, name
        assert sum(stats["objects"].values()) == objects
        assert sum(stats["images_without_objects"].values()) == sum(
            not b for b in sample.boxes.values()
        )
        assert stats["labels"] == list(sample.labels)
        assert set(outputs[name]) == set(sample.boxes)
    for uri, boxes in sample.boxes.items():
        record = outputs["coco"][uri]
        width, height = int(record[schema.WIDTH]), int(record[schema.HEIGHT])
        expected = sorted(
            (c, x0 / width, y0 / height, x1 / width, y1 / height) for c, x0, y0, x1, y1 in boxes
        )
        for name in ("coco", "vertex", "voc"):
            got = record_boxes(outputs[name][uri])
            assert [g[0] for g in got] == [e[0] for e in expected]
            # VOC's corners are 1-based: its xmin and ymin are one pixel further in.
            tolerance = 1.01 / min(width, height) if name == "voc" else 1e-6
            np.testing.assert_allclose(
                [g[1:] for g in got], [e[1:] for e in expected], atol=tolerance
            )
            assert outputs[name][uri]["split"] == record["split"]  # the same hash of the URI


def test_records_are_the_object_detection_apis(sample, runs):
    out, stats = runs["voc"]
    for uri, record in read_records(out).items():
        example_keys = set(record) - {"split"}
        assert example_keys == set(schema.FEATURES)
        assert record[schema.SOURCE_ID].decode() == uri
        assert record[schema.FORMAT] == b"jpeg"
        image = Image.open(io.BytesIO(record[schema.ENCODED]))
        assert image.size == (int(record[schema.WIDTH]), int(record[schema.HEIGHT]))
        assert record[schema.ENCODED] == Path(uri).read_bytes()  # JPEG bytes kept as they are
        ids = [sample.labels.index(t.decode()) + 1 for t in record[schema.CLASS_TEXT]]
        assert record[schema.CLASS_LABEL].tolist() == ids  # from 1, as label_map.pbtxt
    assert schema.parse_label_map(Path(out, schema.LABEL_MAP_FILE).read_text()) == list(
        sample.labels
    )
    assert Path(out, "labels.txt").read_text().split() == list(sample.labels)


def test_coco_ground_truth_and_manifests_match_the_records(runs):
    out, stats = runs["coco"]
    records = read_records(out)
    for split in common_schema.SPLITS:
        truth = json.loads(Path(coco.coco_path(out, split)).read_text())
        in_split = {uri: r for uri, r in records.items() if r["split"] == split}
        assert sorted(i["file_name"] for i in truth["images"]) == sorted(in_split)
        assert len(truth["annotations"]) == stats["objects"][split]
        by_id = {i["id"]: i for i in truth["images"]}
        for ann in truth["annotations"]:
            image = by_id[ann["image_id"]]
            record = in_split[image["file_name"]]
            x, y, w, h = ann["bbox"]
            box = (
                x / image["width"],
                y / image["height"],
                (x + w) / image["width"],
                (y + h) / image["height"],
            )
            assert any(np.allclose(box, b[1:], atol=1e-6) for b in record_boxes(record))
        assert [c["name"] for c in truth["categories"]] == stats["labels"]
        manifest = common_schema.read_manifest(common_schema.manifest_path(out, split))
        assert {uri for uri, _ in manifest} == set(in_split)
        for uri, classes in manifest:
            assert classes.split() == sorted({t.decode() for t in in_split[uri][schema.CLASS_TEXT]})


# --------------------------------------------------------------------------- bad input


def _voc(folder: Path, name: str, size: tuple[int, int] | None, objects: list[tuple]) -> None:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objs = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{x}</xmax><ymax>{y}</ymax></bndbox></object>"
        for c, a, b, x, y in objects
    )
    xml = f"<annotation><filename>{name}</filename>{size_xml}{objs}</annotation>"
    (folder / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def corpus(sample, tmp_path_factory):
    """The sample's VOC folder plus one case of every kind of bad input, and the reason
    each bad image is rejected for."""
    voc = tmp_path_factory.mktemp("det_corpus") / "voc"
    shutil.copytree(sample.voc_dir, voc)
    images = voc / "JPEGImages"
    plain = Image.new("RGB", (80, 60), (90, 90, 90))
    (images / "plain.jpg").write_bytes(_jpeg(plain))
    expected = {}

    def bad(name: str, reason: str, objects, size=(80, 60), data: bytes | None = None):
        if data is not None:
            (images / name).write_bytes(data)
        elif not (images / name).exists():
            (images / name).write_bytes(
                _jpeg(Image.new("RGB", (80, 60), (len(name) * 7 % 255, 40, 40)))
            )
        _voc(voc, name, size, objects)
        expected[str(images / name)] = reason

    bad("inverted.jpg", "invalid_box", [("circle", 50, 10, 20, 40)])
    bad("flat.jpg", "invalid_box", [("circle", 10, 10, 40, 10)])
    bad("outside.jpg", "invalid_box", [("circle", 90, 70, 120, 90)])
    bad("nan.jpg", "invalid_box", [("circle", "x", 10, 40, 40)])
    bad("alien.jpg", "unknown_class", [("hexagon", 10, 10, 40, 40)])
    bad("other_size.jpg", "size_mismatch", [("circle", 10, 10, 40, 40)], size=(800, 600))
    bad("missing.jpg", "missing_file", [("circle", 10, 10, 40, 40)])
    (images / "missing.jpg").unlink()
    bad("junk.jpg", "corrupt_image", [("circle", 10, 10, 40, 40)], data=b"not an image at all")
    (voc / "Annotations" / "broken.xml").write_text("<annotation><filename>plain.jpg</filename>")
    expected[str(voc / "Annotations" / "broken.xml")] = "malformed_annotation"
    # Byte-identical copies: alike annotated, one kept; differently, both rejected.
    twin = _jpeg(Image.new("RGB", (80, 60), (10, 200, 10)))
    for name, objects in (
        ("twin_a.jpg", [("square", 5, 5, 30, 30)]),
        ("twin_b.jpg", [("square", 5, 5, 30, 30)]),
    ):
        (images / name).write_bytes(twin)
        _voc(voc, name, (80, 60), objects)
    expected[str(images / "twin_b.jpg")] = "duplicate_image"
    odd = _jpeg(Image.new("RGB", (80, 60), (200, 10, 200)))
    for name, objects in (
        ("odd_a.jpg", [("square", 5, 5, 30, 30)]),
        ("odd_b.jpg", [("circle", 5, 5, 30, 30)]),
    ):
        (images / name).write_bytes(odd)
        _voc(voc, name, (80, 60), objects)
        expected[str(images / name)] = "conflicting_labels"
    # Good, if unusual: a negative, a clipped box, no <size>, a PNG, an EXIF-turned JPEG.
    _voc(voc, "plain.jpg", (80, 60), [])
    (images / "clip.jpg").write_bytes(_jpeg(Image.new("RGB", (80, 60), (1, 2, 3))))
    _voc(voc, "clip.jpg", (80, 60), [("circle", -10, 20, 30, 70)])
    (images / "nosize.jpg").write_bytes(_jpeg(Image.new("RGB", (80, 60), (4, 5, 6))))
    _voc(voc, "nosize.jpg", None, [("triangle", 8, 6, 40, 30)])
    png = io.BytesIO()
    Image.new("RGBA", (80, 60), (9, 9, 200, 128)).save(png, "PNG")
    (images / "drawing.png").write_bytes(png.getvalue())
    _voc(voc, "drawing.png", (80, 60), [("square", 8, 6, 40, 30)])
    turned = Image.new("RGB", (96, 64))
    turned.paste((255, 255, 255), (12, 8, 40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    (images / "turned.jpg").write_bytes(_jpeg(turned, exif=exif.tobytes()))
    _voc(voc, "turned.jpg", (96, 64), [("square", 13, 9, 40, 24)])  # VOC: 1-based corners
    return voc, expected


@pytest.fixture(scope="module")
def corpus_run(corpus, sample, tmp_path_factory):
    voc, expected = corpus
    out = str(tmp_path_factory.mktemp("det_corpus_out") / "dataset")
    labels = Path(sample.labels_path)
    return out, detection.run(
        out, voc_dir=str(voc), label_map_uri=str(labels), max_error_fraction=0.5
    )


def test_every_bad_input_is_rejected_with_its_reason(corpus, corpus_run):
    voc, expected = corpus
    out, stats = corpus_run
    errors = read_errors(out)
    assert {uri: e["reason"] for uri, e in errors.items()} == expected
    reasons = {}
    for reason in expected.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert stats["rejected_by_reason"] == reasons
    for error in errors.values():
        assert error["detail"] and error["stage"] == "create_tfrecords"
    assert (
        "'hexagon' is not one of the 3 classes"
        in errors[str(voc / "JPEGImages/alien.jpg")]["detail"]
    )


def test_nothing_good_is_lost(corpus, corpus_run, sample):
    voc, expected = corpus
    out, stats = corpus_run
    records = read_records(out)
    names = [Path(p).name for p in sample.boxes]
    names += ["plain.jpg", "clip.jpg", "nosize.jpg", "drawing.png", "turned.jpg", "twin_a.jpg"]
    good = {str(voc / "JPEGImages" / name) for name in names}
    assert set(records) == good and stats["kept"] == len(good)
    images = voc / "JPEGImages"
    assert record_boxes(records[str(images / "plain.jpg")]) == []  # a negative
    assert stats["clipped_boxes"] == 1
    ((_, x0, y0, x1, y1),) = record_boxes(records[str(images / "clip.jpg")])
    assert (x0, y0, x1, y1) == pytest.approx((0, 20 / 60, 30 / 80, 1))
    ((_, x0, y0, x1, y1),) = record_boxes(records[str(images / "nosize.jpg")])
    assert (x0, y0, x1, y1) == pytest.approx((8 / 80, 6 / 60, 40 / 80, 30 / 60))
    assert stats["conversions"]["format"] == 1 and stats["conversions"]["orientation"] == 1


def test_exif_orientation_turns_the_boxes_with_the_pixels(corpus, corpus_run):
    voc, _ = corpus
    out, _ = corpus_run
    record = read_records(out)[str(voc / "JPEGImages" / "turned.jpg")]
    pixels = np.asarray(Image.open(io.BytesIO(record[schema.ENCODED])).convert("L")) > 128
    height, width = pixels.shape
    assert (width, height) == (64, 96)  # upright: turned a quarter
    rows, cols = np.where(pixels.any(axis=1))[0], np.where(pixels.any(axis=0))[0]
    white = (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)
    ((_, *box),) = record_boxes(record)
    np.testing.assert_allclose(box, white, atol=2 / 64)


def test_voc_split_lists_are_honoured(sample, tmp_path):
    voc = tmp_path / "voc"
    shutil.copytree(sample.voc_dir, voc)
    ids = sorted(Path(p).stem for p in sample.boxes)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[:20]) + "\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[20:25]) + "\n")
    out = str(tmp_path / "out")
    stats = detection.run(out, voc_dir=str(voc))
    assert stats["splits"] == {"train": 20, "valid": 0, "test": 5}
    assert stats["ignored"]["not_in_split_lists"] == IMAGES - 25
    test_uris = {
        uri for uri, _ in common_schema.read_manifest(common_schema.manifest_path(out, "test"))
    }
    assert {Path(uri).stem for uri in test_uris} == set(ids[20:25])


def test_vertex_ml_use_repeats_and_conflicts(sample, tmp_path):
    lines = Path(sample.vertex_jsonl).read_text().splitlines()
    first, second = (json.loads(line) for line in lines[:2])
    first["dataItemResourceLabels"] = {"aiplatform.googleapis.com/ml_use": "test"}
    changed = dict(second, boundingBoxAnnotations=[])
    jsonl = tmp_path / "import.jsonl"
    jsonl.write_text(
        "\n".join(
            [json.dumps(first), json.dumps(first), lines[1], json.dumps(changed), "", *lines[2:]]
        )
        + "\n"
    )
    out = str(tmp_path / "out")
    stats = detection.run(out, vertex_jsonl=str(jsonl))
    assert stats["kept"] == IMAGES - 1
    assert stats["rejected_by_reason"] == {"conflicting_annotations": 1}
    assert stats["ignored"]["repeated_annotations"] == 1 and stats["ignored"]["blank_lines"] == 1
    test_uris = {
        uri for uri, _ in common_schema.read_manifest(common_schema.manifest_path(out, "test"))
    }
    assert first["imageGcsUri"] in test_uris


def test_inputs_that_cannot_be_used_fail_before_the_pipeline(sample, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="exactly one input"):
        detection.run(out, voc_dir=sample.voc_dir, coco_json=sample.coco_json)
    with pytest.raises(ValueError, match="exactly one input"):
        detection.run(out)
    with pytest.raises(FileNotFoundError, match="no such input"):
        detection.run(out, voc_dir=str(tmp_path / "nope"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        detection.run(out, coco_json=str(bad))
    bad.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="is not COCO JSON"):
        detection.run(out, coco_json=str(bad))
    with pytest.raises(ValueError, match="train_fraction"):
        detection.run(out, voc_dir=sample.voc_dir, train_fraction=0.95, valid_fraction=0.1)
    assert not os.path.exists(os.path.join(out, "train"))


def test_the_command_line(sample, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["--output-dir", out, "--vertex-jsonl", sample.vertex_jsonl, "--num-shards", "2"]
    assert detection.main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kept"] == IMAGES and stats["sharding"]["num_shards"]["train"] == 2
    assert len(common_schema.shard_files(out, "train")) == 2
    assert detection.main(["--output-dir", out, "--coco-json", str(tmp_path / "none.json")]) == 1
    assert "create_tfrecords: error:" in capsys.readouterr().err


def test_component_under_kfp_local(sample, tmp_path):
    from kfp import local

    from components.detection.components import create_detection_tfrecords

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = create_detection_tfrecords(voc_dir=sample.voc_dir)
    dataset = task.outputs["dataset"]
    assert dataset.metadata["kept"] == IMAGES
    records = read_records(dataset.path)
    assert set(records) == set(sample.boxes)
    assert "## Objects per split and class" in Path(task.outputs["report"].path).read_text()
    assert tf.io.gfile.exists(os.path.join(dataset.path, schema.LABEL_MAP_FILE))
