import numpy as np
import pytest
import torch
from bundle import metrics
from bundle.metrics import NucleiIgniteMetric, NucleiMetric, nuclei_metrics, overlap_table
from bundle.metrics_reference import (
    aji_plus_reference,
    aji_reference,
    dice2_reference,
    erode_instances,
    panoptic_quality_reference,
    perturb_instances,
    random_instance_map,
)
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import from_engine
from PIL import Image

SCORES = ("aji", "aji_plus", "dice", "dice2", "pq", "dq", "sq")


def blank(shape=(6, 6)) -> np.ndarray:
    return np.zeros(shape, dtype=np.int32)


def tie_case(tied_low_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One 2 x 6 gt nucleus and two predictions of equal IoU 1/3 but different C and U.

    'small' lies inside gt (4 px, C 4, U 12); 'large' covers 6 gt px + 6 outside (C 6, U 18).
    ``tied_low_id`` names the prediction given the lower id.
    """
    gt, pred = blank(), blank()
    gt[0:2, 0:6] = 1
    small_id, large_id = (3, 7) if tied_low_id == "small" else (7, 3)
    pred[0:2, 0:2] = small_id
    pred[0:4, 2:5] = large_id
    return gt, pred


def test_aji_tie_goes_to_lowest_prediction_id():
    # small wins: C 4, U 12 + unused large 12 -> 4 / 24
    assert nuclei_metrics(*tie_case("small"))["aji"] == pytest.approx(4 / 24, abs=1e-15)
    # large wins: C 6, U 18 + unused small 4 -> 6 / 22
    assert nuclei_metrics(*tie_case("large"))["aji"] == pytest.approx(6 / 22, abs=1e-15)


def reused_prediction_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 4 px gt nuclei side by side, one 8 px prediction over both (IoU 1/2 each)."""
    gt, pred = blank(), blank()
    gt[0:2, 0:2] = 1
    gt[0:2, 2:4] = 2
    pred[0:2, 0:4] = 5
    return gt, pred


def test_prediction_reused_by_two_gt_nuclei():
    scores = nuclei_metrics(*reused_prediction_case())
    assert scores["aji"] == pytest.approx((4 + 4) / (8 + 8), abs=1e-15)  # pred 5 is in both unions
    # one-to-one: the other gt nucleus is unmatched
    assert scores["aji_plus"] == pytest.approx(4 / (8 + 4), abs=1e-15)
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["dice2"] == pytest.approx(2 * (4 + 4) / ((4 + 8) + (4 + 8)), abs=1e-15)
    # IoU exactly 0.5 is not a PQ match
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 1, 2)
    assert scores["pq"] == scores["dq"] == scores["sq"] == 0.0


def test_hand_computed_scores():
    gt, pred = blank(), blank()
    gt[0:3, 0:3] = 1  # 9 px, matched by pred 4 (6 px inside): IoU 2/3
    gt[4:6, 4:6] = 2  # 4 px, missed
    pred[0:3, 0:2] = 4
    pred[4:6, 0:2] = 9  # 4 px, false positive
    scores = nuclei_metrics(gt, pred)
    expected = {
        "aji": 6 / (9 + 4 + 4),
        "aji_plus": 6 / (9 + 4 + 4),
        "dice": 2 * 6 / (13 + 10),
        "dice2": 2 * 6 / (9 + 6),
        "dq": 1 / (1 + 0.5 + 0.5),
        "sq": 2 / 3,
        "pq": 0.5 * 2 / 3,
    }
    assert {name: scores[name] for name in expected} == pytest.approx(expected, abs=1e-15)
    counts = {"tp": 1, "fp": 1, "fn": 1, "n_gt": 2, "n_pred": 2}
    assert {name: scores[name] for name in counts} == counts


def test_aji_plus_maximises_summed_iou_not_each_gt():
    gt, pred = blank(), blank()
    gt[0:2, :] = 1  # A, 12 px
    gt[2:4, :] = 2  # B, 12 px
    pred[0:3, 0:2] = 1  # p1, 6 px: IoU 4/14 with A, 2/16 with B
    pred[0:2, 2] = 2  # p2, 2 px: IoU 2/12 with A
    scores = nuclei_metrics(gt, pred)
    # AJI: both A and B take p1 (C 4 + 2, U 14 + 16), p2 unused (+2)
    assert scores["aji"] == pytest.approx(6 / 32, abs=1e-15)
    # AJI+: A-p2 + B-p1 (2/12 + 2/16) beats A-p1 alone (4/14): C 2 + 2, U 12 + 16
    assert scores["aji_plus"] == pytest.approx(4 / 28, abs=1e-15)


@pytest.mark.parametrize("shape", [(6, 6), (0, 0)])
def test_both_empty_is_perfect(shape):
    scores = nuclei_metrics(blank(shape), blank(shape))
    assert all(scores[name] == 1.0 for name in SCORES)
    assert all(scores[name] == 0 for name in ("tp", "fp", "fn", "n_gt", "n_pred"))


@pytest.mark.parametrize("empty_side", ["gt", "pred"])
def test_one_side_empty_scores_zero(empty_side):
    labels = blank()
    labels[1:3, 1:3] = 4
    gt, pred = (blank(), labels) if empty_side == "gt" else (labels, blank())
    scores = nuclei_metrics(gt, pred)
    assert all(scores[name] == 0.0 for name in SCORES)


def test_disjoint_nuclei_score_zero_without_nan():
    gt, pred = blank(), blank()
    gt[0:2, 0:2] = 1
    pred[4:6, 4:6] = 1
    scores = nuclei_metrics(gt, pred)
    assert all(scores[name] == 0.0 for name in SCORES)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(6, 6\).*\(6, 5\)"):
        nuclei_metrics(blank((6, 6)), blank((6, 5)))


@pytest.mark.parametrize(
    "gt, pred",
    [
        (np.zeros((4, 4), dtype=float), np.zeros((4, 4), dtype=int)),
        (np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=int)),
        (np.zeros((2, 4, 4), dtype=int), np.zeros((2, 4, 4), dtype=int)),
        (np.full((4, 4), -1), np.zeros((4, 4), dtype=int)),
    ],
)
def test_rejects_non_label_maps(gt, pred):
    with pytest.raises(ValueError):
        nuclei_metrics(gt, pred)


def random_pair(seed: int, shape=(64, 64), n_nuclei=25, radius=5) -> tuple[np.ndarray, np.ndarray]:
    """Touching random blobs and a shifted, eroded/dilated, partly dropped and merged copy."""
    rng = np.random.default_rng(seed)
    gt = random_instance_map(rng, shape, n_nuclei, radius)
    return gt, perturb_instances(gt, rng, drop=0.1, merge=0.2)


def contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


@pytest.mark.parametrize(
    "relabel",
    [
        lambda x: (x + 70000 * (x > 0)).astype(np.uint32),
        lambda x: (x * 3).astype(np.uint16),
        lambda x: (x + (2**40) * (x > 0)).astype(np.int64),  # beyond the lookup: np.unique path
        lambda x: x.astype(np.uint64) + np.uint64(2**63) * (x > 0),
    ],
    ids=["uint32+70000", "uint16*3", "int64+2**40", "uint64+2**63"],
)
def test_large_and_sparse_ids_match_contiguous_ids(relabel):
    gt, pred = random_pair(seed=3)
    gt, pred = contiguous(gt), contiguous(pred)
    assert nuclei_metrics(relabel(gt), relabel(pred)) == nuclei_metrics(gt, pred)


@pytest.mark.parametrize("offset", [70000, 2**40], ids=["lookup", "np.unique"])
def test_maps_without_background_pixels(offset):
    gt, pred = random_pair(seed=6)
    gt, pred = contiguous(gt) + 1, contiguous(pred) + 1  # background becomes a nucleus too
    assert nuclei_metrics(gt + offset, pred + offset) == nuclei_metrics(gt, pred)


def test_table_ids_and_areas_are_the_original_ones():
    gt, pred = blank(), blank()
    gt[0:2, 0:3] = 70000
    gt[4:6, 4:6] = 12
    pred[0:2, 0:2] = 9
    table = overlap_table(gt.astype(np.uint32), pred)
    assert table.gt_ids.tolist() == [12, 70000] and table.gt_area.tolist() == [4, 6]
    assert table.pred_ids.tolist() == [9] and table.pred_area.tolist() == [4]
    pairs = (table.pair_gt.tolist(), table.pair_pred.tolist(), table.pair_intersection.tolist())
    assert pairs == ([1], [0], [4])


@pytest.mark.parametrize(
    "dense_cells, lookup_max_id",
    [(1000, 2**20), (1000, 0), (0, 2**20), (0, 0)],
    ids=["lookup+dense", "unique+dense", "lookup+sparse", "unique+sparse"],
)
def test_relabelling_and_sparse_fallbacks_agree_with_raw_ids(monkeypatch, dense_cells, lookup_max_id):
    gt, pred = random_pair(seed=5)
    expected = nuclei_metrics(gt, pred)  # ids index a dense table directly
    n_gt, n_pred = len(np.unique(gt)), len(np.unique(pred))
    # 1000 cells force relabelling, yet hold the relabelled table; 0 forces the sparse count
    assert (gt.max() + 1) * (pred.max() + 1) > 1000 >= n_gt * n_pred
    monkeypatch.setattr(metrics, "DENSE_TABLE_MAX_CELLS", dense_cells)
    monkeypatch.setattr(metrics, "LOOKUP_MAX_ID", lookup_max_id)
    assert nuclei_metrics(gt, pred) == expected


@pytest.mark.parametrize("seed", range(8))
def test_matches_per_nucleus_reference(seed):
    gt, pred = random_pair(seed)
    scores = nuclei_metrics(gt, pred)
    assert scores["aji"] == pytest.approx(aji_reference(gt, pred), abs=1e-12)
    assert scores["aji_plus"] == pytest.approx(aji_plus_reference(gt, pred), abs=1e-12)
    assert scores["dice2"] == pytest.approx(dice2_reference(gt, pred), abs=1e-12)
    pq = panoptic_quality_reference(gt, pred)
    assert {name: scores[name] for name in pq} == pytest.approx(pq, abs=1e-12)
    assert scores["aji_plus"] >= 0 and 0 < scores["aji"] < 1


def test_reference_agrees_on_hand_cases():
    for gt, pred in (tie_case("small"), tie_case("large"), reused_prediction_case()):
        assert nuclei_metrics(gt, pred)["aji"] == aji_reference(gt, pred)


def first_monuseg_mask(folder) -> np.ndarray:
    path = sorted((folder / "masks").glob("*.png"))[0]
    return np.asarray(Image.open(path))


@pytest.mark.shared_data
def test_monuseg_mask_against_itself_is_perfect(monuseg_train):
    mask = first_monuseg_mask(monuseg_train)
    assert mask.dtype == np.uint16
    scores = nuclei_metrics(mask, mask)
    assert all(scores[name] == 1.0 for name in SCORES)
    assert scores["n_gt"] == scores["tp"] == len(np.unique(mask)) - 1


@pytest.mark.shared_data
def test_monuseg_mask_against_eroded_matches_reference(monuseg_train):
    mask = first_monuseg_mask(monuseg_train)
    eroded = erode_instances(mask)
    scores = nuclei_metrics(mask, eroded)
    assert scores["aji"] == pytest.approx(aji_reference(mask, eroded), abs=1e-12)
    assert scores["dice2"] == pytest.approx(dice2_reference(mask, eroded), abs=1e-12)
    assert 0.3 < scores["aji"] < 1.0


def batch_of_pairs(seeds=(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) float tensors of label maps: predictions and ground truth."""
    pairs = [random_pair(seed) for seed in seeds]
    gts = torch.tensor(np.stack([gt for gt, _ in pairs])[:, None], dtype=torch.float32)
    preds = torch.tensor(np.stack([pred for _, pred in pairs])[:, None], dtype=torch.float32)
    return preds, gts


def test_nuclei_metric_per_image_and_mean():
    preds, gts = batch_of_pairs()
    metric = NucleiMetric(["aji", "pq"])
    per_image = metric(y_pred=preds, y=gts)
    expected = [nuclei_metrics(g[0].long().numpy(), p[0].long().numpy()) for p, g in zip(preds, gts)]
    assert per_image.shape == (2, 2)
    assert per_image.tolist() == [[e["aji"], e["pq"]] for e in expected]
    aggregated = metric.aggregate()
    assert aggregated == pytest.approx({name: np.mean([e[name] for e in expected]) for name in ("aji", "pq")})


def test_nuclei_metric_single_name_accumulates_batches_and_lists():
    preds, gts = batch_of_pairs((0, 1, 2))
    metric = NucleiMetric()
    metric(y_pred=preds[:2, 0], y=gts[:2, 0])  # (B, H, W)
    metric(y_pred=[preds[2]], y=[gts[2]])  # list of channel-first (1, H, W)
    expected = np.mean([nuclei_metrics(*random_pair(seed))["aji"] for seed in (0, 1, 2)])
    aggregated = metric.aggregate()
    assert isinstance(aggregated, torch.Tensor) and aggregated.ndim == 0
    assert aggregated.item() == pytest.approx(expected, abs=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()


def test_nuclei_metric_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown"):
        NucleiMetric(["aji", "hausdorff"])
    preds, gts = batch_of_pairs((0,))
    with pytest.raises(ValueError, match="integer"):
        NucleiMetric()(y_pred=preds + 0.5, y=gts)
    with pytest.raises(ValueError, match="shapes differ"):
        NucleiMetric()(y_pred=preds[..., :32], y=gts)


def run_engine(handler: NucleiIgniteMetric, name: str, seeds=(0, 1, 2)) -> Engine:
    batches = []
    for seed in seeds:
        preds, gts = batch_of_pairs((seed,))
        batches.append({"pred": preds, "label": gts})
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine


def test_ignite_handler_single_metric():
    engine = run_engine(NucleiIgniteMetric("aji", output_transform=from_engine(["pred", "label"])), "val_aji")
    expected = [nuclei_metrics(*random_pair(seed))["aji"] for seed in (0, 1, 2)]
    assert engine.state.metrics["val_aji"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert engine.state.metric_details["val_aji"][:, 0].tolist() == pytest.approx(expected, abs=1e-12)


def test_ignite_handler_several_metrics_flattens_keys():
    handler = NucleiIgniteMetric(["aji", "dice2"], output_transform=from_engine(["pred", "label"]))
    engine = run_engine(handler, "nuclei", seeds=(4,))
    expected = nuclei_metrics(*random_pair(4))
    assert engine.state.metrics["aji"] == pytest.approx(expected["aji"], abs=1e-12)
    assert engine.state.metrics["dice2"] == pytest.approx(expected["dice2"], abs=1e-12)


def test_ignite_handler_from_bundle_config():
    config = {
        "metric": {
            "_target_": "bundle.metrics.NucleiIgniteMetric",
            "metric_name": "aji",
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
        }
    }
    handler = ConfigParser(config).get_parsed_content("metric")
    assert isinstance(handler, NucleiIgniteMetric)
    engine = run_engine(handler, "val_aji", seeds=(0,))
    assert engine.state.metrics["val_aji"] == pytest.approx(nuclei_metrics(*random_pair(0))["aji"], abs=1e-12)
