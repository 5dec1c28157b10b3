"""Where a segmentation loses AJI: its score after one kind of error is corrected from the ground truth.

Each oracle below changes the predicted instance map in one way only, using the true map,
and the AJI of the result says how much that kind of error costs. For a model whose AJI
is well below 1 this tells whether better boundaries (separation), better detection
(missed or false nuclei) or better pixel masks would pay most. StarDist and HoVer-Net report
matching statistics (TP/FP/FN at an IoU); none of the libraries at hand has these
corrections, hence this module.

All functions take (H, W) non-negative integer maps, ``gt`` and ``pred`` (0 = background),
and return an (H, W) int64 map with ids 1..N.
"""

import numpy as np
from bundle.metrics import aji, overlap_table
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential, watershed


def _relabelled(labels: np.ndarray) -> np.ndarray:
    return relabel_sequential(labels.astype(np.int64))[0]


def _touched(ids: np.ndarray, where: np.ndarray, size: int) -> np.ndarray:
    """(size,) bool: which ids occur at the pixels ``where``."""
    touched = np.zeros(size, dtype=bool)
    touched[ids[where]] = True
    return touched


def perfectly_separated(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The predicted foreground, split exactly as the true nuclei are.

    Predicted pixels on a true nucleus take its id; the rest of each predicted component is
    flooded from those pixels; components on no true nucleus stay as predicted."""
    foreground = pred > 0
    separated = watershed(np.zeros(gt.shape, np.float32), np.where(foreground, gt, 0), mask=foreground)
    unreached = connected_components(foreground & (separated == 0))
    separated = separated.astype(np.int64)
    separated[unreached > 0] = unreached[unreached > 0] + int(gt.max())
    return _relabelled(separated)


def missed_nuclei_added(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The prediction plus every true nucleus it does not touch at all (on background pixels)."""
    found = _touched(gt, (gt > 0) & (pred > 0), int(gt.max()) + 1)
    missed = (gt > 0) & ~found[gt] & (pred == 0)
    added = pred.astype(np.int64)
    added[missed] = gt[missed] + int(pred.max())
    return _relabelled(added)


def false_nuclei_dropped(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The prediction without the predicted nuclei that touch no true nucleus."""
    real = _touched(pred, (gt > 0) & (pred > 0), int(pred.max()) + 1)
    return _relabelled(np.where(real[pred], pred, 0))


def false_pixels_removed(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The prediction restricted to the true foreground (its nuclei keep their ids and splits)."""
    return _relabelled(np.where(gt > 0, pred, 0))


#: Metric name -> the correction it scores.
ORACLES = {
    "aji_separated": perfectly_separated,
    "aji_missed_added": missed_nuclei_added,
    "aji_false_dropped": false_nuclei_dropped,
    "aji_pixels_cleaned": false_pixels_removed,
}


def error_budget(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AJI of ``pred`` after each correction of :data:`ORACLES`, keyed by its name."""
    gt, pred = gt.astype(np.int64), pred.astype(np.int64)
    return {name: aji(overlap_table(gt, correct(gt, pred))) for name, correct in ORACLES.items()}
