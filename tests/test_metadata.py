"""The bundle metadata against the MONAI schema (offline), and the networks against the metadata."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, SHARED_DATA

SCHEMA = SHARED_DATA.parent / "schemas" / "meta_schema_20240725.json"


def monai_bundle(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_metadata_matches_the_schema(tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)  # verify_metadata only reads a local file that exists: no download
    result = monai_bundle(
        "verify_metadata",
        "--meta_file",
        str(REPO_ROOT / "configs" / "metadata.json"),
        "--filepath",
        str(schema),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("configs", [["train.json"], ["inference.json"]])
def test_networks_match_the_declared_inputs_and_outputs(tmp_path, configs):
    files = "[" + ",".join(f"'{REPO_ROOT / 'configs' / c}'" for c in configs) + "]"
    result = monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(REPO_ROOT / "configs" / "metadata.json"),
        "--config_file",
        files,  # network_def is the architecture only: no encoder file needed, whatever init says
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_every_declared_tensor_states_its_value_range():
    metadata = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
    formats = metadata["network_data_format"]
    tensors = {**formats["inputs"], **formats["outputs"]}
    assert tensors and all(len(tensor["value_range"]) == 2 for tensor in tensors.values()), tensors


# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "skimage": "scikit-image", "ignite": "pytorch-ignite"}


def test_every_package_the_bundle_imports_is_in_the_metadata():
    import ast

    metadata = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
    listed = set(metadata["required_packages_version"]) | {"monai", "torch", "numpy"}
    imported = set()
    for path in (REPO_ROOT / "bundle").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {DISTRIBUTIONS.get(name, name) for name in imported - set(sys.stdlib_module_names) - {"bundle"}}
    assert third_party - listed == set()
