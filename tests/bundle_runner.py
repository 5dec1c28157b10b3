"""Run a bundle workflow the way users do: ``python -m monai.bundle run`` in a subprocess."""

import json
import os
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


def cli_value(value) -> str:
    """``value`` as the bundle CLI (python-fire) parses it back: JSON, except True/False/None,
    which fire reads only in Python spelling (``false`` would arrive as the truthy string 'false')."""
    if isinstance(value, str):
        return value
    return repr(value) if value is None or isinstance(value, bool) else json.dumps(value)


def bundle_command(config_files: list[str], **overrides) -> list[str]:
    """The ``python -m monai.bundle run`` command line of the given configs (names under configs/, or paths)."""
    files = [str(REPO_ROOT / "configs" / name) for name in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    for key, value in overrides.items():
        command += [f"--{key}", cli_value(value)]
    return command


def single_thread_env() -> dict[str, str]:
    """The environment with one OpenMP thread: on a loaded 2-core machine, torch's spinning
    threads slow tiny networks ~30x, and one thread makes CPU results independent of the core count."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_bundle(config_files: list[str], cwd, **overrides) -> subprocess.CompletedProcess:
    """Run the given configs (names under configs/) with ``--key value`` overrides; return the process."""
    return subprocess.run(
        bundle_command(config_files, **overrides),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=single_thread_env(),
    )
