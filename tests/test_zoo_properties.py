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


# Runs `python -m monai.bundle` with the project's editable install hidden, as in the model zoo,
# where the bundle's code is found only through `bundle_root` on sys.path.
WITHOUT_EDITABLE_INSTALL = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f) + getattr(f, '__module__', '')]; "
    "sys.argv = ['monai.bundle', *sys.argv[1:]]; "
    "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize("config", ["inference.json", "train.json", "pretrain.json"])
def test_configs_find_the_bundle_code_from_any_folder(tmp_path, config):
    """Each config puts ``bundle_root`` on sys.path before its first ``bundle.`` component (zoo layout)."""
    import shutil

    root = tmp_path / "models" / "nuclei_bundle"
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    shutil.copytree(REPO_ROOT / "bundle", root / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EDITABLE_INSTALL, "run", "--config_file", str(root / "configs" / config)]
        + ["--bundle_root", str(root), "--help"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--bundle_root" in result.stdout
