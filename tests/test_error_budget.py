"""The error budget: each correction repairs its own kind of error, and only that one."""

import numpy as np
import pytest
from bundle.error_budget import (
    ORACLES,
    error_budget,
    false_nuclei_dropped,
    false_pixels_removed,
    missed_nuclei_added,
    perfectly_separated,
)
from bundle.metrics import aji, overlap_table
from skimage.draw import disk
from skimage.segmentation import expand_labels


def truth() -> np.ndarray:
    """(60, 90) map: two touching discs (1, 2) and a lone disc (3)."""
    gt = np.zeros((60, 90), np.int64)
    gt[disk((30, 20), 10, shape=gt.shape)] = 1
    gt[disk((30, 39), 10, shape=gt.shape)] = 2
    gt[disk((30, 72), 9, shape=gt.shape)] = 3
    return gt


def score(gt: np.ndarray, pred: np.ndarray) -> float:
    return aji(overlap_table(gt, pred))


def test_perfect_separation_splits_a_merged_pair_and_nothing_else_changes():
    gt = truth()
    merged = np.where(gt == 2, 1, gt)
    assert score(gt, merged) < 0.7
    np.testing.assert_array_equal(perfectly_separated(gt, merged), gt)
    # a false blob away from every true nucleus stays as predicted
    with_blob = merged.copy()
    with_blob[2:8, 2:8] = 7
    separated = perfectly_separated(gt, with_blob)
    assert len(np.unique(separated[2:8, 2:8])) == 1 and separated[4, 4] > 3
    np.testing.assert_array_equal(separated[8:], gt[8:])


def test_missed_nuclei_are_added_whole_and_found_ones_are_kept():
    gt = truth()
    pred = np.where(gt == 3, 0, gt)
    pred[pred == 1] = 0
    pred[disk((30, 20), 6, shape=gt.shape)] = 5  # nucleus 1 found, too small: kept as predicted
    added = missed_nuclei_added(gt, pred)
    assert score(gt, added) > score(gt, pred)
    assert (added[gt == 3] > 0).all() and len(np.unique(added[gt == 3])) == 1
    np.testing.assert_array_equal(added[gt == 1] > 0, pred[gt == 1] > 0)


def test_false_nuclei_are_dropped_and_real_ones_kept():
    gt = truth()
    pred = gt.copy()
    pred[2:8, 2:8] = 9
    assert score(gt, pred) < 1.0
    assert score(gt, false_nuclei_dropped(gt, pred)) == 1.0


def test_false_pixels_are_removed_keeping_the_predicted_splits():
    gt = truth()
    grown = expand_labels(gt, 3)
    assert score(gt, grown) < 0.8
    assert score(gt, false_pixels_removed(gt, grown)) == pytest.approx(1.0)
    merged = np.where(grown == 2, 1, grown)
    assert len(np.unique(false_pixels_removed(gt, merged))) == 3  # background + the merged pair + disc 3


def test_error_budget_names_every_correction():
    gt = truth()
    budget = error_budget(gt, np.where(gt == 2, 1, gt))
    assert list(budget) == list(ORACLES)
    assert budget["aji_separated"] == 1.0 and budget["aji_missed_added"] < 0.7
