"""Slow per-nucleus reference metrics, kept only as the baseline for tests and benchmarks.

Written the way most public code (MoNuSeg, HoVer-Net) does it: one full-size boolean
mask per nucleus and per overlapping prediction. Use ``bundle.metrics`` for real work;
these functions exist to check it and to time it against.
Inputs: two (H, W) integer label maps, 0 = background. Same empty-map rules as
``bundle.metrics.nuclei_metrics``. Also here: random touching-blob label maps and
perturbed "predictions" of them, the synthetic inputs of those tests and benchmarks.
"""

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import expand_labels


def _nonzero_ids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    return ids[ids != 0]


def _empty_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """1.0 when both maps are empty, else 0.0: the value of a score whose denominator is 0."""
    return float(not gt.any() and not pred.any())


def aji_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """MoNuSeg 2018 AJI: best-IoU prediction per gt nucleus (ties: lowest id), predictions reusable."""
    intersection_sum = union_sum = 0
    used_preds: set[int] = set()
    for gt_id in _nonzero_ids(gt):
        gt_mask = gt == gt_id
        best_iou, best = 0.0, None
        for pred_id in _nonzero_ids(pred[gt_mask]):  # ascending, so strict '>' keeps the lowest id
            pred_mask = pred == pred_id
            intersection = np.logical_and(gt_mask, pred_mask).sum()
            union = np.logical_or(gt_mask, pred_mask).sum()
            if intersection / union > best_iou:
                best_iou, best = intersection / union, (pred_id, intersection, union)
        if best is None:
            union_sum += gt_mask.sum()
        else:
            used_preds.add(best[0])
            intersection_sum += best[1]
            union_sum += best[2]
    for pred_id in _nonzero_ids(pred):
        if pred_id not in used_preds:
            union_sum += (pred == pred_id).sum()
    return float(intersection_sum / union_sum) if union_sum else _empty_score(gt, pred)


def pairwise_overlaps_reference(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense (n_gt, n_pred) intersection and union pixel counts, from per-nucleus masks.

    Costs n_gt * n_pred full-image mask operations: for small test maps only.
    """
    gt_masks = [gt == gt_id for gt_id in _nonzero_ids(gt)]
    pred_masks = [pred == pred_id for pred_id in _nonzero_ids(pred)]
    intersection = np.zeros((len(gt_masks), len(pred_masks)), dtype=np.int64)
    union = np.zeros_like(intersection)
    for i, gt_mask in enumerate(gt_masks):
        for j, pred_mask in enumerate(pred_masks):
            intersection[i, j] = np.logical_and(gt_mask, pred_mask).sum()
            union[i, j] = np.logical_or(gt_mask, pred_mask).sum()
    return intersection, union


def aji_plus_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ as in HoVer-Net ``get_fast_aji_plus``: Hungarian on the full pairwise IoU matrix."""
    intersection, union = pairwise_overlaps_reference(gt, pred)
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = iou[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    gt_areas = [(gt == gt_id).sum() for gt_id in _nonzero_ids(gt)]
    pred_areas = [(pred == pred_id).sum() for pred_id in _nonzero_ids(pred)]
    matched_gt, matched_pred = set(rows.tolist()), set(cols.tolist())
    union_sum = union[rows, cols].sum()
    union_sum += sum(area for i, area in enumerate(gt_areas) if i not in matched_gt)
    union_sum += sum(area for j, area in enumerate(pred_areas) if j not in matched_pred)
    return float(intersection[rows, cols].sum() / union_sum) if union_sum else _empty_score(gt, pred)


def dice2_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """Ensemble Dice as HoVer-Net ``get_dice_2``: sums over overlapping gt/pred pairs."""
    intersection_sum = size_sum = 0
    for gt_id in _nonzero_ids(gt):
        gt_mask = gt == gt_id
        for pred_id in _nonzero_ids(pred[gt_mask]):
            pred_mask = pred == pred_id
            intersection_sum += np.logical_and(gt_mask, pred_mask).sum()
            size_sum += gt_mask.sum() + pred_mask.sum()
    return float(2 * intersection_sum / size_sum) if size_sum else _empty_score(gt, pred)


def panoptic_quality_reference(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PQ, DQ, SQ with pairs matched at IoU > 0.5, from the dense pairwise IoU matrix."""
    intersection, union = pairwise_overlaps_reference(gt, pred)
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)
    matched_iou = iou[iou > 0.5]
    tp = len(matched_iou)
    fp, fn = iou.shape[1] - tp, iou.shape[0] - tp
    detection_denominator = tp + 0.5 * fp + 0.5 * fn
    dq = tp / detection_denominator if detection_denominator else _empty_score(gt, pred)
    sq = float(matched_iou.mean()) if tp else _empty_score(gt, pred)
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def random_instance_map(
    rng: np.random.Generator, shape: tuple[int, int], n_nuclei: int, radius: int, max_id: int | None = None
) -> np.ndarray:
    """(H, W) int64 map of up to ``n_nuclei`` blobs of ``radius`` px grown from random seeds.

    Blobs that grow into each other touch along a straight border. Ids are distinct,
    random and non-contiguous in 1..max_id (default 4 * n_nuclei).
    """
    max_id = max_id or 4 * n_nuclei
    seeds = np.zeros(shape, dtype=np.int64)
    rows, cols = rng.integers(0, shape[0], n_nuclei), rng.integers(0, shape[1], n_nuclei)
    seeds[rows, cols] = rng.choice(np.arange(1, max_id + 1), size=n_nuclei, replace=False)
    return expand_labels(seeds, radius)


def erode_instances(labels: np.ndarray) -> np.ndarray:
    """Remove every pixel whose 3 x 3 neighbourhood holds another label (a 1-px erosion)."""
    same = ndi.grey_erosion(labels, size=3) == ndi.grey_dilation(labels, size=3)
    return np.where(same, labels, 0)


def perturb_instances(
    labels: np.ndarray, rng: np.random.Generator, drop: float = 0.05, merge: float = 0.05
) -> np.ndarray:
    """A plausible prediction of the (H, W) map ``labels``: shifted 1 px, eroded or dilated
    1 px, a fraction ``drop`` of nuclei removed and a fraction ``merge`` fused with a touching one."""
    pred = np.roll(labels, shift=(1, 1), axis=(0, 1))
    pred = erode_instances(pred) if rng.random() < 0.5 else expand_labels(pred, 1)
    ids = _nonzero_ids(pred)
    pred[np.isin(pred, rng.choice(ids, size=int(drop * len(ids)), replace=False))] = 0
    left, right = pred[:, :-1].ravel(), pred[:, 1:].ravel()
    touching = np.unique(np.stack([left, right], axis=1)[(left != right) & (left > 0) & (right > 0)], axis=0)
    for a, b in touching[rng.permutation(len(touching))[: int(merge * len(ids))]]:
        pred[pred == a] = b
    return pred
