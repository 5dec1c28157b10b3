"""Run a bundle workflow the way users do: ``python -m monai.bundle run`` in a subprocess."""

import json
import subprocess
import sys

from conftest import REPO_ROOT

# Tiny pretraining settings for workflow tests: 2 iterations of 2 triplets at 96 px.
TINY_PRETRAIN = {
    "backbone": "resnet10",
    "crop_size": 96,
    "max_shift": 32,
    "negative_sizes": [64, 48, 32],
    "batch_size": 2,
    "triplets_per_epoch": 4,
    "num_workers": 0,
    "max_epochs": 1,
    "log_every": 1,
}


def run_bundle(config_files: list[str], cwd, **overrides) -> subprocess.CompletedProcess:
    """Run the given configs (names under configs/) with ``--key value`` overrides; return the process."""
    files = [str(REPO_ROOT / "configs" / name) for name in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
