"""Nuclei instance-segmentation metrics from one overlap table: AJI, AJI+, Dice, Dice2, PQ.

Written by hand because MONAI's API has no AJI / AJI+ / ensemble Dice, and its
``PanopticQualityMetric`` takes one-hot class/instance channels, not two plain
instance label maps. Every score here comes from a single contingency table of
pixel counts (one bincount over the pixels); no per-nucleus masks are made.

Inputs are 2-D integer label maps of equal shape (H, W): 0 is background, every
other value is one nucleus. Ids need not be contiguous; any integer dtype works.
Areas and intersections are in pixels; scores are unitless in [0, 1].
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_numpy
from scipy.optimize import linear_sum_assignment

# Pair counts are tallied in a dense bincount over (gt key, pred key) up to this many
# cells (32 MiB of int64); beyond it only the pairs present are kept (np.unique, a sort).
# The keys are the ids themselves when that table fits, else ids relabelled 0..n.
DENSE_TABLE_MAX_CELLS = 2**22
# Ids below this are relabelled with a lookup array (8 bytes per possible id, so at
# most 8 MiB); larger ids go through np.unique, which sorts the pixels.
LOOKUP_MAX_ID = 2**20
PQ_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class OverlapTable:
    """Pixel counts of two instance label maps, indexed 0..n-1 in ascending id order.

    The intersection matrix (n_gt, n_pred) is kept in coordinate form: only its
    non-zero entries, as ``pair_gt[k], pair_pred[k] -> pair_intersection[k]``,
    sorted by (gt, pred). Its size is the number of overlapping pairs, not n_gt * n_pred.
    """

    gt_ids: np.ndarray  # (n_gt,) original ids, ascending
    pred_ids: np.ndarray  # (n_pred,)
    gt_area: np.ndarray  # (n_gt,) int64 pixels
    pred_area: np.ndarray  # (n_pred,) int64 pixels
    pair_gt: np.ndarray  # (n_pairs,) index into gt_ids
    pair_pred: np.ndarray  # (n_pairs,) index into pred_ids
    pair_intersection: np.ndarray  # (n_pairs,) int64 pixels, all > 0

    @property
    def n_gt(self) -> int:
        return len(self.gt_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    @property
    def pair_union(self) -> np.ndarray:
        """(n_pairs,) int64 pixels of each overlapping pair's union."""
        return self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.pair_intersection

    @property
    def pair_iou(self) -> np.ndarray:
        """(n_pairs,) float64 intersection over union of each overlapping pair."""
        return self.pair_intersection / self.pair_union


def _check_label_map(labels: np.ndarray, name: str) -> None:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer label map, got {labels.ndim}-D {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} has negative ids; instance ids must be >= 0")


def _max_id(labels: np.ndarray) -> int:
    return int(labels.max()) if labels.size else 0


def _scaled_keys(labels: np.ndarray, max_id: int, scale: int, compact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to table keys: returns ``values`` (n_keys,), the id of each key (values[0] = 0),
    and the (H, W) int64 map of ``key * scale``. Without ``compact`` the keys are the ids
    themselves; with it they are 0..n over the ids present."""
    if not compact:
        return np.arange(max_id + 1), labels.astype(np.int64) * scale
    if max_id < LOOKUP_MAX_ID:
        # bincount refuses uint64 (no safe cast to intp), so cast; it copies other dtypes anyway.
        ids = np.flatnonzero(np.bincount(labels.ravel().astype(np.intp, copy=False))[1:] > 0) + 1
        lookup = np.zeros(max_id + 1, dtype=np.int64)
        lookup[ids] = np.arange(1, len(ids) + 1) * scale
        return np.r_[0, ids], np.take(lookup, labels)
    values, keys = np.unique(labels, return_inverse=True)
    keys = keys.reshape(labels.shape).astype(np.int64, copy=False)
    if values[0] != 0:
        values, keys = np.r_[0, values], keys + 1
    return values, keys * scale


def _count_pairs(codes: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pair codes present in ``codes`` (ascending) and their pixel counts."""
    if n_cells <= DENSE_TABLE_MAX_CELLS:
        counts = np.bincount(codes.ravel(), minlength=n_cells)
        present = np.flatnonzero(counts > 0)  # much faster than flatnonzero on int64
        return present, counts[present]
    return np.unique(codes, return_counts=True)


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> OverlapTable:
    """Build the overlap table of two (H, W) integer label maps with one bincount over the pixels.

    Raises ValueError when the shapes differ, a map is not 2-D integer, or ids are negative.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: gt {gt.shape}, pred {pred.shape}")
    _check_label_map(gt, "gt")
    _check_label_map(pred, "pred")
    # Ids index the table directly unless it would be too large: compacting a map
    # to the ids present costs one more pass over its pixels.
    gt_max, pred_max = _max_id(gt), _max_id(pred)
    compact_pred = (gt_max + 1) * (pred_max + 1) > DENSE_TABLE_MAX_CELLS
    pred_values, codes = _scaled_keys(pred, pred_max, 1, compact_pred)
    stride = len(pred_values)
    compact_gt = (gt_max + 1) * stride > DENSE_TABLE_MAX_CELLS
    gt_values, gt_codes = _scaled_keys(gt, gt_max, stride, compact_gt)
    codes += gt_codes
    pair_codes, pair_counts = _count_pairs(codes, len(gt_values) * stride)
    rows, cols = np.divmod(pair_codes, stride)
    # Key 0 is background; summing the table's rows / columns, background included,
    # gives every key's area, and the keys with an area are the nuclei present.
    gt_area = np.bincount(rows, weights=pair_counts, minlength=len(gt_values)).astype(np.int64)
    pred_area = np.bincount(cols, weights=pair_counts, minlength=stride).astype(np.int64)
    gt_present = np.flatnonzero(gt_area[1:] > 0) + 1
    pred_present = np.flatnonzero(pred_area[1:] > 0) + 1
    both = (rows > 0) & (cols > 0)
    return OverlapTable(
        gt_ids=gt_values[gt_present],
        pred_ids=pred_values[pred_present],
        gt_area=gt_area[gt_present],
        pred_area=pred_area[pred_present],
        pair_gt=np.searchsorted(gt_present, rows[both]),
        pair_pred=np.searchsorted(pred_present, cols[both]),
        pair_intersection=pair_counts[both].astype(np.int64),
    )


def _ratio(numerator: float, denominator: float, table: OverlapTable) -> float:
    """numerator / denominator; when the denominator is 0: 1.0 if both maps are empty, else 0.0."""
    if denominator == 0:
        return 1.0 if table.n_gt == table.n_pred == 0 else 0.0
    return float(numerator / denominator)


def _aji_of_matches(table: OverlapTable, matched_pairs: np.ndarray) -> float:
    """AJI given the matched pair indices: C / (matched unions + unmatched gt + unused pred areas)."""
    gt_matched = np.zeros(table.n_gt, dtype=bool)
    gt_matched[table.pair_gt[matched_pairs]] = True
    pred_used = np.zeros(table.n_pred, dtype=bool)
    pred_used[table.pair_pred[matched_pairs]] = True
    intersection = table.pair_intersection[matched_pairs].sum()
    union = table.pair_union[matched_pairs].sum() + table.gt_area[~gt_matched].sum() + table.pred_area[~pred_used].sum()
    return _ratio(intersection, union, table)


def best_pred_per_gt(table: OverlapTable) -> np.ndarray:
    """Pair index of each overlapped gt nucleus's highest-IoU prediction, ties to the lowest pred id.

    Returns (n_overlapped_gt,) indices into the table's pairs.
    """
    order = np.lexsort((table.pair_pred, -table.pair_iou, table.pair_gt))
    gt_sorted = table.pair_gt[order]
    first_of_gt = np.diff(gt_sorted, prepend=-1) != 0
    return order[first_of_gt]


def aji(table: OverlapTable) -> float:
    """Aggregated Jaccard Index, MoNuSeg 2018 rule: a prediction may match several gt nuclei."""
    return _aji_of_matches(table, best_pred_per_gt(table))


def hungarian_pairs(table: OverlapTable) -> np.ndarray:
    """Pair indices of a one-to-one matching maximising the summed IoU (IoU > 0 only).

    A pair whose gt and pred overlap nothing else is in every optimal matching; the
    Hungarian solver gets the rest, as a dense (gt, pred) IoU matrix over those nuclei.
    """
    gt_degree = np.bincount(table.pair_gt, minlength=table.n_gt)
    pred_degree = np.bincount(table.pair_pred, minlength=table.n_pred)
    isolated = (gt_degree[table.pair_gt] == 1) & (pred_degree[table.pair_pred] == 1)
    tangled = np.flatnonzero(~isolated)
    _, row_of_pair = np.unique(table.pair_gt[tangled], return_inverse=True)
    _, col_of_pair = np.unique(table.pair_pred[tangled], return_inverse=True)
    shape = (row_of_pair.max(initial=-1) + 1, col_of_pair.max(initial=-1) + 1)
    iou = np.zeros(shape)
    iou[row_of_pair, col_of_pair] = table.pair_iou[tangled]
    pair_at = np.full(shape, -1)
    pair_at[row_of_pair, col_of_pair] = tangled
    matched = pair_at[linear_sum_assignment(iou, maximize=True)]
    return np.concatenate([np.flatnonzero(isolated), matched[matched >= 0]])


def aji_plus(table: OverlapTable) -> float:
    """AJI+ : AJI with a one-to-one (Hungarian) matching instead of per-gt best IoU."""
    return _aji_of_matches(table, hungarian_pairs(table))


def dice(table: OverlapTable) -> float:
    """Binary Dice of the foregrounds (gt > 0 vs pred > 0)."""
    return _ratio(2 * table.pair_intersection.sum(), table.gt_area.sum() + table.pred_area.sum(), table)


def dice2(table: OverlapTable) -> float:
    """Ensemble Dice (HoVer-Net ``get_dice_2``): 2 sum(|g & p|) / sum(|g| + |p|) over overlapping pairs."""
    pair_sizes = table.gt_area[table.pair_gt] + table.pred_area[table.pair_pred]
    return _ratio(2 * table.pair_intersection.sum(), pair_sizes.sum(), table)


def panoptic_quality(table: OverlapTable) -> dict[str, float | int]:
    """PQ, DQ, SQ with matches at IoU > 0.5 (unique by construction), and tp, fp, fn counts."""
    iou = table.pair_iou
    matched_iou = iou[iou > PQ_IOU_THRESHOLD]
    tp = len(matched_iou)
    fp, fn = table.n_pred - tp, table.n_gt - tp
    dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn, table)
    sq = _ratio(matched_iou.sum(), tp, table)
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


METRIC_NAMES = ("aji", "aji_plus", "dice", "dice2", "pq", "dq", "sq", "tp", "fp", "fn", "n_gt", "n_pred")


def table_metrics(table: OverlapTable) -> dict[str, float | int]:
    """All metrics of one overlap table; see ``nuclei_metrics``."""
    return {
        "aji": aji(table),
        "aji_plus": aji_plus(table),
        "dice": dice(table),
        "dice2": dice2(table),
        **panoptic_quality(table),
        "n_gt": table.n_gt,
        "n_pred": table.n_pred,
    }


def nuclei_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Instance-segmentation metrics of two (H, W) integer label maps (0 = background).

    Returns floats ``aji``, ``aji_plus``, ``dice``, ``dice2``, ``pq``, ``dq``, ``sq`` in [0, 1]
    and ints ``n_gt``, ``n_pred``, ``tp``, ``fp``, ``fn`` (nuclei counts; tp/fp/fn are the
    PQ matches at IoU > 0.5).

    - aji: each gt nucleus takes its highest-IoU overlapping prediction (ties: lowest pred id);
      a prediction may serve several gt nuclei. C / U with C the matched intersections and
      U the matched unions + areas of gt with no overlap + areas of predictions never used.
    - aji_plus: the same with a one-to-one Hungarian matching maximising IoU (IoU > 0 pairs).
    - dice: binary Dice of gt > 0 vs pred > 0. dice2: ensemble Dice over overlapping pairs.
    - pq = dq * sq; dq = tp / (tp + fp/2 + fn/2); sq = mean IoU of the tp pairs.

    Empty maps never give NaN: both empty -> every score 1.0; exactly one empty -> every
    score 0.0; otherwise sq with no tp, and dice2 with no overlapping pair, are 0.0.
    Raises ValueError when the shapes differ (both are stated) or the maps are not
    2-D non-negative integer arrays.
    """
    return table_metrics(overlap_table(gt, pred))


def _label_batch(labels: torch.Tensor, name: str) -> np.ndarray:
    """(B, 1, H, W) or (B, H, W) tensor of integral values -> (B, H, W) int64 array."""
    array = convert_to_numpy(labels)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), got shape {tuple(labels.shape)}")
    as_int = array.astype(np.int64)
    if not np.array_equal(as_int, array):
        raise ValueError(f"{name} must hold integer instance ids")
    return as_int


class NucleiMetric(CumulativeIterationMetric):
    """Per-image nuclei metrics, accumulated over iterations, for MONAI/Ignite engines.

    ``metric_names``: one name or a sequence from ``METRIC_NAMES`` (default ``"aji"``).
    Calling it with ``y_pred`` and ``y`` instance label maps, (B, 1, H, W) or (B, H, W)
    tensors (float tensors must hold whole numbers), returns a (B, K) float64 tensor, one
    column per name. ``aggregate()`` returns the mean over all images seen since
    ``reset()``: a 0-d tensor when one name was given, else a ``{name: float}`` dict.
    """

    def __init__(self, metric_names: str | Sequence[str] = "aji") -> None:
        super().__init__()
        self.metric_names = (metric_names,) if isinstance(metric_names, str) else tuple(metric_names)
        unknown = sorted(set(self.metric_names) - set(METRIC_NAMES))
        if unknown or not self.metric_names:
            raise ValueError(f"unknown metric names {unknown}; choose from {METRIC_NAMES}")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("NucleiMetric needs the ground truth y")
        preds, gts = _label_batch(y_pred, "y_pred"), _label_batch(y, "y")
        if preds.shape != gts.shape:
            raise ValueError(f"y_pred and y shapes differ: y_pred {tuple(y_pred.shape)}, y {tuple(y.shape)}")
        rows = []
        for gt, pred in zip(gts, preds):
            scores = table_metrics(overlap_table(gt, pred))
            rows.append([scores[name] for name in self.metric_names])
        return torch.tensor(rows, dtype=torch.float64).reshape(len(gts), len(self.metric_names))

    def aggregate(self) -> torch.Tensor | dict[str, float]:
        """Mean of each metric over the images seen; see the class docstring for the type."""
        scores = self.get_buffer()
        if scores is None:
            raise ValueError("NucleiMetric has no data to aggregate; call it on a batch first")
        means = scores.mean(dim=0)
        if len(self.metric_names) == 1:
            return means[0]
        return {name: float(value) for name, value in zip(self.metric_names, means)}


class NucleiIgniteMetric(IgniteMetricHandler):
    """``NucleiMetric`` as an Ignite metric handler, for bundle configs.

    With one ``metric_name`` the engine gets a float under the attach name; with several,
    a dict, whose keys Ignite also copies into ``engine.state.metrics`` (so the attach
    name must differ from them). Per-image scores (N, K) go to
    ``engine.state.metric_details[name]`` when ``save_details``.
    """

    def __init__(
        self,
        metric_name: str | Sequence[str] = "aji",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=NucleiMetric(metric_name), output_transform=output_transform, save_details=save_details
        )
