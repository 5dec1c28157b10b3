"""Shared pytest fixtures: the repository root and the read-only MoNuSeg folder."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NUCLEI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
MONUSEG_TRAIN = SHARED_DATA / "monuseg" / "train"


@pytest.fixture
def monuseg_train() -> Path:
    """The MoNuSeg 2018 training folder (images/, masks/, annotations/); skips when absent."""
    if not (MONUSEG_TRAIN / "images").is_dir():
        pytest.skip(f"shared MoNuSeg data not found at {MONUSEG_TRAIN}")
    return MONUSEG_TRAIN


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small MoNuSeg-style folder of synthetic tiles (images/, masks/), made once per session."""
    from bundle.synthetic import synthesize_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    synthesize_dataset(folder, n_tiles=5, shape=(192, 192), seed=0)
    return folder
