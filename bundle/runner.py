"""The ``python -m monai.bundle run`` command line of a workflow, built in one place for the
demo, the experiment runner and the tests."""

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The bundle root: the folder holding bundle/ and configs/ (repository and model-zoo layouts alike).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The bundle's configs/, beside the bundle/ package.
CONFIGS_DIR = REPO_ROOT / "configs"


def cli_value(value: Any) -> str:
    """``value`` as the bundle CLI (python-fire) parses it back: JSON, except True/False/None,
    which fire reads only in Python spelling (``false`` would arrive as the truthy string 'false')."""
    if isinstance(value, str):
        return value
    return repr(value) if value is None or isinstance(value, bool) else json.dumps(value)


def bundle_run_command(config_files: Sequence[str | os.PathLike], **overrides: Any) -> list[str]:
    """``[python, -m, monai.bundle, run, --config_file, [...], --key, value, ...]`` for ``config_files``
    (names under configs/, or paths) with ``--key value`` overrides."""
    files = [str(CONFIGS_DIR / name) for name in config_files]  # an absolute path stays as it is
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    for key, value in overrides.items():
        command += [f"--{key}", cli_value(value)]
    return command
