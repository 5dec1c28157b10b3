"""Run a bundle workflow the way users do: ``python -m monai.bundle run`` in a subprocess."""

import os
import subprocess

from bundle.presets import preset_overrides
from bundle.runner import bundle_run_command

#: Tiny pretraining settings for workflow tests: the tiny preset, one epoch of 2 iterations.
TINY_PRETRAIN = {**preset_overrides("tiny", "pretrain"), "log_every": 1}


def single_thread_env() -> dict[str, str]:
    """The environment with one OpenMP thread: on a loaded 2-core machine, torch's spinning
    threads slow tiny networks ~30x, and one thread makes CPU results independent of the core count."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_bundle(config_files: list[str], cwd, **overrides) -> subprocess.CompletedProcess:
    """Run the given configs (names under configs/) with ``--key value`` overrides; return the process."""
    return subprocess.run(
        bundle_run_command(config_files, **overrides),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=single_thread_env(),
    )
