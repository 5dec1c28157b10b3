"""Synthetic H&E tiles: determinism, exact labels, H&E-like colour, realistic nucleus
sizes and density variation, and the MoNuSeg-style folder they are written to."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bundle.synthetic import TileStyle, synthesize_dataset, synthesize_tile, tile_seed, write_tile
from PIL import Image
from scipy import ndimage
from skimage import io
from skimage.color import rgb2hed

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(6)


@pytest.fixture(scope="module")
def tiles() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Default 1000 x 1000 tiles for a few seeds: {seed: (image, label)}."""
    return {seed: synthesize_tile(seed=seed) for seed in SEEDS}


def ids_present(label: np.ndarray) -> int:
    """Number of distinct nucleus ids in a label map."""
    return np.count_nonzero(np.bincount(label.ravel())[1:])


def median_area(label: np.ndarray) -> float:
    """Median pixel area of the nuclei present in a label map."""
    areas = np.bincount(label.ravel())[1:]
    return float(np.median(areas[areas > 0]))


def test_same_seed_gives_identical_tiles_and_other_seeds_differ():
    image, label = synthesize_tile((256, 300), seed=5)
    again_image, again_label = synthesize_tile((256, 300), seed=5)
    other_image, other_label = synthesize_tile((256, 300), seed=6)
    assert image.tobytes() == again_image.tobytes() and label.tobytes() == again_label.tobytes()
    assert not np.array_equal(image, other_image) and not np.array_equal(label, other_label)


def test_shapes_and_dtypes(tiles):
    image, label = tiles[0]
    assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
    assert label.shape == (1000, 1000) and label.dtype == np.int32
    small_image, small_label = synthesize_tile((120, 90), seed=1)
    assert small_image.shape == (120, 90, 3) and small_label.shape == (120, 90)


@pytest.mark.parametrize("seed", SEEDS)
def test_ids_are_contiguous_visible_and_in_one_piece(tiles, seed):
    label = tiles[seed][1]
    count = label.max()
    assert count > 0
    np.testing.assert_array_equal(np.unique(label), np.arange(count + 1))
    assert np.bincount(label.ravel())[1:].min() >= TileStyle().min_visible_area
    eight_connected = np.ones((3, 3), dtype=bool)
    for nucleus_id, window in enumerate(ndimage.find_objects(label), start=1):
        assert ndimage.label(label[window] == nucleus_id, structure=eight_connected)[1] == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_every_nucleus_is_darker_and_bluer_than_background(tiles, seed):
    image, label = tiles[seed]
    ids = np.arange(1, label.max() + 1)
    background = label == 0
    hematoxylin = rgb2hed(image)[..., 0]
    blue_minus_red = image[..., 2].astype(np.float64) - image[..., 0]
    brightness = image.astype(np.float64).mean(axis=-1)
    assert np.min(ndimage.mean(hematoxylin, label, ids)) > hematoxylin[background].mean()
    assert np.min(ndimage.mean(blue_minus_red, label, ids)) > blue_minus_red[background].mean()
    assert np.max(ndimage.mean(brightness, label, ids)) < brightness[background].mean()


def test_colours_resemble_h_and_e(tiles):
    image, label = tiles[0]
    background = image[label == 0].mean(axis=0)
    nuclei = image[label > 0].mean(axis=0)
    red, green, blue = background
    assert red > blue > green and red > 180  # pink
    red, green, blue = nuclei
    assert blue > red > green and blue < 180  # purple, dark


def test_density_varies_between_tiles(tiles):
    counts = [tiles[seed][1].max() for seed in SEEDS]
    assert max(counts) >= 1.5 * min(counts), counts
    assert 250 <= min(counts) and max(counts) <= 1500, counts


@pytest.mark.parametrize("seed", SEEDS)
def test_density_varies_within_a_tile(tiles, seed):
    label = tiles[seed][1]
    block = 250
    corners = [(y, x) for y in range(0, 1000, block) for x in range(0, 1000, block)]
    counts = [ids_present(label[y : y + block, x : x + block]) for y, x in corners]
    assert max(counts) >= 3 * max(min(counts), 1), counts  # uniform density gives < 2


@pytest.mark.parametrize("seed", SEEDS)
def test_touching_nuclei_exist(tiles, seed):
    label = tiles[seed][1]
    horizontal = (label[:, 1:] != label[:, :-1]) & (label[:, 1:] > 0) & (label[:, :-1] > 0)
    vertical = (label[1:] != label[:-1]) & (label[1:] > 0) & (label[:-1] > 0)
    assert horizontal.any() or vertical.any()


@pytest.mark.parametrize("seed", SEEDS)
def test_nucleus_sizes_are_plausible(tiles, seed):
    equivalent_diameter = 2.0 * np.sqrt(median_area(tiles[seed][1]) / np.pi)
    assert 10.0 <= equivalent_diameter <= 35.0


@pytest.mark.parametrize("seed", SEEDS)
def test_zoomed_sub_crop_has_fewer_larger_nuclei(tiles, seed):
    crop = tiles[seed][1][:512, :512]
    zoomed = np.kron(crop[128:384, 128:384], np.ones((2, 2), dtype=crop.dtype))  # 2x, nearest neighbour
    assert zoomed.shape == crop.shape
    assert ids_present(zoomed) < ids_present(crop)
    assert median_area(zoomed) > 2.0 * median_area(crop)


def test_density_and_radius_arguments_act():
    sparse = synthesize_tile((500, 500), seed=2, density=300.0)[1]
    dense = synthesize_tile((500, 500), seed=2, density=1500.0)[1]
    small = synthesize_tile((500, 500), seed=2, mean_radius=6.0)[1]
    large = synthesize_tile((500, 500), seed=2, mean_radius=12.0)[1]
    assert dense.max() > 2 * sparse.max()
    assert median_area(large) > 2.5 * median_area(small)


def test_dataset_files_round_trip_exactly(tmp_path):
    shape = (128, 160)
    stems = synthesize_dataset(tmp_path, n_tiles=2, shape=shape, seed=3)
    assert stems == ["synthetic_000", "synthetic_001"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["synthetic_000.tif", "synthetic_001.tif"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["synthetic_000.png", "synthetic_001.png"]
    for index, stem in enumerate(stems):
        image, label = synthesize_tile(shape, seed=tile_seed(3, index))
        with tifffile.TiffFile(tmp_path / "images" / f"{stem}.tif") as tif:
            assert tif.pages[0].compression in (tifffile.COMPRESSION.ADOBE_DEFLATE, tifffile.COMPRESSION.DEFLATE)
            np.testing.assert_array_equal(tif.asarray(), image)
        mask_path = tmp_path / "masks" / f"{stem}.png"
        for mask in (np.asarray(Image.open(mask_path)), io.imread(mask_path)):
            assert mask.dtype == np.uint16
            np.testing.assert_array_equal(mask, label)


def test_tile_k_does_not_depend_on_n_tiles(tmp_path):
    synthesize_dataset(tmp_path / "two", n_tiles=2, shape=(96, 96), seed=7)
    synthesize_dataset(tmp_path / "three", n_tiles=3, shape=(96, 96), seed=7)
    for folder, suffix, read in (("images", "tif", tifffile.imread), ("masks", "png", io.imread)):
        for stem in ("synthetic_000", "synthetic_001"):
            name = f"{folder}/{stem}.{suffix}"
            np.testing.assert_array_equal(read(tmp_path / "two" / name), read(tmp_path / "three" / name))
    masks = tmp_path / "three" / "masks"
    assert not np.array_equal(io.imread(masks / "synthetic_001.png"), io.imread(masks / "synthetic_002.png"))


def test_tile_seeds_are_distinct():
    seeds = [tile_seed(0, 0), tile_seed(0, 1), tile_seed(1, 0), 0, 1]
    labels = [synthesize_tile((128, 128), seed=seed)[1] for seed in seeds]
    for first in range(len(labels)):
        for second in range(first + 1, len(labels)):
            assert not np.array_equal(labels[first], labels[second]), (seeds[first], seeds[second])


def test_mask_with_too_many_nuclei_is_refused(tmp_path):
    label = np.full((2, 2), np.iinfo(np.uint16).max + 1, dtype=np.int32)
    with pytest.raises(ValueError, match="uint16"):
        write_tile(tmp_path, "too_many", np.zeros((2, 2, 3), np.uint8), label)
    assert not (tmp_path / "images" / "too_many.tif").exists()
    assert not (tmp_path / "masks" / "too_many.png").exists()


def test_script_writes_a_folder_from_the_repo_root(tmp_path):
    out_dir = tmp_path / "synthetic"
    result = subprocess.run(
        [sys.executable, "scripts/synthesize.py", "--out_dir", str(out_dir), "--n_tiles", "2", "--size", "64"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 2 tiles" in result.stdout and "per tile" in result.stdout
    assert tifffile.imread(out_dir / "images" / "synthetic_001.tif").shape == (64, 64, 3)
    assert io.imread(out_dir / "masks" / "synthetic_001.png").shape == (64, 64)
