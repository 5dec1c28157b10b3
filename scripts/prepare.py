"""Prepare a MoNuSeg-style folder for the bundle, and summarise the result.

    python scripts/prepare.py prepare --src ../shared/data/monuseg/train --out data/monuseg
    python scripts/prepare.py summarize --datalist data/monuseg/datalist.json

What it reads and writes, and when it refuses: :mod:`bundle.preparation`.
"""

import sys
from pathlib import Path

# `python scripts/prepare.py` puts scripts/ on sys.path, not the repository root: add the
# root so `import bundle` works without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fire  # noqa: E402
from bundle.preparation import prepare, summarize  # noqa: E402

if __name__ == "__main__":
    fire.Fire({"prepare": prepare, "summarize": summarize})
