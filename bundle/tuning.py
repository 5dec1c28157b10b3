"""Post-processing thresholds chosen on validation tiles and stored beside the model.

:class:`ThresholdTuner` is an evaluator handler: it keeps each validation tile's softmax
map (and HoVer map) and label, then tries every combination of a small grid of thresholds
and writes the best (mean AJI over the tiles) to ``models/model.postprocess.json``, which evaluation and
inference read (:func:`bundle.postprocess.stored_settings`). A grid search over two
thresholds needs no optimiser library; each trial is one post-processing of each tile.
"""

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from bundle.atomic import atomic_path
from bundle.metrics import aji, overlap_table
from bundle.postprocess import ClassMapToInstances, as_probability_map, energy_of
from ignite.engine import Engine, Events
from monai.utils import convert_to_numpy

logger = logging.getLogger(__name__)


def prepared(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """``(probabilities, label)`` pairs -> ``(checked float32 maps, contact energy or None, label)``,
    so that every trial reuses each tile's energy."""
    tiles = []
    for prob, label in samples:
        maps = as_probability_map(prob.astype(np.float32))
        tiles.append((maps, energy_of(maps), label))
    return tiles


def mean_aji(samples: Sequence[tuple[np.ndarray, np.ndarray]], settings: Mapping) -> float:
    """Mean AJI over ``(probabilities (3 or 5, H, W), label (H, W))`` pairs post-processed with ``settings``."""
    return mean_aji_of_prepared(prepared(samples), settings)


def mean_aji_of_prepared(tiles: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]], settings: Mapping) -> float:
    """:func:`mean_aji` over tiles from :func:`prepared`."""
    to_instances = ClassMapToInstances(**settings)
    scores = [
        aji(overlap_table(label, to_instances.from_maps(maps, energy).astype(np.int64)))
        for maps, energy, label in tiles
    ]
    return float(np.mean(scores))


def search_thresholds(
    samples: Sequence[tuple[np.ndarray, np.ndarray]], base: Mapping, grid: Mapping[str, Sequence[float]]
) -> dict:
    """The settings of ``grid`` (key -> candidate values, over ``base``) with the highest mean AJI.

    Returns ``base`` updated with the best values, plus ``"chosen_by"``: the metric, the
    number of tiles, the best score, the score of ``base`` itself, and every trial. Ties go
    to the first combination in grid order. Raises ValueError without samples or grid.
    """
    if not samples:
        raise ValueError("no validation tiles to choose post-processing thresholds on")
    if not grid or not all(grid.values()):
        raise ValueError(f"the threshold grid needs at least one value per key, got {dict(grid)}")
    keys, tiles = list(grid), prepared(samples)
    trials = []
    for values in itertools.product(*(grid[key] for key in keys)):
        settings = {**base, **dict(zip(keys, values))}
        trials.append((mean_aji_of_prepared(tiles, settings), settings))
    best_score, best = max(trials, key=lambda trial: trial[0])  # max keeps the first of equal scores
    chosen_by = {
        "metric": "mean aji",
        "tiles": len(samples),
        "score": best_score,
        "score_of_defaults": mean_aji_of_prepared(tiles, base),
        "trials": [{**{key: settings[key] for key in keys}, "score": score} for score, settings in trials],
    }
    return {**best, "chosen_by": chosen_by}


class ThresholdTuner:
    """Evaluator handler: collect validation softmax maps, choose thresholds at the end, write them.

    Args:
        output_path: the JSON file to write (atomically), e.g. ``models/model.postprocess.json``.
        base: the post-processing settings the grid starts from (all keys of
            :class:`bundle.postprocess.ClassMapToInstances` that are not searched).
        grid: setting -> candidate values, e.g. ``{"body_threshold": [0.4, 0.5, 0.6]}``.
        pred_key, label_key: the (3, H, W) softmax map ((5, H, W) with a HoVer map) in each decollated output and the
            (1, H, W) instance label in each batch item.

    Probabilities are kept as float16 (6 bytes per pixel per tile, 10 with a HoVer map) until the search.
    """

    def __init__(
        self,
        output_path: str | Path,
        base: Mapping,
        grid: Mapping[str, Sequence[float]],
        pred_key: str = "pred",
        label_key: str = "label",
    ):
        self.output_path, self.base, self.grid = Path(output_path), dict(base), {k: list(v) for k, v in grid.items()}
        self.pred_key, self.label_key = pred_key, label_key
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.samples.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for batch_item, output_item in zip(engine.state.batch, engine.state.output):
            prob = convert_to_numpy(output_item[self.pred_key]).astype(np.float16)
            label = convert_to_numpy(batch_item.get(self.label_key, output_item.get(self.label_key)))[0].astype(
                np.int64
            )
            self.samples.append((prob, label))

    def write(self, engine: Engine) -> None:
        chosen = search_thresholds(self.samples, self.base, self.grid)
        with atomic_path(self.output_path) as tmp:
            tmp.write_text(json.dumps(chosen, indent=1))
        summary = ", ".join(f"{key} {chosen[key]}" for key in self.grid)
        logger.info(
            "post-processing on %d validation tiles: %s (mean AJI %.4f; defaults %.4f) -> %s",
            len(self.samples),
            summary,
            chosen["chosen_by"]["score"],
            chosen["chosen_by"]["score_of_defaults"],
            self.output_path,
        )
        print(f"post-processing thresholds written to {self.output_path.resolve()}: {summary}")
        self.samples.clear()
