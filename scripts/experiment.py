"""Experiment runner: initialisation x label fraction x seed, each cell through the bundle configs.

    python scripts/experiment.py run --preset cpu --data ../shared/data/monuseg/train
    python scripts/experiment.py run --preset cpu --data DIR --inits scratch,ssl --fractions 1.0,0.1 --seeds 0,1
    python scripts/experiment.py run --preset cpu --data DIR --folds 5          # K-fold cross-validation
    python scripts/experiment.py run --preset cpu --data DIR --folds 5 --only_folds 0,1   # two folds now, the rest later
    python scripts/experiment.py report --preset cpu                            # tables + plot only
    python scripts/experiment.py run --preset cpu --out experiments/cpu_hardneg --inits ssl \
        --pretrain_overrides '{"negative_sizes": [112, 96]}' --name cpu_hardneg  # a variant, reported apart

A cell = pretrain (once per proxy and seed, reused) -> fine-tune (train.json) -> evaluate
(train.json + evaluate.json), each a ``python -m monai.bundle run`` with the preset's
overrides. Finished steps are skipped on a rerun (their output files exist), so an
interrupted grid resumes where it stopped. Fine-tuning runs a fixed number of optimiser
steps whatever the label fraction (epochs are derived), so fractions differ only in data.
``report`` writes ``docs/results/<preset>.md`` (tables shaped like the paper's Tables 1-4)
``docs/results/<preset>.png`` (AJI against label fraction per initialisation) and
``docs/results/<preset>_tiles.csv`` (every cell's per-tile scores), and appends
``docs/results/<preset>_reading.md`` (notes written by hand) when it exists.

The steps read ``configs/`` and ``bundle/`` of this checkout when they start, and each cell
records the commit it ran on (``git describe --dirty``); the report lists them. To keep
editing while a long grid runs, run it from its own worktree (``git worktree add``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python scripts/experiment.py` from anywhere

import fire  # noqa: E402
from bundle.experiment_report import report  # noqa: E402
from bundle.experiments import run  # noqa: E402

if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
