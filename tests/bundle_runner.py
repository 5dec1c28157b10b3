"""Run a bundle workflow the way users do: ``python -m monai.bundle run`` in a subprocess."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def run_bundle(config_files: list[str], cwd, **overrides) -> subprocess.CompletedProcess:
    """Run the given configs (names under configs/) with ``--key value`` overrides; return the process."""
    files = [str(REPO_ROOT / "configs" / name) for name in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
