"""Cohorts of slides (or tiles) over several processes: each rank's share, and one summary of the run.

The processes are those of ``torch.distributed`` (``torchrun``, one or many nodes; gloo on
CPUs, NCCL on GPUs); without a process group the run is one process of one. Each rank
writes the records of its slides to ``<output_dir>/.cohort/rank<r>.json``; after a barrier
rank 0 merges them into ``<output_dir>/cohort_summary.json`` and removes the folder: per slide its status (done,
skipped, failed), nuclei, tissue area and seconds, and the totals.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist
from bundle.atomic import atomic_path

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

SUMMARY_NAME = "cohort_summary.json"
RANKS_FOLDER = ".cohort"


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process: from ``torch.distributed`` when it is initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_of_rank(
    items: Sequence[Item], rank: int, world_size: int, key: Callable[[Item], Hashable] | None = None
) -> list[Item]:
    """Items ``rank, rank + world_size, ...``: every item goes to exactly one rank, in turn.

    With ``key``, the distinct keys are dealt in turn instead (in order of first appearance),
    so items with equal keys go to the same rank; the share keeps the order of ``items``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    if key is None:
        return list(items[rank::world_size])
    mine = set(list(dict.fromkeys(key(item) for item in items))[rank::world_size])
    return [item for item in items if key(item) in mine]


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if process_rank()[1] > 1:
        dist.barrier()


def _totals(records: list[dict]) -> dict:
    done = [r for r in records if r["status"] == "done"]
    areas = [r.get("tissue_area_mm2") for r in done]
    return {
        "slides": len(records),
        **{status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed")},
        "nuclei": sum(r["nuclei"] for r in done),
        "tissue_area_mm2": sum(areas) if areas and None not in areas else None,
        "seconds": sum(r["seconds"] for r in done),
    }


def write_cohort_summary(output_dir: str | os.PathLike, records: list[dict], rank: int, world_size: int) -> None:
    """Write this rank's records; on rank 0, after every rank has, the merged ``cohort_summary.json``."""
    folder = Path(output_dir) / RANKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"rank{rank}.json") as tmp:
        tmp.write_text(json.dumps(records, indent=1))
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        return
    merged = [record for r in range(world_size) for record in json.loads((folder / f"rank{r}.json").read_text())]
    summary = {"world_size": world_size, "totals": _totals(merged), "slides": merged}
    with atomic_path(Path(output_dir) / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    shutil.rmtree(folder)  # every rank wrote before the barrier: the merged summary holds it all
    totals = summary["totals"]
    logger.info(
        "cohort: %d slides (%d done, %d skipped, %d failed) on %d process(es), %d nuclei, %.0f s -> %s",
        totals["slides"], totals["done"], totals["skipped"], totals["failed"], world_size,
        totals["nuclei"], totals["seconds"], Path(output_dir) / SUMMARY_NAME,
    )  # fmt: skip
