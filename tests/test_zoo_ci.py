"""The MONAI model zoo's own CI (``ci/verify_bundle.py`` of Project-MONAI/model-zoo) on this bundle.

Runs where a snapshot of the zoo repository is at hand: set ``MODEL_ZOO_DIR`` to a folder
holding its ``ci/``; skipped otherwise (the zoo is not a dependency, and nothing is
downloaded). The bundle is laid out as a zoo submission (``models/<name>/`` with configs,
the ``bundle`` package, docs, LICENSE and ``models/model.pt``), with random weights for the
network ``inference.json`` configures, as the zoo's own ``_produce_fake_weights`` does; the
metadata schema is the local copy in ``../shared/schemas`` instead of the download.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SHARED_DATA
from monai.bundle import ConfigParser

ZOO = Path(os.environ.get("MODEL_ZOO_DIR", "/nonexistent"))
SCHEMA = SHARED_DATA.parent / "schemas" / "meta_schema_20240725.json"
NAME = "pathology_nuclei_ssl_segmentation"

pytestmark = pytest.mark.skipif(
    not (ZOO / "ci" / "verify_bundle.py").is_file(),
    reason="no model-zoo snapshot: set MODEL_ZOO_DIR to a Project-MONAI/model-zoo checkout",
)


@pytest.fixture
def zoo_submission(tmp_path) -> Path:
    """``models/`` of a zoo checkout holding this bundle as ``NAME``; returns the ``models`` folder."""
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    models = tmp_path / "models"
    root = models / NAME
    for part in ("configs", "bundle", "docs", "scripts"):
        shutil.copytree(REPO_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "LICENSE", root / "LICENSE")
    (models / "model_info.json").write_text("{}")  # no released version yet: any version is new
    (root / "eval").mkdir()
    shutil.copy(SCHEMA, root / "eval" / "schema.json")  # what the zoo's prepare_schema downloads
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return models


def test_the_zoo_premerge_checks_pass(zoo_submission, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ZOO / "ci"), *sys.path])
    import verify_bundle

    metadata = json.loads((zoo_submission / NAME / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    # "full": layout, version and changelog, metadata schema, network in/out shapes, TorchScript export
    verify_bundle.verify(NAME, str(zoo_submission), mode="full")
    assert (zoo_submission / NAME / "models" / "verify_model.ts").is_file()
