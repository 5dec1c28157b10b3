"""Write the scalars of TensorBoard event files under a folder as one CSV (tag, step, value).

python scripts/tb_to_csv.py runs/pretrain curves.csv
"""

import csv
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.atomic import atomic_path  # noqa: E402
from bundle.scalars import read_scalars  # noqa: E402


def tb_to_csv(log_dir: str, out_csv: str) -> None:
    """Every scalar of every event file under ``log_dir`` into ``out_csv``."""
    rows = [(tag, step, value) for tag, points in read_scalars(log_dir).items() for step, value in points]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["tag", "step", "value"])
        writer.writerows(rows)
    print(f"{len(rows)} scalars from {log_dir} -> {out_csv}")


if __name__ == "__main__":
    fire.Fire(tb_to_csv)
