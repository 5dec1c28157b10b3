"""Write the scalars of TensorBoard event files under a folder as one CSV (tag, step, value).

    python scripts/tb_to_csv.py runs/pretrain curves.csv
"""

import csv
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.atomic import atomic_path  # noqa: E402


def tb_to_csv(log_dir: str, out_csv: str) -> None:
    """Every scalar of every event file under ``log_dir`` into ``out_csv``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            rows += [(tag, event.step, event.value) for event in accumulator.Scalars(tag)]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["tag", "step", "value"])
        writer.writerows(rows)
    print(f"{len(rows)} scalars from {log_dir} -> {out_csv}")


if __name__ == "__main__":
    fire.Fire(tb_to_csv)
