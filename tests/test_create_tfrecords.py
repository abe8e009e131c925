"""Tests of the create_tfrecords stage: split function, image checks, the Beam pipeline on both
input formats and on bad input, the command line and the KFP component under kfp local.

Each pipeline run is a module-scoped fixture shared by the assertions that read its output.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.common import schema
from components.create_tfrecords import beam_pipeline
from components.create_tfrecords.beam_pipeline import assign_split, run
from components.create_tfrecords.image_checks import ImageRejected, check_image

# --------------------------------------------------------------------------- helpers


def read_split(dataset_dir: str, split: str) -> list[dict]:
    """All records of one split, parsed with the shared schema."""
    files = schema.shard_files(dataset_dir, split)
    records = []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256):
        parsed = schema.parse_examples(batch)
        for i in range(int(tf.shape(batch)[0])):
            records.append(
                {
                    "encoded": parsed[schema.ENCODED][i].numpy(),
                    "format": parsed[schema.FORMAT][i].numpy().decode(),
                    "height": int(parsed[schema.HEIGHT][i]),
                    "width": int(parsed[schema.WIDTH][i]),
                    "label": int(parsed[schema.LABEL][i]),
                    "text": parsed[schema.TEXT][i].numpy().decode(),
                    "filename": parsed[schema.FILENAME][i].numpy().decode(),
                }
            )
    return records


def read_dataset(dataset_dir: str) -> dict[str, list[dict]]:
    return {split: read_split(dataset_dir, split) for split in schema.SPLITS}


def read_manifest(dataset_dir: str, split: str) -> list[tuple[str, str]]:
    with open(schema.manifest_path(dataset_dir, split), newline="") as f:
        return [tuple(row) for row in csv.reader(f)]


def read_errors(dataset_dir: str) -> list[dict]:
    with open(os.path.join(dataset_dir, schema.ERRORS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **kwargs)
    return out.getvalue()


def decode(encoded: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(encoded))
    image.load()
    return image


# --------------------------------------------------------------------------- assign_split


def test_assign_split_is_deterministic_and_independent_of_other_uris():
    uris = [f"gs://bucket/images/img_{i:05d}.jpg" for i in range(2000)]
    first = [assign_split(uri, 0.8, 0.1) for uri in uris]
    # Another order, another company: each URI keeps its split.
    shuffled = list(reversed(uris[:500])) + ["gs://other/new.jpg"]
    again = {uri: assign_split(uri, 0.8, 0.1) for uri in shuffled}
    assert all(again[uri] == split for uri, split in zip(uris[:500], first, strict=False))
    assert set(first) == {"train", "valid", "test"}
    # The documented formula: first 8 bytes of sha256(uri) / 2**64 against the fractions.
    for uri, split in zip(uris, first, strict=True):
        u = int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big") / 2**64
        assert split == ("train" if u < 0.8 else "valid" if u < 0.9 else "test")


def test_assign_split_respects_fractions():
    uris = [f"/data/{i}.jpg" for i in range(20000)]
    splits = [assign_split(uri, 0.7, 0.2) for uri in uris]
    share = {s: splits.count(s) / len(uris) for s in schema.SPLITS}
    assert share["train"] == pytest.approx(0.7, abs=0.02)
    assert share["valid"] == pytest.approx(0.2, abs=0.02)
    assert share["test"] == pytest.approx(0.1, abs=0.02)
    assert {assign_split(uri, 1.0, 0.0) for uri in uris[:200]} == {"train"}
    assert {assign_split(uri, 0.0, 0.0) for uri in uris[:200]} == {"test"}
    # Growing train only moves images from valid/test into train, never out of train.
    for uri in uris[:2000]:
        if assign_split(uri, 0.5, 0.1) == "train":
            assert assign_split(uri, 0.6, 0.1) == "train"


@pytest.mark.parametrize("train, valid", [(-0.1, 0.1), (0.8, -0.01), (0.9, 0.2), (float("nan"), 0)])
def test_assign_split_rejects_bad_fractions(train, valid):
    with pytest.raises(ValueError, match="fraction"):
        assign_split("a.jpg", train, valid)


def test_run_rejects_bad_arguments_before_running(sample_data, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="exactly one input"):
        run(
            out,
            csv_uri=sample_data.csv_path,
            labels_uri=sample_data.labels_path,
            image_dir=sample_data.image_dir,
        )
    with pytest.raises(ValueError, match="exactly one input"):
        run(out)
    with pytest.raises(ValueError, match="labels_uri"):
        run(out, csv_uri=sample_data.csv_path)
    with pytest.raises(ValueError, match="train_fraction"):
        run(out, image_dir=sample_data.image_dir, train_fraction=0.9, valid_fraction=0.3)
    with pytest.raises(FileNotFoundError, match="no CSV"):
        run(out, csv_uri=str(tmp_path / "nope.csv"), labels_uri=sample_data.labels_path)
    assert not os.path.exists(os.path.join(out, schema.STATS_FILE))


# --------------------------------------------------------------------------- image checks


def test_check_image_keeps_small_rgb_jpeg_bytes():
    data = jpeg_bytes(Image.new("RGB", (40, 30), (10, 200, 30)))
    checked = check_image(data, max_image_side=64)
    assert (checked.encoded, checked.height, checked.width) == (data, 30, 40)
    assert not checked.reencoded


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_check_image_converts_other_modes_to_rgb_jpeg(mode):
    image = Image.new("RGB", (50, 20), (200, 100, 0)).convert(mode)
    out = io.BytesIO()
    image.save(out, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    checked = check_image(out.getvalue(), max_image_side=1024)
    stored = decode(checked.encoded)
    assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (50, 20))
    assert (checked.height, checked.width, checked.reencoded) == (20, 50, True)


def test_check_image_composites_transparency_on_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # Fully transparent red.
    out = io.BytesIO()
    image.save(out, "PNG")
    pixel = decode(check_image(out.getvalue()).encoded).getpixel((10, 10))
    assert all(channel > 245 for channel in pixel)


def test_check_image_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
    data = jpeg_bytes(Image.new("RGB", (60, 20)), exif=exif.tobytes())
    checked = check_image(data)
    assert checked.reencoded
    assert (checked.height, checked.width) == (60, 20)
    assert decode(checked.encoded).size == (20, 60)


def test_check_image_resizes_long_side_and_zero_disables():
    data = jpeg_bytes(Image.new("RGB", (300, 100)))
    checked = check_image(data, max_image_side=150)
    assert (checked.width, checked.height, checked.resized) == (150, 50, True)
    assert decode(checked.encoded).size == (150, 50)
    assert check_image(data, max_image_side=0).encoded == data


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is not an image", "corrupt_image"),
        (jpeg_bytes(Image.new("RGB", (64, 64)))[:-40], "corrupt_image"),
        (jpeg_bytes(Image.new("RGB", (64, 64)))[:300], "corrupt_image"),
    ],
)
def test_check_image_rejects_bad_data(data, reason):
    with pytest.raises(ImageRejected) as caught:
        check_image(data)
    assert caught.value.reason == reason


# --------------------------------------------------------------------------- runs on good data


@pytest.fixture(scope="module")
def csv_run(sample_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("csv_run") / "dataset")
    stats = run(out, csv_uri=sample_data.csv_path, labels_uri=sample_data.labels_path, num_shards=2)
    return out, stats


@pytest.fixture(scope="module")
def dir_run(sample_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dir_run") / "dataset")
    return out, run(out, image_dir=sample_data.image_dir)


@pytest.fixture(params=["csv_run", "dir_run"])
def good_run(request, sample_data):
    out, stats = request.getfixturevalue(request.param)
    return out, stats, read_dataset(out)


def test_all_images_are_kept_once_with_their_label(good_run, sample_data):
    out, stats, dataset = good_run
    records = [r for split in schema.SPLITS for r in dataset[split]]
    assert len(records) == sample_data.count == 48
    with open(sample_data.csv_path, newline="") as f:
        expected = dict(csv.reader(f))  # uri -> label
    assert sorted(r["filename"] for r in records) == sorted(expected)
    labels = Path(out, "labels.txt").read_text().split()
    assert stats["labels"] == labels
    assert sorted(labels) == sorted(sample_data.labels)
    for r in records:
        assert r["text"] == expected[r["filename"]]
        assert labels[r["label"]] == r["text"]
    assert not read_errors(out)
    assert stats["rejected"] == 0 and stats["rejected_by_reason"] == {}


def test_records_hold_original_jpegs_with_their_size(good_run):
    _, stats, dataset = good_run
    records = [r for split in schema.SPLITS for r in dataset[split]]
    for r in records:
        image = decode(r["encoded"])
        assert (image.format, image.mode, r["format"]) == ("JPEG", "RGB", "jpeg")
        assert image.size == (r["width"], r["height"])
        with open(r["filename"], "rb") as f:
            assert r["encoded"] == f.read()  # Small RGB JPEGs keep their bytes.
        # The TensorFlow decoder sees the same size.
        assert tuple(tf.io.decode_jpeg(r["encoded"]).shape) == (r["height"], r["width"], 3)
    assert stats["image_bytes"] == sum(len(r["encoded"]) for r in records)
    assert stats["reencoded"] == 0


def test_split_is_the_hash_of_the_uri_and_manifests_match(good_run):
    out, stats, dataset = good_run
    for split in schema.SPLITS:
        for r in dataset[split]:
            assert assign_split(r["filename"], 0.8, 0.1) == split
        manifest = read_manifest(out, split)
        assert sorted(manifest) == sorted((r["filename"], r["text"]) for r in dataset[split])


def test_stats_match_records(good_run):
    out, stats, dataset = good_run
    with open(os.path.join(out, schema.STATS_FILE)) as f:
        assert json.load(f) == stats
    assert stats["kept"] == 48
    for split in schema.SPLITS:
        assert stats["splits"][split] == len(dataset[split])
        for label in stats["labels"]:
            n = sum(r["text"] == label for r in dataset[split])
            assert stats["classes"][split][label] == n
    assert stats["splits"]["train"] > stats["splits"]["valid"]


def test_shard_names_follow_the_schema(csv_run, dir_run):
    csv_out, _ = csv_run
    for split in schema.SPLITS:
        names = sorted(os.listdir(os.path.join(csv_out, split)))
        assert names == [f"{split}-0000{i}-of-00002.tfrecord.gz" for i in range(2)]
    dir_out, _ = dir_run
    for split in schema.SPLITS:
        assert schema.shard_files(dir_out, split)


def test_both_formats_give_the_same_dataset(csv_run, dir_run):
    assert csv_run[1]["splits"] == dir_run[1]["splits"]
    # Folder tree labels are the sorted subdirectories; the CSV's come from its label file.
    assert dir_run[1]["labels"] == sorted(csv_run[1]["labels"])


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_corpus(sample_data, tmp_path_factory):
    """A CSV mixing good images, bad ones and images that need re-encoding."""
    root = tmp_path_factory.mktemp("bad_corpus")
    images = root / "images"
    images.mkdir()
    samples = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))
    good, rows, expected_errors = {}, [], {}

    for label in sample_data.labels:  # Two original JPEGs per class, as relative URIs.
        for path in [p for p in samples if f"/{label}/" in p][:2]:
            target = images / os.path.basename(path)
            shutil.copy(path, target)
            good[str(target)] = label
            rows.append(f"images/{target.name},{label}")

    def add(name: str, data: bytes | None, label: str, reason: str | None) -> str:
        path = images / name
        if data is not None:
            path.write_bytes(data)
        if reason:
            expected_errors[str(path)] = reason
        else:
            good[str(path)] = label
        rows.append(f"  {path} , {label} ")
        return str(path)

    sample = Path(samples[0]).read_bytes()
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    png = io.BytesIO()
    rgb.convert("RGBA").save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 8
    add("truncated.jpg", sample[: len(sample) // 2], "circle", "corrupt_image")
    add("empty.jpg", b"", "square", "empty_file")
    add("missing.jpg", None, "circle", "missing_file")
    add("text.jpg", b"hello, I am not a JPEG\n" * 10, "cross", "corrupt_image")
    add("hexagon.jpg", sample, "hexagon", "unknown_label")
    conflict = add("conflict.jpg", sample, "circle", "conflicting_labels")
    rows.append(f"{conflict},square")
    png_path = add("drawing.png", png.getvalue(), "square", None)
    grey_path = add("grey.jpg", jpeg_bytes(rgb.convert("L")), "triangle", None)
    big_path = add("big.jpg", jpeg_bytes(rgb.resize((1200, 900))), "cross", None)
    rotated_path = add("rotated.jpg", jpeg_bytes(rgb, exif=exif.tobytes()), "circle", None)
    rows.append(rows[0])  # A repeated line is kept once, not rejected.
    rows[3:3] = ["", "   ", "only-one-field", "a.jpg,circle,extra"]
    rows.insert(0, "uri,label")  # A header line is tolerated.

    csv_path = root / "images.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    labels_path = root / "labels.txt"
    labels_path.write_text("\n".join(sample_data.labels) + "\n")
    return {
        "csv": str(csv_path),
        "labels": str(labels_path),
        "good": good,
        "errors": expected_errors,
        "malformed": 2,
        "png": png_path,
        "grey": grey_path,
        "big": big_path,
        "rotated": rotated_path,
    }


@pytest.fixture(scope="module")
def bad_run(bad_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bad_run") / "dataset")
    # train_fraction=1: the valid and test splits are empty, yet must exist and parse.
    stats = run(
        out,
        csv_uri=bad_corpus["csv"],
        labels_uri=bad_corpus["labels"],
        train_fraction=1.0,
        valid_fraction=0.0,
        max_image_side=512,
        max_error_fraction=0.5,
    )
    return out, stats, read_dataset(out)


def test_bad_inputs_are_listed_with_their_reason(bad_corpus, bad_run):
    out, stats, _ = bad_run
    errors = read_errors(out)
    for error in errors:
        assert set(error) == {"uri", "label", "reason", "detail", "stage"}
        assert error["stage"] == "create_tfrecords" and error["detail"]
    by_uri = {e["uri"]: e["reason"] for e in errors if e["reason"] != "malformed_line"}
    assert by_uri == bad_corpus["errors"]
    malformed = [e for e in errors if e["reason"] == "malformed_line"]
    assert len(malformed) == bad_corpus["malformed"]
    assert {e["uri"] for e in malformed} == {bad_corpus["csv"]}
    assert any("only-one-field" in e["detail"] for e in malformed)
    assert stats["rejected"] == len(errors) == len(bad_corpus["errors"]) + 2
    assert stats["rejected_by_reason"] == {
        "conflicting_labels": 1,
        "corrupt_image": 2,
        "empty_file": 1,
        "malformed_line": 2,
        "missing_file": 1,
        "unknown_label": 1,
    }


def test_good_inputs_are_kept_exactly_once(bad_corpus, bad_run):
    out, stats, dataset = bad_run
    records = dataset["train"]
    assert sorted(r["filename"] for r in records) == sorted(bad_corpus["good"])
    assert {r["filename"]: r["text"] for r in records} == bad_corpus["good"]
    assert stats["kept"] == stats["splits"]["train"] == len(bad_corpus["good"])
    assert sorted(read_manifest(out, "train")) == sorted(bad_corpus["good"].items())


def test_empty_splits_have_a_readable_empty_shard(bad_run):
    out, stats, dataset = bad_run
    for split in ("valid", "test"):
        assert stats["splits"][split] == 0 and dataset[split] == []
        assert [os.path.basename(f) for f in schema.shard_files(out, split)] == [
            f"{split}-00000-of-00001.tfrecord.gz"
        ]
        assert read_manifest(out, split) == []


def test_non_rgb_jpeg_and_large_images_are_reencoded(bad_corpus, bad_run):
    _, stats, dataset = bad_run
    by_name = {r["filename"]: r for r in dataset["train"]}
    for key, size in [
        ("png", (120, 90)),
        ("grey", (120, 90)),
        ("big", (512, 384)),
        ("rotated", (90, 120)),
    ]:
        r = by_name[bad_corpus[key]]
        image = decode(r["encoded"])
        assert (image.format, image.mode, r["format"]) == ("JPEG", "RGB", "jpeg"), key
        assert image.size == (r["width"], r["height"]) == size, key
    assert stats["reencoded"] == 4 and stats["resized"] == 1


def test_too_many_bad_inputs_fail_the_run(bad_corpus, tmp_path):
    out = str(tmp_path / "dataset")
    total = len(bad_corpus["good"]) + len(bad_corpus["errors"]) + bad_corpus["malformed"]
    with pytest.raises(ValueError) as caught:
        run(out, csv_uri=bad_corpus["csv"], labels_uri=bad_corpus["labels"], max_error_fraction=0.1)
    message = str(caught.value)
    assert f"rejected 8 of {total} input images" in message
    assert "corrupt_image=2" in message and "missing_file=1" in message
    assert os.path.join(out, "errors.jsonl") in message
    assert len(read_errors(out)) == 8  # The errors are there to look at.


def test_empty_input_fails_the_run(sample_data, tmp_path):
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("uri,label\n\n  \n")
    with pytest.raises(ValueError, match=f"no input images in {csv_path}"):
        run(str(tmp_path / "out"), csv_uri=str(csv_path), labels_uri=sample_data.labels_path)
    stats = {"kept": 0, "rejected": 3, "rejected_by_reason": {"missing_file": 3}}
    with pytest.raises(ValueError, match="rejected 3 of 3 .*none was kept"):
        beam_pipeline.check_error_share(stats, 1.0, "/out")


def test_folder_tree_with_a_label_file(sample_data, tmp_path):
    """The label file sets the order; folders not in it are rejected, hidden ones and
    non-image files ignored."""
    tree = tmp_path / "tree"
    shutil.copytree(sample_data.image_dir, tree)
    (tree / ".cache").mkdir()
    (tree / ".cache" / "x.jpg").write_bytes(b"junk")
    (tree / "circle" / "README.txt").write_text("not an image")
    labels_path = tmp_path / "labels.txt"
    labels_path.write_text("triangle\nsquare\ncircle\nhexagon\n")
    out = str(tmp_path / "out")
    stats = run(out, image_dir=str(tree), labels_uri=str(labels_path), max_error_fraction=0.3)
    assert stats["labels"] == ["triangle", "square", "circle", "hexagon"]
    assert (stats["kept"], stats["rejected_by_reason"]) == (36, {"unknown_label": 12})
    assert sum(stats["classes"][s]["hexagon"] for s in schema.SPLITS) == 0
    assert {e["label"] for e in read_errors(out)} == {"cross"}
    records = [r for split in read_dataset(out).values() for r in split]
    assert all(stats["labels"][r["label"]] == r["text"] for r in records)
    assert len(records) == 36


# --------------------------------------------------------------------------- CLI and component


def test_cli_passes_options_and_beam_args_and_prints_stats(monkeypatch, capsys):
    """The command line maps its flags onto run() (tested above) and prints the stats."""
    from components.create_tfrecords.__main__ import main

    calls = []

    def fake_run(**kwargs):
        calls.append(kwargs)
        if kwargs["train_fraction"] > 1:
            raise ValueError("train_fraction + valid_fraction must be <= 1")
        return {"kept": 3, "splits": {"train": 3}}

    monkeypatch.setattr(beam_pipeline, "run", fake_run)
    argv = [
        "--output-dir",
        "out",
        "--csv",
        "a.csv",
        "--labels",
        "l.txt",
        "--num-shards",
        "4",
        "--max-image-side",
        "0",
        "--runner",
        "DataflowRunner",
        "--region=r",
        "--project",
        "p",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"kept": 3, "splits": {"train": 3}}
    assert calls[0] == {
        "output_dir": "out",
        "csv_uri": "a.csv",
        "labels_uri": "l.txt",
        "image_dir": "",
        "train_fraction": 0.8,
        "valid_fraction": 0.1,
        "num_shards": 4,
        "max_image_side": 0,
        "max_error_fraction": 0.1,
        "runner": "DataflowRunner",
        "beam_args": ["--region=r", "--project", "p"],
    }
    assert main(["--output-dir", "o", "--image-dir", "x", "--train-fraction", "2"]) == 1
    assert "train_fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Exactly one input.
        main(["--output-dir", "o", "--image-dir", "x", "--csv", "a.csv"])


def test_component_under_kfp_local(kfp_local, sample_data, dir_run):
    from components.create_tfrecords.component import create_tfrecords

    task = create_tfrecords(image_dir=sample_data.image_dir, num_shards=1)
    dataset = task.outputs["dataset"]
    metadata = dataset.metadata
    assert metadata["kept"] == 48 and metadata["rejected"] == 0
    expected = dir_run[1]  # Same images, same URIs: the same split.
    assert {s: int(n) for s, n in metadata["splits"].items()} == expected["splits"]
    assert metadata["labels"] == sorted(sample_data.labels)
    assert metadata["classes"]["train"]["circle"] == expected["classes"]["train"]["circle"]
    assert dataset.path.startswith(str(kfp_local))
    records = read_dataset(dataset.path)
    for split in schema.SPLITS:
        assert len(records[split]) == expected["splits"][split]
        assert os.path.basename(schema.shard_files(dataset.path, split)[0]) == (
            f"{split}-00000-of-00001.tfrecord.gz"
        )
