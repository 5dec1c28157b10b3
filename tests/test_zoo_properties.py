"""The MONAI model zoo's property check (``check_properties`` of MONAI's train and inference
workflow properties, as its ``ci/verify_bundle.py`` runs it) passes on the bundle's configs."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from monai.bundle import create_workflow


@pytest.fixture(scope="module")
def prepared(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "prepare", str(synthetic_dir), str(out)], check=True
    )
    return out


@pytest.mark.parametrize(
    "config, workflow_type, extra",
    [("train.json", "train", {}), ("inference.json", "infer", {"sections": ["validation"]})],
)
def test_zoo_workflow_properties_are_all_defined(tmp_path, prepared, config, workflow_type, extra):
    workflow = create_workflow(
        config_file=str(REPO_ROOT / "configs" / config),
        workflow_type=workflow_type,
        meta_file=str(REPO_ROOT / "configs" / "metadata.json"),
        logging_file=str(REPO_ROOT / "configs" / "logging.conf"),
        bundle_root=str(tmp_path),
        dataset_dir=str(prepared),
        init="scratch",
        backbone="resnet10",
        **extra,
    )
    assert workflow.check_properties() == []
