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
from bundle.preparation import PreparationError, prepare, summarize  # noqa: E402

if __name__ == "__main__":
    try:
        fire.Fire({"prepare": prepare, "summarize": summarize})
    except PreparationError as error:  # one line per problem, exit status 1, no traceback
        print(error, file=sys.stderr)
        raise SystemExit(1) from None
