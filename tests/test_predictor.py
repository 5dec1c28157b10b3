"""One predictor: the image contract, and tile and slide inference giving the same nuclei on the same tile."""

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from bundle.networks import segmentation_unet
from bundle.postprocess import ClassMapToInstances
from bundle.predictor import InstancesInferer, NucleiPredictor, PredictedInstancesd, ProbabilityInferer
from bundle.synthetic import synthesize_tile
from bundle.transforms import ScaleRGB, ScaleRGBd
from bundle.wsi.tiling import instances_by_grid
from bundle_runner import run_bundle
from monai.inferers import SlidingWindowInferer

# Thresholds at which the untrained network below outlines tens of nuclei per 96 px (measured).
LOOSE = {"body_threshold": 0.15, "foreground_threshold": 0.12, "min_marker_area": 4, "min_nucleus_area": 4}


def untrained_unet() -> torch.nn.Module:
    """A seeded ResNet-10 U-Net whose head is scaled up: its probabilities vary enough to make nuclei."""
    torch.manual_seed(0)
    network = segmentation_unet("resnet10")
    with torch.no_grad():
        for parameter in network.segmentation_head.parameters():
            parameter.mul_(300)
    return network


def test_the_image_contract_scales_uint8_to_unit_floats_and_back():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    scaled = ScaleRGB()(rgb)
    assert scaled.dtype == torch.float32 and float(scaled.max()) <= 1.0
    assert torch.equal(scaled, torch.as_tensor(rgb).float() / 255)
    assert np.array_equal(ScaleRGB.inverse(scaled), rgb.transpose(1, 2, 0))
    assert np.array_equal(ScaleRGB.inverse(torch.as_tensor(rgb)), rgb.transpose(1, 2, 0))  # uint8 as read: as is
    assert torch.equal(ScaleRGBd(keys="image")({"image": rgb, "other": 1})["image"], scaled)


@pytest.fixture(scope="module")
def predictor():
    network = untrained_unet()
    inferer = SlidingWindowInferer(roi_size=(64, 64), sw_batch_size=2, overlap=0.25, mode="gaussian")
    return NucleiPredictor(network, inferer, ClassMapToInstances(**LOOSE))


def test_the_engine_adapters_give_what_the_predictor_gives(predictor):
    rgb = synthesize_tile((96, 96), seed=2)[0].transpose(2, 0, 1)
    expected = predictor(rgb)
    probabilities = ProbabilityInferer(predictor)(ScaleRGB()(rgb)[None])
    assert probabilities.shape == (1, 3, 96, 96) and torch.allclose(probabilities.sum(1), torch.ones(1, 96, 96))
    instances = PredictedInstancesd(predictor)({"pred": probabilities[0]})["instances"]
    assert instances.shape == (1, 96, 96) and np.array_equal(instances[0].numpy(), expected)
    ids = InstancesInferer(predictor)(torch.as_tensor(np.stack([rgb, rgb])))
    assert ids.shape == (2, 1, 96, 96) and ids.dtype == torch.int32 and np.array_equal(ids[1, 0].numpy(), expected)
    assert expected.max() >= 5  # the comparison is about nuclei, not an empty map


def first_seen_order(ids: np.ndarray) -> np.ndarray:
    """Instance ids renumbered in raster order of first appearance: equal partitions give equal maps."""
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(np.where(np.unique(ids) == 0, -1, first)))
    return rank[inverse].reshape(ids.shape)


class DarkIsBody(torch.nn.Module):
    """A per-pixel stand-in network: dark pixels are nucleus body. Its output at a pixel does not
    depend on the window, so one pass and the grid see the same probabilities."""

    def forward(self, x):
        darkness = 1.0 - x.mean(1, keepdim=True)
        return torch.cat([-20 * (darkness - 0.45), 20 * (darkness - 0.45), torch.full_like(darkness, -5)], 1)


def test_a_tile_larger_than_the_grid_window_gives_the_nuclei_of_one_pass():
    rgb = synthesize_tile((700, 600), seed=4)[0].transpose(2, 0, 1)
    windows = SlidingWindowInferer(roi_size=(256, 256), overlap=0.25)
    one_pass = NucleiPredictor(DarkIsBody(), windows, ClassMapToInstances())(rgb)
    by_grid = NucleiPredictor(DarkIsBody(), windows, ClassMapToInstances(), grid_tile_size=256, grid_overlap=96)(rgb)
    assert one_pass.max() > 100 and by_grid.max() == one_pass.max()
    assert np.array_equal(first_seen_order(by_grid), first_seen_order(one_pass))


def test_the_grid_stitches_each_nucleus_once_from_the_window_that_owns_it():
    seen = []

    def predict_window(window):
        seen.append(window.shape[1:])
        return np.where(window[0] > 0, 7, 0)  # every window: one "nucleus" of all its foreground

    image = np.zeros((1, 300, 300), np.uint8)
    image[0, 140:160, 140:160] = 1  # one nucleus in the middle: in the cores of one window only
    ids = instances_by_grid(predict_window, image, tile_size=200, overlap=100)
    assert len(seen) == 4 and ids.max() == 1 and (ids == 1).sum() == 400


def nuclei_rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_tile_and_slide_inference_give_the_same_nuclei_on_the_same_tile(tmp_path):
    rgb = synthesize_tile((256, 256), seed=5)[0]
    tiles, slides = tmp_path / "tiles", tmp_path / "slides"
    tiles.mkdir()
    slides.mkdir()
    tifffile.imwrite(tiles / "case.tif", rgb, photometric="rgb")
    tifffile.imwrite(slides / "case.tif", rgb, photometric="rgb", tile=(128, 128), compression="zlib")
    model = tmp_path / "model.pt"
    torch.save(untrained_unet().state_dict(), model)
    (tmp_path / "model.postprocess.json").write_text(json.dumps(LOOSE))
    common = {"bundle_root": str(tmp_path), "model_path": str(model), "backbone": "resnet10", "roi_size": 128}

    tile = run_bundle(["inference.json"], tmp_path, dataset_dir=str(tiles), output_dir=str(tmp_path / "t"), **common)
    assert tile.returncode == 0, tile.stderr[-3000:]
    slide = run_bundle(
        ["inference.json", "inference_wsi.json"],
        tmp_path,
        dataset_dir=str(slides),
        output_dir=str(tmp_path / "s"),
        tile_size=256,  # one window: the slide path sees exactly the tile
        overlap=64,
        tissue_threshold=0.0,
        **common,
    )
    assert slide.returncode == 0, slide.stderr[-3000:]

    from_tile, from_slide = nuclei_rows(tmp_path / "t" / "case_nuclei.csv"), nuclei_rows(
        tmp_path / "s" / "case_nuclei.csv"
    )
    assert len(from_tile) >= 5
    assert from_slide == from_tile
