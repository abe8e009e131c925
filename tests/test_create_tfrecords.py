"""Tests of the create_tfrecords stage: split function, image checks, Beam options, the Beam
pipeline on both input formats, split stability, shard sizing, the command line, and the KFP
component under kfp local on a corpus holding every kind of bad input.

Each pipeline run is a module-scoped fixture shared by the assertions that read its output.
"""

from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.classification import schema
from components.common import beam as beam_utils, schema as common_schema
from components.create_tfrecords import beam_pipeline, sharding
from components.create_tfrecords.beam_pipeline import assign_split, run
from components.create_tfrecords.image_checks import ImageRejected, check_image

# --------------------------------------------------------------------------- helpers


def read_split(dataset_dir: str, split: str) -> list[dict]:
    """All records of one split, parsed with the classification record schema."""
    files = common_schema.shard_files(dataset_dir, split)
    records = []
    for batch in common_schema.read_records(files).batch(256):
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
    return {split: read_split(dataset_dir, split) for split in common_schema.SPLITS}


def read_manifest(dataset_dir: str, split: str) -> list[tuple[str, str]]:
    with open(common_schema.manifest_path(dataset_dir, split), newline="") as f:
        return [tuple(row) for row in csv.reader(f)]


def read_errors(dataset_dir: str) -> list[dict]:
    with open(os.path.join(dataset_dir, common_schema.ERRORS_FILE)) as f:
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
    share = {s: splits.count(s) / len(uris) for s in common_schema.SPLITS}
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
    with pytest.raises(ValueError, match="target_shard_mb"):
        run(out, image_dir=sample_data.image_dir, target_shard_mb=0)
    with pytest.raises(ValueError, match="num_shards"):
        run(out, image_dir=sample_data.image_dir, num_shards=-1)
    with pytest.raises(ValueError, match="--region is set twice"):
        run(
            out,
            image_dir=sample_data.image_dir,
            dataflow=beam_utils.DataflowSettings(region="r1"),
            beam_args=["--region=r2"],
        )
    assert not os.path.exists(out)


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


def test_check_image_keeps_mpo_bytes_and_names_conversions():
    """A phone's MPO (a JPEG with extra pictures) keeps its bytes, which TF decodes."""
    first = Image.new("RGB", (40, 30), (10, 200, 30))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[Image.new("RGB", (40, 30))])
    checked = check_image(out.getvalue())
    assert checked.encoded == out.getvalue() and checked.conversions() == ()
    assert tuple(tf.io.decode_jpeg(checked.encoded).shape) == (30, 40, 3)
    grey = io.BytesIO()
    Image.new("L", (300, 100)).save(grey, "PNG")
    assert check_image(grey.getvalue(), 150).conversions() == ("format", "mode", "resized")


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


def test_check_image_rejects_kept_jpegs_cut_anywhere(sample_data):
    """JPEGs stored as they are get a reduced-size decode (draft); it must still read
    all of the data, so a file cut short at any point is rejected."""
    paths = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))[:12]
    for path in paths:
        data = Path(path).read_bytes()
        assert check_image(data).encoded == data  # Kept as it is: the draft path.
        for cut in (0.3, 0.6, 0.9, 0.99):
            with pytest.raises(ImageRejected) as caught:
                check_image(data[: int(len(data) * cut)])
            assert caught.value.reason == "corrupt_image", (path, cut)


# --------------------------------------------------------------------------- Beam options


def test_dataflow_parameters_become_beam_options():
    Dataflow = beam_utils.DataflowSettings
    args = Dataflow(
        project="my-project",
        region="europe-west4",
        temp_location="gs://bucket/tmp",
        worker_machine_type="n2-standard-8",
        max_num_workers=40,
        sdk_container_image="europe-docker.pkg.dev/p/r/create-tfrecords-dataflow:v1",
    ).args()
    assert args == [
        "--project=my-project",
        "--region=europe-west4",
        "--temp_location=gs://bucket/tmp",
        "--machine_type=n2-standard-8",
        "--max_num_workers=40",
        "--sdk_container_image=europe-docker.pkg.dev/p/r/create-tfrecords-dataflow:v1",
        "--sdk_location=container",
    ]
    assert Dataflow().args() == []  # Empty means unset.
    assert Dataflow(project="p", sdk_container_image=" ").args() == ["--project=p"]
    options = beam_utils.pipeline_options(
        "DataflowRunner",
        ["--job_name=tfrecords", "--region", "europe-west4", "--experiments=use_runner_v2"],
        dataflow=Dataflow(
            project="my-project",
            region="europe-west4",  # Also in beam_args, with the same value: fine.
            worker_machine_type="n2-standard-8",
            sdk_container_image="img:v1",
        ),
    ).get_all_options(drop_default=True)
    assert options == {
        "runner": "DataflowRunner",
        "project": "my-project",
        "region": "europe-west4",
        "machine_type": "n2-standard-8",
        "sdk_container_image": "img:v1",
        "sdk_location": "container",
        "job_name": "tfrecords",
        "experiments": ["use_runner_v2"],
    }
    # Beam's other spelling of the machine type is the same option.
    with pytest.raises(ValueError, match="--machine_type is set twice"):
        beam_utils.pipeline_options(
            "DataflowRunner",
            ["--worker_machine_type=n1"],
            dataflow=Dataflow(worker_machine_type="n2"),
        )
    with pytest.raises(ValueError, match="--sdk_location is set twice"):
        beam_utils.pipeline_options(
            "DataflowRunner",
            ["--sdk_location=sdk.tar.gz"],
            dataflow=Dataflow(sdk_container_image="i"),
        )
    # Only Dataflow's workers run in an image: a pipeline names it whatever the runner.
    assert Dataflow(project="p", sdk_container_image="i").args("DirectRunner") == ["--project=p"]
    with pytest.raises(ValueError, match="max_num_workers"):
        Dataflow(max_num_workers=-1).args()
    # The DirectRunner keeps Beam's default mode: no direct_* option is added.
    direct = beam_utils.pipeline_options("DirectRunner").get_all_options(drop_default=True)
    assert direct == {"runner": "DirectRunner"}
    every_core = beam_utils.pipeline_options("DirectRunner", direct_num_workers=0)
    assert every_core.get_all_options(drop_default=True) == {
        "runner": "DirectRunner",
        "direct_running_mode": "multi_processing",
        "direct_num_workers": 0,
    }
    with pytest.raises(ValueError, match="DirectRunner only"):
        beam_utils.pipeline_options("DataflowRunner", direct_num_workers=0)
    with pytest.raises(ValueError, match="direct_num_workers must be >= 0"):
        beam_utils.pipeline_options("DirectRunner", direct_num_workers=-2)


def test_the_service_account_and_kms_key_become_dataflow_options():
    Dataflow = beam_utils.DataflowSettings
    account = "pipelines@my-project.iam.gserviceaccount.com"
    key = "projects/my-project/locations/europe-west4/keyRings/ml/cryptoKeys/dataflow"
    settings = Dataflow(
        project="my-project",
        region="europe-west4",
        sdk_container_image="img:v1",
        service_account_email=account,
        dataflow_kms_key=f" {key} ",
    )
    assert settings.args() == [
        "--project=my-project",
        "--region=europe-west4",
        f"--service_account_email={account}",
        f"--dataflow_kms_key={key}",
        "--sdk_container_image=img:v1",
        "--sdk_location=container",
    ]
    options = beam_utils.pipeline_options("DataflowRunner", dataflow=settings)
    chosen = options.get_all_options(drop_default=True)
    assert (chosen["service_account_email"], chosen["dataflow_kms_key"]) == (account, key)
    # Dataflow's own, like the worker image: the vertex target passes them whatever the
    # runner, and the DirectRunner leaves them out.
    assert settings.args("DirectRunner") == ["--project=my-project", "--region=europe-west4"]
    # Given in beam_args too, they must agree with the parameters.
    with pytest.raises(ValueError, match="--service_account_email is set twice"):
        beam_utils.pipeline_options(
            "DataflowRunner", ["--service_account_email=other@p.iam.gserviceaccount.com"],
            dataflow=settings,
        )  # fmt: skip
    same = beam_utils.pipeline_options(
        "DataflowRunner", [f"--dataflow_kms_key={key}"], dataflow=settings
    )
    assert same.get_all_options(drop_default=True)["dataflow_kms_key"] == key
    # A key version or a key ring is no key: refused before a job is launched with it.
    for wrong in (f"{key}/cryptoKeyVersions/1", "projects/p/locations/l/keyRings/ml"):
        with pytest.raises(ValueError, match="Cloud KMS key is named"):
            Dataflow(dataflow_kms_key=wrong).args()


def test_multi_process_direct_runner_writes_the_same_dataset(sample_data, dir_run, tmp_path):
    """direct_num_workers=0: a worker process per core, the same records and splits."""
    out = str(tmp_path / "dataset")
    stats = run(out, image_dir=sample_data.image_dir, direct_num_workers=0)
    first_out, first_stats = dir_run
    assert stats["splits"] == first_stats["splits"]
    for split in common_schema.SPLITS:
        assert sorted(r["filename"] for r in read_split(out, split)) == sorted(
            r["filename"] for r in read_split(first_out, split)
        )


def test_run_and_component_pass_the_dataflow_parameters(monkeypatch, sample_data, tmp_path):
    """run() hands the named Dataflow settings to make_pipeline; the component to run()."""
    calls = []

    class Stop(Exception):
        pass

    def fake_make_pipeline(runner, beam_args=None, direct_num_workers=1, dataflow=None):
        calls.append((runner, beam_args, dataflow))
        raise Stop

    monkeypatch.setattr(beam_utils, "make_pipeline", fake_make_pipeline)
    dataflow = dict(
        project="p",
        region="r",
        temp_location="gs://b/tmp",
        worker_machine_type="n2-standard-4",
        max_num_workers=7,
        sdk_container_image="img:v1",
    )
    with pytest.raises(Stop):
        run(
            str(tmp_path / "out"),
            image_dir=sample_data.image_dir,
            runner="DataflowRunner",
            beam_args=["--job_name=j"],
            dataflow=beam_utils.DataflowSettings(**dataflow),
        )
    assert calls == [("DataflowRunner", ["--job_name=j"], beam_utils.DataflowSettings(**dataflow))]

    from kfp.dsl import Dataset, Markdown

    from components.common import io as io_lib
    from components.create_tfrecords import report as report_lib
    from components.create_tfrecords.component import create_tfrecords

    runs, written = [], {}
    monkeypatch.setattr(
        beam_pipeline, "run", lambda **kw: runs.append(kw) or {"kept": 1, "rejected": 0}
    )
    monkeypatch.setattr(report_lib, "render_report", lambda stats, *args: "# report")
    monkeypatch.setattr(io_lib, "write_text", lambda path, text: written.update({path: text}))
    dataset, report = Dataset(uri=str(tmp_path / "d")), Markdown(uri=str(tmp_path / "r.md"))
    create_tfrecords.python_func(
        dataset=dataset,
        report=report,
        image_dir="gs://b/images",
        runner="DataflowRunner",
        target_shard_mb=100.0,
        beam_args=["--job_name=j"],
        **dataflow,
    )
    assert runs[0]["runner"] == "DataflowRunner" and runs[0]["target_shard_mb"] == 100.0
    assert runs[0]["direct_num_workers"] == 1
    assert runs[0]["dataflow"] == beam_utils.DataflowSettings(**dataflow)
    assert runs[0]["beam_args"] == ["--job_name=j"]
    assert written == {str(tmp_path / "r.md"): "# report"}
    assert dataset.metadata == {"kept": 1, "rejected": 0}


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
    records = [r for split in common_schema.SPLITS for r in dataset[split]]
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
    records = [r for split in common_schema.SPLITS for r in dataset[split]]
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
    for split in common_schema.SPLITS:
        for r in dataset[split]:
            assert assign_split(r["filename"], 0.8, 0.1) == split
        manifest = read_manifest(out, split)  # every line: no header
        assert sorted(manifest) == sorted((r["filename"], r["text"]) for r in dataset[split])
        assert common_schema.read_manifest(common_schema.manifest_path(out, split)) == manifest


def test_stats_match_records(good_run):
    out, stats, dataset = good_run
    with open(os.path.join(out, common_schema.STATS_FILE)) as f:
        assert json.load(f) == stats
    assert stats["kept"] == 48
    for split in common_schema.SPLITS:
        records = dataset[split]
        assert stats["splits"][split] == len(records)
        assert stats["image_bytes_by_split"][split] == sum(len(r["encoded"]) for r in records)
        shard_files = common_schema.shard_files(out, split)
        assert stats["shards"][split] == {
            "files": len(shard_files),
            "bytes": sum(os.path.getsize(f) for f in shard_files),
        }
        for label in stats["labels"]:
            n = sum(r["text"] == label for r in records)
            assert stats["classes"][split][label] == n
    assert stats["splits"]["train"] > stats["splits"]["valid"]
    records = [r for split in common_schema.SPLITS for r in dataset[split]]
    widths = sorted(r["width"] for r in records)
    heights = sorted(r["height"] for r in records)
    sizes = stats["image_sizes"]
    assert sizes["width"] == {"min": widths[0], "median": widths[23], "max": widths[-1]}
    assert sizes["height"] == {"min": heights[0], "median": heights[23], "max": heights[-1]}
    histogram = sizes["long_side_histogram"]
    assert sum(histogram.values()) == 48
    long_sides = [max(r["width"], r["height"]) for r in records]  # 72..256 px
    assert histogram["64-127"] == sum(s < 128 for s in long_sides)
    assert histogram["128-255"] == sum(128 <= s < 256 for s in long_sides)
    assert histogram["256-511"] == sum(s >= 256 for s in long_sides)


def test_forced_shard_count_and_shard_names(csv_run, dir_run):
    csv_out, csv_stats = csv_run  # num_shards=2: exactly 2 per split, whatever the size.
    for split in common_schema.SPLITS:
        names = sorted(os.listdir(os.path.join(csv_out, split)))
        assert names == [f"{split}-0000{i}-of-00002.tfrecord" for i in range(2)]
    assert csv_stats["sharding"]["num_shards"] == {"train": 2, "valid": 2, "test": 2}
    assert csv_stats["sharding"]["num_shards_forced"] == 2
    for split in common_schema.SPLITS:  # Each image is in the shard its URI's hash names.
        for i, path in enumerate(sorted(common_schema.shard_files(csv_out, split))):
            for batch in common_schema.read_records([path]).batch(256):
                for name in schema.parse_examples(batch)[schema.FILENAME].numpy():
                    assert sharding.shard_index(name.decode(), 2) == i
    dir_out, dir_stats = dir_run  # About 0.5 MB of input: one shard per split.
    for split in common_schema.SPLITS:
        assert [os.path.basename(f) for f in common_schema.shard_files(dir_out, split)] == [
            f"{split}-00000-of-00001.tfrecord"
        ]
    assert dir_stats["sharding"] == {
        "target_shard_mb": sharding.TARGET_SHARD_MB,
        "num_shards_forced": 0,
        "num_shards": {"train": 1, "valid": 1, "test": 1},
    }


# --------------------------------------------------------------------------- split stability


@pytest.fixture(scope="module")
def grown_run(sample_data, tmp_path_factory):
    """The sample CSV with 24 more images appended, run again."""
    from pipelines.sample_data import generate

    root = tmp_path_factory.mktemp("grown")
    more = generate(str(root / "more"), per_class=6, seed=7)
    csv_path = root / "grown.csv"
    csv_path.write_text(Path(sample_data.csv_path).read_text() + Path(more.csv_path).read_text())
    out = str(root / "dataset")
    return out, run(out, csv_uri=str(csv_path), labels_uri=sample_data.labels_path)


def manifest_splits(dataset_dir: str) -> dict[str, str]:
    """uri -> split, from the manifests."""
    return {
        uri: split for split in common_schema.SPLITS for uri, _ in read_manifest(dataset_dir, split)
    }


def test_splits_are_stable_across_runs_and_growth(csv_run, dir_run, grown_run):
    first, again, grown = (manifest_splits(run[0]) for run in (csv_run, dir_run, grown_run))
    assert len(first) == 48 and again == first  # Same URIs, another run: same splits.
    assert len(grown) == 72
    assert {uri: grown[uri] for uri in first} == first  # Old images never move.
    new = set(grown) - set(first)
    assert len(new) == 24 and {grown[uri] for uri in new} >= {"train"}


# --------------------------------------------------------------------------- shard sizing


def check_shards_follow_stored_bytes(out: str, stats: dict, target_mb: float) -> None:
    """Each split has ceil(stored bytes / target) shards, named -of-N, each record in the
    shard its URI's hash names, and every kept image in exactly one of them."""
    target = target_mb * 2**20
    dataset = read_dataset(out)
    for split in common_schema.SPLITS:
        stored = sum(len(r["encoded"]) for r in dataset[split])
        assert stats["image_bytes_by_split"][split] == stored
        n = max(1, math.ceil(stored / target))
        files = common_schema.shard_files(out, split)
        assert [os.path.basename(f) for f in files] == [
            f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)
        ]
        assert stats["shards"][split]["files"] == stats["sharding"]["num_shards"][split] == n
        for i, path in enumerate(files):
            for batch in common_schema.read_records([path]).batch(256):
                for name in schema.parse_examples(batch)[schema.FILENAME].numpy():
                    assert sharding.shard_index(name.decode(), n) == i
    assert sum(len(records) for records in dataset.values()) == stats["kept"]


def test_shard_count_follows_the_stored_bytes(sample_data, tmp_path):
    target_mb = 0.05
    out = str(tmp_path / "dataset")
    stats = run(
        out,
        csv_uri=sample_data.csv_path,
        labels_uri=sample_data.labels_path,
        target_shard_mb=target_mb,
    )
    assert stats["kept"] == 48
    assert stats["sharding"]["num_shards"]["train"] >= 5  # About 0.45 MB: 50 KB shards.
    check_shards_follow_stored_bytes(out, stats, target_mb)
    # The hash spreads a split's images evenly: over the dataset, shards average the target.
    total_bytes = sum(s["bytes"] for s in stats["shards"].values())
    total_shards = sum(s["files"] for s in stats["shards"].values())
    assert total_bytes / total_shards <= 1.25 * target_mb * 2**20
    report = Path(out, beam_pipeline.REPORT_FILE).read_text()
    n = stats["sharding"]["num_shards"]["train"]
    assert f"| train | {stats['splits']['train']} | {n} |" in report


def test_shard_count_follows_what_is_stored_not_what_is_read(tmp_path):
    """Large images scaled down by max_image_side store far fewer bytes than they read:
    the shard count follows the stored bytes (an estimate from the input sizes gave
    several times more shards, each a fraction of the target)."""
    tree = tmp_path / "tree"
    for label in ("a", "b"):
        (tree / label).mkdir(parents=True)
        for i in range(12):
            image = random_image(100 * ord(label) + i, size=(900, 700))
            (tree / label / f"{i}.jpg").write_bytes(encoded(image, "JPEG", quality=95))
    input_bytes = sum(p.stat().st_size for p in tree.glob("*/*.jpg"))
    target_mb = 0.1
    out = str(tmp_path / "out")
    stats = run(out, image_dir=str(tree), max_image_side=128, target_shard_mb=target_mb)
    assert stats["kept"] == 24 and stats["resized"] == 24
    assert stats["image_bytes"] * 10 < input_bytes  # Resizing stores under a tenth.
    check_shards_follow_stored_bytes(out, stats, target_mb)
    assert sum(stats["sharding"]["num_shards"].values()) < input_bytes / (target_mb * 2**20)


def test_an_image_that_changes_during_the_run_is_rejected_not_half_written(
    sample_data, tmp_path, monkeypatch
):
    """The shard writer reads each image again: one replaced after its check (here just
    before that second read) is rejected as changed_during_run, and neither its shard, its
    manifest nor the counts hold it; one deleted meanwhile is a missing_file."""
    tree = tmp_path / "tree"
    shutil.copytree(sample_data.image_dir, tree)
    changed, deleted = sorted(str(p) for p in tree.glob("circle/*.jpg"))[:2]
    original = beam_pipeline.stored_image

    def replace_then_read(record, max_image_side):
        if record.uri == changed:
            Path(changed).write_bytes(jpeg_bytes(random_image(7), quality=90))
        if record.uri == deleted:
            os.remove(deleted)
        return original(record, max_image_side)

    monkeypatch.setattr(beam_pipeline, "stored_image", replace_then_read)
    out = str(tmp_path / "out")
    stats = run(out, image_dir=str(tree), max_error_fraction=0.1)
    assert stats["kept"] == 46
    assert stats["rejected_by_reason"] == {"changed_during_run": 1, "missing_file": 1}
    errors = {e["uri"]: e for e in read_errors(out)}
    assert set(errors) == {changed, deleted}
    assert "changed while create_tfrecords ran" in errors[changed]["detail"]
    assert errors[changed]["label"] == "circle"
    stored = {r["filename"] for records in read_dataset(out).values() for r in records}
    listed = {uri for split in common_schema.SPLITS for uri, _ in read_manifest(out, split)}
    assert len(stored) == 46 and stored == listed and not {changed, deleted} & stored
    assert sum(sum(c.values()) for c in stats["classes"].values()) == 46


def test_stored_image_gives_back_the_checked_bytes(tmp_path):
    """A kept JPEG stores the file's bytes, a converted image its re-encoding: both read
    again equal the bytes the check digested."""
    jpeg, png = tmp_path / "a.jpg", tmp_path / "b.png"
    jpeg.write_bytes(jpeg_bytes(random_image(1), quality=90))
    png.write_bytes(encoded(random_image(2), "PNG"))
    from components.create_tfrecords.records import ReadAndCheckImage, stored_image

    check = ReadAndCheckImage(["x"], 0.8, 0.1, 1024)
    check.setup()
    for path, reencoded in ((jpeg, False), (png, True)):
        (record,) = check.process((str(path), "x"))
        assert record.reencoded is reencoded
        data = stored_image(record, 1024)
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.stored_bytes
        assert (data == path.read_bytes()) is not reencoded
    png.write_bytes(encoded(random_image(3), "PNG"))
    with pytest.raises(ImageRejected, match="changed while"):
        stored_image(record, 1024)


# --------------------------------------------------------------------------- every bad input


def random_image(seed: int, size=(120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def corpus(sample_data, tmp_path_factory):
    """A CSV listing every kind of input the stage must handle, and the expected outcome
    of each: ``kept`` (URI -> label, stored size, conversions) or ``rejected`` (URI ->
    reason)."""
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    samples = sorted(glob.glob(os.path.join(sample_data.image_dir, "*", "*.jpg")))
    rows: list[str] = []
    kept: dict[str, dict] = {}
    rejected: dict[str, str] = {}

    def path_of(name: str) -> str:
        return str(images / name)

    def add(name, data, label, reason=None, size=(120, 90), conversions=(), row=None):
        path = path_of(name)
        if data is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).write_bytes(data)
        if reason:
            rejected[path] = reason
        else:
            kept[path] = {"label": label, "size": size, "conversions": conversions}
        rows.append(row or f"{path},{label}")
        return path

    # Original JPEGs, listed relative to the CSV and with surrounding whitespace.
    for i, label in enumerate(("circle", "square", "triangle", "cross")):
        for j, sample in enumerate([p for p in samples if f"/{label}/" in p][:2]):
            name = os.path.basename(sample)
            size = Image.open(sample).size
            row = f"images/{name},{label}" if j == 0 else f"  {path_of(name)} ,  {label}  "
            add(name, Path(sample).read_bytes(), label, size=size, row=row)
            kept[path_of(name)]["original"] = True
        del i

    # Files that cannot be read, or hold no image.
    sample = Path(samples[0]).read_bytes()
    add("missing.jpg", None, "circle", "missing_file")
    os.mkdir(path_of("folder.jpg"))  # Exists, but is no file.
    add("folder.jpg", None, "square", "unreadable_file")
    add("empty.jpg", b"", "square", "empty_file")
    add("truncated.jpg", sample[: len(sample) // 2], "circle", "corrupt_image")
    add("text.jpg", b"hello, I am not a JPEG\n" * 10, "cross", "corrupt_image")

    # Other formats and modes, re-encoded as RGB JPEGs.
    add(
        "rgba.png",
        encoded(random_image(1).convert("RGBA"), "PNG"),
        "square",
        conversions=("format", "mode"),
    )
    add("palette.gif", encoded(random_image(2), "GIF"), "triangle", conversions=("format", "mode"))
    add("plain.bmp", encoded(random_image(3), "BMP"), "cross", conversions=("format",))
    add("photo.webp", encoded(random_image(4), "WEBP"), "circle", conversions=("format",))
    add(
        "grey.jpg", encoded(random_image(5).convert("L"), "JPEG"), "triangle", conversions=("mode",)
    )
    add(
        "cmyk.jpg", encoded(random_image(6).convert("CMYK"), "JPEG"), "cross", conversions=("mode",)
    )
    halves = Image.new("RGB", (120, 90), (255, 0, 0))
    halves.paste((0, 0, 255), (60, 0, 120, 90))  # Left red, right blue.
    exif = Image.Exif()
    exif[0x0112] = 6  # Displayed rotated 90 degrees clockwise: left comes on top.
    rotated = add(
        "rotated.jpg",
        encoded(halves, "JPEG", exif=exif.tobytes()),
        "square",
        size=(90, 120),
        conversions=("orientation",),
    )
    add(
        "big.jpg",
        encoded(random_image(7, (1200, 900)), "JPEG"),
        "circle",
        size=(512, 384),
        conversions=("resized",),
    )

    # Labels and lines.
    add("hexagon.jpg", encoded(random_image(8), "JPEG"), "hexagon", "unknown_label")
    conflict = add("conflict.jpg", encoded(random_image(9), "JPEG"), "circle", "conflicting_labels")
    rows.append(f"{conflict},square")
    rows.append(rows[0])  # A repeated line is kept once, not rejected.
    rows[3:3] = ["", "   ", "only-one-field", "a.jpg,circle,extra", '"unclosed.jpg,circle']
    rows.insert(0, "uri,label")  # A header line is tolerated.

    # Byte-identical copies: the smallest URI is kept, the others rejected.
    copy = encoded(random_image(10), "JPEG")
    add("dup/b_copy.jpg", copy, "cross", "duplicate_image")
    add("dup/a_copy.jpg", copy, "cross", size=(120, 90))
    add("dup/c_copy.jpg", copy, "cross", "duplicate_image")
    # The same pixels in two containers store the same JPEG: duplicates too.
    add("same/pixels.png", encoded(random_image(11), "PNG"), "circle", "duplicate_image")
    add("same/pixels.bmp", encoded(random_image(11), "BMP"), "circle", conversions=("format",))
    # The same bytes under different labels: the truth is unknown, all are rejected.
    contested = encoded(random_image(12), "JPEG")
    add("contested_1.jpg", contested, "circle", "conflicting_labels")
    add("contested_2.jpg", contested, "square", "conflicting_labels")

    csv_path = root / "listing.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    labels_path = root / "labels.txt"  # Blank lines and repeats are dropped.
    labels_path.write_text("circle\n\nsquare\ncircle\n  \ntriangle\ncross\nsquare\n")
    return {
        "csv": str(csv_path),
        "labels": str(labels_path),
        "kept": kept,
        "rejected": rejected,
        "malformed": 3,
        "rotated": rotated,
        "kept_copy": path_of("dup/a_copy.jpg"),
    }


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    """The corpus through the component under kfp local, once for the module (the
    function-scoped ``kfp_local`` fixture cannot serve a module-scoped one)."""
    from kfp import local

    from components.create_tfrecords.component import create_tfrecords

    root = tmp_path_factory.mktemp("kfp_local") / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = create_tfrecords(
        csv_uri=corpus["csv"],
        labels_uri=corpus["labels"],
        max_image_side=512,
        max_error_fraction=0.6,
    )
    dataset, report = task.outputs["dataset"], task.outputs["report"]
    assert dataset.path.startswith(str(root))
    stats = json.loads(Path(dataset.path, common_schema.STATS_FILE).read_text())
    return {
        "dir": dataset.path,
        "metadata": dataset.metadata,
        "stats": stats,
        "records": read_dataset(dataset.path),
        "errors": read_errors(dataset.path),
        "report": Path(report.path).read_text(),
    }


def test_every_good_image_is_kept_exactly_once(corpus, corpus_run):
    records = [r for split in common_schema.SPLITS for r in corpus_run["records"][split]]
    filenames = [r["filename"] for r in records]
    assert sorted(filenames) == sorted(corpus["kept"])  # None lost, none twice.
    labels = corpus_run["stats"]["labels"]
    assert labels == ["circle", "square", "triangle", "cross"]
    for split in common_schema.SPLITS:
        for r in corpus_run["records"][split]:
            assert r["text"] == corpus["kept"][r["filename"]]["label"]
            assert labels[r["label"]] == r["text"]
            assert assign_split(r["filename"], 0.8, 0.1) == split
        manifest = read_manifest(corpus_run["dir"], split)
        assert sorted(manifest) == sorted(
            (r["filename"], r["text"]) for r in corpus_run["records"][split]
        )
    assert {split for split in common_schema.SPLITS if corpus_run["records"][split]} >= {"train"}


def test_kept_images_are_rgb_jpegs_converted_as_needed(corpus, corpus_run):
    by_name = {r["filename"]: r for split in corpus_run["records"].values() for r in split}
    for uri, expected in corpus["kept"].items():
        r = by_name[uri]
        image = decode(r["encoded"])
        assert (image.format, image.mode, r["format"]) == ("JPEG", "RGB", "jpeg"), uri
        assert image.size == (r["width"], r["height"]) == expected["size"], uri
        if expected.get("original") or uri == corpus["kept_copy"]:
            assert r["encoded"] == Path(uri).read_bytes(), uri
        else:
            assert r["encoded"] != Path(uri).read_bytes(), uri
    # EXIF orientation applied: the red left half is now on top.
    upright = decode(by_name[corpus["rotated"]]["encoded"])
    top, bottom = upright.getpixel((45, 10)), upright.getpixel((45, 110))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    stats = corpus_run["stats"]
    expected = {name: 0 for name in ("format", "mode", "orientation", "resized")}
    for item in corpus["kept"].values():
        for name in item["conversions"]:
            expected[name] += 1
    assert stats["conversions"] == expected
    assert stats["reencoded"] == sum(bool(item["conversions"]) for item in corpus["kept"].values())
    assert stats["resized"] == 1


def test_every_bad_input_is_rejected_with_its_reason(corpus, corpus_run):
    errors = corpus_run["errors"]
    for error in errors:
        assert set(error) == {"uri", "label", "reason", "detail", "stage"}
        assert error["stage"] == "create_tfrecords" and error["detail"]
    by_uri = {e["uri"]: e for e in errors if e["reason"] != "malformed_line"}
    assert {uri: e["reason"] for uri, e in by_uri.items()} == corpus["rejected"]
    assert len(by_uri) == len(errors) - corpus["malformed"]  # One error per input.
    malformed = [e for e in errors if e["reason"] == "malformed_line"]
    assert {e["uri"] for e in malformed} == {corpus["csv"]}
    assert sorted(e["detail"].split(": ")[-1] for e in malformed) == sorted(
        ["'only-one-field'", "'a.jpg,circle,extra'", "'\"unclosed.jpg,circle'"]
    )
    conflict = by_uri[str(Path(corpus["csv"]).parent / "images" / "conflict.jpg")]
    assert conflict["label"] == "circle|square"
    for name in ("dup/b_copy.jpg", "dup/c_copy.jpg"):
        error = by_uri[str(Path(corpus["csv"]).parent / "images" / name)]
        assert corpus["kept_copy"] in error["detail"] and error["label"] == "cross"
    pixels = by_uri[str(Path(corpus["csv"]).parent / "images" / "same" / "pixels.png")]
    assert pixels["detail"].endswith("pixels.bmp, which is kept")
    contested = [e for e in errors if "contested" in e["uri"]]
    assert sorted(e["label"] for e in contested) == ["circle", "square"]
    assert all("different labels" in e["detail"] for e in contested)


def test_counts_are_in_stats_and_artifact_metadata(corpus, corpus_run):
    stats, metadata = corpus_run["stats"], corpus_run["metadata"]
    reasons = {}
    for reason in corpus["rejected"].values():
        reasons[reason] = reasons.get(reason, 0) + 1
    reasons["malformed_line"] = corpus["malformed"]
    assert stats["rejected_by_reason"] == dict(sorted(reasons.items()))
    assert stats["rejected"] == len(corpus_run["errors"]) == sum(reasons.values())
    assert stats["kept"] == len(corpus["kept"])
    assert stats["ignored"] == {
        "csv_header_lines": 1,
        "blank_lines": 2,
        "repeated_uri_lines": 1,
        "non_image_files": 0,
        "label_file_blank_lines": 2,
        "label_file_repeated_labels": 2,
    }
    examples = stats["rejected_examples"]
    assert set(examples) == set(reasons)
    assert all(1 <= len(pairs) <= 3 for pairs in examples.values())
    assert [uri for uri, _ in examples["corrupt_image"]] == sorted(
        uri for uri, reason in corpus["rejected"].items() if reason == "corrupt_image"
    )
    for key in ("kept", "rejected", "rejected_by_reason", "ignored", "conversions"):
        assert metadata[key] == stats[key], key
    assert {s: int(n) for s, n in metadata["splits"].items()} == stats["splits"]
    assert metadata["image_sizes"]["width"]["max"] == 512  # The resized one.
    assert metadata["shards"]["train"]["files"] == 1


def test_markdown_report_shows_the_counts(corpus_run):
    report, stats = corpus_run["report"], corpus_run["stats"]
    assert report == Path(corpus_run["dir"], beam_pipeline.REPORT_FILE).read_text()
    assert report.startswith("# create_tfrecords report")
    assert f"**{stats['kept']} images kept**, {stats['rejected']} inputs rejected" in report
    totals = " | ".join(str(stats["splits"][s]) for s in common_schema.SPLITS)
    assert f"| **total** | {totals} | {stats['kept']} |" in report
    for reason, n in stats["rejected_by_reason"].items():
        assert f"| {reason} | {n} | " in report
    assert "missing.jpg: no such file" in report
    assert "| repeated_uri_lines | 1 |" in report
    assert "| 512-1023 | 1 |" in report  # The resized image's long side.
    assert "## Shards" in report and "| train |" in report


def test_too_many_bad_inputs_fail_the_run(corpus, tmp_path):
    out = str(tmp_path / "dataset")
    with pytest.raises(ValueError) as caught:
        run(out, csv_uri=corpus["csv"], labels_uri=corpus["labels"], max_image_side=512)
    # Duplicates lose nothing (a copy is kept): they count neither as errors nor in the total.
    duplicates = sum(r == "duplicate_image" for r in corpus["rejected"].values())
    errors = len(corpus["rejected"]) - duplicates + corpus["malformed"]
    total = len(corpus["kept"]) + errors
    message = str(caught.value)
    assert f"rejected {errors} of {total} input images" in message
    assert "corrupt_image=2" in message and "missing_file=1" in message
    assert os.path.join(out, "errors.jsonl") in message
    assert len(read_errors(out)) == errors + duplicates  # The errors are there to look at.
    assert os.path.exists(os.path.join(out, beam_pipeline.REPORT_FILE))


def test_empty_input_fails_the_run(sample_data, tmp_path):
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("uri,label\n\n  \n")
    with pytest.raises(ValueError, match=f"no input images in {csv_path}"):
        run(str(tmp_path / "out"), csv_uri=str(csv_path), labels_uri=sample_data.labels_path)
    stats = {"kept": 0, "rejected": 3, "rejected_by_reason": {"missing_file": 3}}
    with pytest.raises(ValueError, match="rejected 3 of 3 .*none was kept"):
        beam_pipeline.check_error_share(stats, 1.0, "/out")
    stats = {"kept": 10, "rejected": 30, "rejected_by_reason": {"duplicate_image": 30}}
    beam_pipeline.check_error_share(stats, 0.0, "/out")  # Duplicates are no errors.


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
    assert stats["ignored"]["non_image_files"] == 1
    assert sum(stats["classes"][s]["hexagon"] for s in common_schema.SPLITS) == 0
    assert {e["label"] for e in read_errors(out)} == {"cross"}
    records = [r for split in read_dataset(out).values() for r in split]
    assert all(stats["labels"][r["label"]] == r["text"] for r in records)
    assert len(records) == 36


# --------------------------------------------------------------------------- CLI


def test_cli_passes_options_and_beam_args_and_prints_stats(monkeypatch, capsys):
    """The command line maps its flags onto run() (tested above) and prints the stats."""
    from components.create_tfrecords.__main__ import main

    calls = []

    @functools.wraps(beam_pipeline.run)  # the command line reads its defaults from run()
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
        "--target-shard-mb",
        "64",
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
        "target_shard_mb": 64.0,
        "max_image_side": 0,
        "max_error_fraction": 0.1,
        "runner": "DataflowRunner",
        "beam_args": ["--region=r", "--project", "p"],
        "direct_num_workers": 1,
    }
    assert main(["--output-dir", "o", "--image-dir", "x", "--train-fraction", "2"]) == 1
    assert "train_fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Exactly one input.
        main(["--output-dir", "o", "--image-dir", "x", "--csv", "a.csv"])
