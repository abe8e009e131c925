"""The generated sample set: deterministic, in both input formats, with varied images."""

import csv
import hashlib
import os

import pytest
from PIL import Image

from pipelines import run_local
from pipelines.sample_data import CLASSES, generate


def _digests(root):
    return {
        os.path.relpath(os.path.join(d, f), root): hashlib.sha256(
            open(os.path.join(d, f), "rb").read()
        ).hexdigest()
        for d, _, files in os.walk(root)
        for f in files
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate(str(tmp_path / "a"), per_class=3, seed=7)
    b = generate(str(tmp_path / "b"), per_class=3, seed=7)
    c = generate(str(tmp_path / "c"), per_class=3, seed=8)
    assert _digests(a.image_dir) == _digests(b.image_dir)
    assert _digests(a.image_dir).keys() == _digests(c.image_dir).keys()
    assert _digests(a.image_dir) != _digests(c.image_dir)


def test_both_formats_describe_the_same_labelled_jpegs(tmp_path):
    data = generate(str(tmp_path), per_class=5)
    with open(data.csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == data.count == 5 * len(CLASSES)
    for uri, label in rows:
        assert os.path.dirname(uri) == os.path.join(data.image_dir, label)
        with Image.open(uri) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
    with open(data.labels_path) as f:
        assert f.read().split() == list(CLASSES)
    assert sorted(os.listdir(data.image_dir)) == sorted(CLASSES)


def test_images_vary_in_size(tmp_path):
    data = generate(str(tmp_path), per_class=6)
    sizes = set()
    for d, _, files in os.walk(data.image_dir):
        for f in files:
            with Image.open(os.path.join(d, f)) as image:
                sizes.add(image.size)
    assert len(sizes) > data.count // 2


def test_run_local_cli_needs_labels_with_a_csv(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_local.main(["--csv", "images.csv"])
    assert exit_info.value.code == 2
    assert "--csv needs --labels" in capsys.readouterr().err


def test_run_local_cli_needs_exactly_one_input(capsys):
    with pytest.raises(SystemExit):
        run_local.main(["--work-dir", "x"])
    with pytest.raises(SystemExit):
        run_local.main(["--image-dir", "a", "--csv", "b", "--labels", "c"])
    assert "not allowed with" in capsys.readouterr().err
