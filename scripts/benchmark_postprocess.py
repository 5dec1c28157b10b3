"""Benchmark of the target and post-processing transforms on 1000x1000 synthetic tiles.

    python scripts/benchmark_postprocess.py --repeats 10

Builds a ~600-nucleus tile (bundle.synthetic), its 3-class target map (InstanceToClassMap),
and a realistic softmax map from it: one-hot, Gaussian blur, additive Gaussian noise, clipped
and renormalised. Prints the median wall time per tile of the targets, the post-processing
(ClassMapToInstances) and the two slowest outputs (GeoJSON outlines, nucleus table), and how
many nuclei the post-processing recovers.
"""

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fire
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.postprocess import ClassMapToInstances  # noqa: E402
from bundle.synthetic import synthesize_tile  # noqa: E402
from bundle.targets import N_CLASSES, InstanceToClassMap  # noqa: E402
from bundle.writers import nuclei_geojson, nucleus_table  # noqa: E402

TILE_SHAPE = (1000, 1000)
NUCLEI_PER_MEGAPIXEL = 900.0  # before thinning: gives ~600 nuclei on a 1000x1000 tile
SEED = 0
BLUR_SIGMA = 1.5  # pixels: softens the one-hot map like a network's uncertain edges
NOISE_STD = 0.1  # additive noise on each probability channel before renormalising


def synthetic_softmax(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W) class map -> (3, H, W) float32 probabilities: one-hot, blurred, noisy, renormalised."""
    one_hot = np.eye(N_CLASSES, dtype=np.float32)[classes[0]].transpose(2, 0, 1)
    blurred = ndimage.gaussian_filter(one_hot, sigma=(0, BLUR_SIGMA, BLUR_SIGMA))
    noisy = np.clip(blurred + rng.normal(0.0, NOISE_STD, blurred.shape).astype(np.float32), 0.0, None)
    return noisy / np.maximum(noisy.sum(axis=0, keepdims=True), np.finfo(np.float32).tiny)


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``step``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def postprocess(repeats: int = 10) -> None:
    """Time InstanceToClassMap, ClassMapToInstances and the outputs on one synthetic 1000x1000 tile."""
    image, label = synthesize_tile(TILE_SHAPE, SEED, density=NUCLEI_PER_MEGAPIXEL)
    to_classes, to_instances = InstanceToClassMap(), ClassMapToInstances()
    classes = to_classes(label[None])
    prob = synthetic_softmax(classes, np.random.default_rng(SEED))
    instances = to_instances(prob)
    targets_s = median_seconds(lambda: to_classes(label[None]), repeats)
    postprocess_s = median_seconds(lambda: to_instances(prob), repeats)
    geojson_s = median_seconds(lambda: nuclei_geojson(instances), repeats)
    table_s = median_seconds(lambda: nucleus_table(image, instances), repeats)
    print(f"tile {TILE_SHAPE[0]}x{TILE_SHAPE[1]} px, {label.max()} nuclei; softmax: blur {BLUR_SIGMA} px, noise {NOISE_STD}")
    print(f"InstanceToClassMap:  median {targets_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"ClassMapToInstances: median {postprocess_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nuclei_geojson:      median {geojson_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nucleus_table:       median {table_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nuclei recovered: {instances.max()} of {label.max()}")


if __name__ == "__main__":
    fire.Fire(postprocess)
