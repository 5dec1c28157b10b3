"""Benchmarks of the bundle's library code, one subcommand each.

    python scripts/benchmark.py metrics [--repeats 20] [--reference_repeats 3]

``metrics``: ``bundle.metrics.nuclei_metrics`` (all scores from one overlap table) against
the per-nucleus AJI of ``bundle.metrics_reference`` on 1000x1000 label-map pairs with
~600 nuclei: (a) the MoNuSeg training mask with the nucleus count nearest 600 against a
perturbed copy of itself (shifted 1 px, eroded or dilated 1 px, 5 % of nuclei dropped,
5 % merged with a neighbour), skipped with a printed reason when the masks are absent;
(b) random touching blobs with non-contiguous ids, perturbed the same way.
Prints the median wall time of each, their ratio and the peak extra memory of
``nuclei_metrics`` (tracemalloc: the peak of the bytes allocated during one call, numpy
buffers included, inputs excluded).
"""

import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import fire
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.metrics import nuclei_metrics  # noqa: E402
from bundle.metrics_reference import aji_reference, perturb_instances, random_instance_map  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NUCLEI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
MONUSEG_MASKS = SHARED_DATA / "monuseg" / "train" / "masks"
SHAPE = (1000, 1000)
TARGET_NUCLEI = 600
SYNTHETIC_RADIUS = 12  # pixels: MoNuSeg-sized nuclei at 40x
SEED = 0
# Targets of nuclei_metrics on a ~600-nucleus 1000x1000 pair.
MAX_MEDIAN_MS = 30.0
MIN_SPEEDUP = 100.0
MAX_PEAK_MIB = 100.0


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_mib(function: Callable[[], object]) -> float:
    """Peak of the memory allocated during one call, in MiB, as tracemalloc sees it."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def monuseg_pair(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, mask, perturbed mask) for the MoNuSeg mask nearest TARGET_NUCLEI nuclei, or None."""
    paths = sorted(MONUSEG_MASKS.glob("*.png"))
    if not paths:
        print(f"monuseg: skipped, no masks/*.png under {MONUSEG_MASKS}")
        return None
    masks = {path.stem: np.asarray(Image.open(path)) for path in paths}
    name = min(masks, key=lambda stem: abs(len(np.unique(masks[stem])) - 1 - TARGET_NUCLEI))
    mask = masks[name]
    return f"monuseg {name}", mask, perturb_instances(mask, rng)


def synthetic_pair(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, random blob map, perturbed copy), ids non-contiguous in 1..4 * TARGET_NUCLEI."""
    labels = random_instance_map(rng, SHAPE, TARGET_NUCLEI, SYNTHETIC_RADIUS)
    return f"synthetic seed {SEED}", labels, perturb_instances(labels, rng)


def metrics(repeats: int = 20, reference_repeats: int = 3) -> None:
    """Time nuclei_metrics (``repeats`` calls) against the per-nucleus AJI (``reference_repeats``)."""
    rng = np.random.default_rng(SEED)
    pairs = [pair for pair in (monuseg_pair(rng), synthetic_pair(rng)) if pair is not None]
    print(f"nuclei_metrics: median of {repeats}; per-nucleus AJI: median of {reference_repeats}")
    for name, gt, pred in pairs:
        scores = nuclei_metrics(gt, pred)
        fast = median_seconds(lambda: nuclei_metrics(gt, pred), repeats)
        slow = median_seconds(lambda: aji_reference(gt, pred), reference_repeats)
        peak = peak_extra_mib(lambda: nuclei_metrics(gt, pred))
        aji_gap = abs(scores["aji"] - aji_reference(gt, pred))
        met = fast * 1e3 < MAX_MEDIAN_MS and slow / fast >= MIN_SPEEDUP and peak < MAX_PEAK_MIB
        print(
            f"{name}: {gt.shape[0]}x{gt.shape[1]} {gt.dtype}, {scores['n_gt']} gt / {scores['n_pred']} pred nuclei, "
            f"aji {scores['aji']:.4f} (|fast - reference| {aji_gap:.1e})\n"
            f"  nuclei_metrics (all scores) {fast * 1e3:.2f} ms | per-nucleus AJI {slow * 1e3:.0f} ms | "
            f"ratio {slow / fast:.0f}x | peak extra memory {peak:.1f} MiB | "
            f"targets (<{MAX_MEDIAN_MS:.0f} ms, >={MIN_SPEEDUP:.0f}x, <{MAX_PEAK_MIB:.0f} MiB) "
            f"{'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    fire.Fire({"metrics": metrics})
