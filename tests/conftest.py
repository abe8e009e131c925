"""Fixtures shared by the tests: generated sample data and a kfp local session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipelines.sample_data import SampleData, generate  # noqa: E402


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> SampleData:
    """A small generated image set (4 classes x 12 images) in both input formats."""
    return generate(str(tmp_path_factory.mktemp("sample")), per_class=12, seed=1)


@pytest.fixture
def kfp_local(tmp_path):
    """Initialises ``kfp local`` with the SubprocessRunner in this environment.

    Returns the pipeline root, under which each task writes ``<run>/<task>/<output>``.
    """
    from kfp import local

    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root
