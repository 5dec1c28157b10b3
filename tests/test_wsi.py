"""Whole-slide inference and pretraining tiles (bundle/wsi, configs/inference_wsi.json, configs/pretrain_wsi.json).

The test slide is a pyramidal TIFF (3 levels as a series of pages, 0.25 um/px at level 0): a
1024x1024 synthetic tissue tile with a known instance map, and a blank 512 px glass margin on
the right. A fake ``predict_tile`` answers each window with the ground truth of that window,
relabelled; it finds the window by the digest of the pixels it is given, so it also checks
that the driver read the right pixels.
"""

import csv
import hashlib
import json
import tracemalloc

import numpy as np
import pytest
import shapely
import tifffile
import torch
from bundle.data import DataFileError, read_image
from bundle.networks import segmentation_unet
from bundle.synthetic import synthesize_tile
from bundle.wsi import (
    level_count,
    level_downsample,
    level_for_mpp,
    level_shape,
    open_slide,
    opened_slide,
    owned_nuclei,
    read_region,
    read_tiff_region,
    resolve_backend,
    sample_slide_tiles,
    segment_slide,
    segment_slides,
    slide_paths,
    tile_core,
    tile_grid,
    tile_window,
    tissue_mask,
)
from bundle_runner import TINY_PRETRAIN, run_bundle
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential

TISSUE = 1024  # side of the synthetic tissue block, level-0 pixels
MARGIN = 512  # width of the blank glass on its right
LEVEL0_MPP = 0.25
TILE, OVERLAP = 256, 64


# ----------------------------------------------------------------------------- slides


def write_pyramid(path, rgb: np.ndarray, levels: int = 3, tile: int = 128) -> None:
    """(H, W, 3) uint8 -> tiled zlib TIFF, level l = rgb[::2**l, ::2**l] as reduced-resolution pages."""
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            step, mpp = 2**level, LEVEL0_MPP * 2**level
            tif.write(
                np.ascontiguousarray(rgb[::step, ::step]),
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if level == 0 else 1,
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
            )


def glass(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """(h, w, 3) uint8 blank glass: white with a little independent noise per channel."""
    return (255 - np.random.default_rng(seed).integers(0, 4, (*shape, 3))).astype(np.uint8)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """``{"path", "rgb" (H, W, 3), "label" (H, W)}`` of the test slide, written once per module."""
    tissue_rgb, tissue_label = synthesize_tile((TISSUE, TISSUE), seed=3)
    rgb = glass((TISSUE, TISSUE + MARGIN))
    rgb[:, :TISSUE] = tissue_rgb
    label = np.zeros((TISSUE, TISSUE + MARGIN), np.int32)
    label[:, :TISSUE] = tissue_label
    folder = tmp_path_factory.mktemp("slides")
    write_pyramid(folder / "case_01.tif", rgb)
    (folder / "notes.txt").write_text("not a slide")
    return {"path": folder / "case_01.tif", "dir": folder, "rgb": rgb, "label": label}


def digest(rgb_hwc: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(rgb_hwc).tobytes()).digest()


def expected_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts written out independently of tile_grid: step tile - overlap until a window reaches the end."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + tile - overlap)
    return starts


class GroundTruthTiles:
    """Fake predict_tile: (3, h, w) tile -> ground-truth ids of that window, relabelled 1..n."""

    def __init__(self, rgb: np.ndarray, label: np.ndarray, tile: int, overlap: int):
        self.label, self.calls, self.windows = label, [], {}
        for r in expected_origins(rgb.shape[0], tile, overlap):
            for c in expected_origins(rgb.shape[1], tile, overlap):
                window = (r, c, min(r + tile, rgb.shape[0]), min(c + tile, rgb.shape[1]))
                self.windows[digest(rgb[window[0] : window[2], window[1] : window[3]])] = window

    def __call__(self, tile_rgb: np.ndarray) -> np.ndarray:
        assert tile_rgb.dtype == np.uint8 and tile_rgb.shape[0] == 3
        window = self.windows[digest(tile_rgb.transpose(1, 2, 0))]
        self.calls.append(window)
        return relabel_sequential(self.label[window[0] : window[2], window[1] : window[3]])[0]


def nuclei_cut_by_windows(label: np.ndarray, windows) -> set[int]:
    """Ids of the nuclei that some window edge inside the slide cuts (pixels on both sides of it)."""
    cut = set()
    for r0, c0, r1, c1 in windows:
        for r in (r0, r1):
            if 0 < r < label.shape[0]:
                cut |= set(label[r][(label[r] == label[r - 1]) & (label[r] > 0)].tolist())
        for c in (c0, c1):
            if 0 < c < label.shape[1]:
                cut |= set(label[:, c][(label[:, c] == label[:, c - 1]) & (label[:, c] > 0)].tolist())
    return cut


def ground_truth_table(label: np.ndarray) -> np.ndarray:
    """(N, 3) rows (centroid_y, centroid_x, area) sorted, one per nucleus."""
    table = regionprops_table(label, properties=("centroid", "area"))
    rows = np.stack([table["centroid-0"], table["centroid-1"], table["area"]], axis=1)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def read_csv_table(path) -> tuple[list[dict], np.ndarray]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    table = np.array([[float(r["centroid_y"]), float(r["centroid_x"]), float(r["area"])] for r in rows]).reshape(-1, 3)
    return rows, table[np.lexsort((table[:, 1], table[:, 0]))]


# ----------------------------------------------------------------------------- reading


def test_levels_and_regions_match_the_written_pyramid(slide):
    reader, wsi = open_slide(slide["path"])
    try:
        assert level_count(reader, wsi) == 3
        assert [level_shape(reader, wsi, lv) for lv in range(3)] == [(1024, 1536), (512, 768), (256, 384)]
        assert level_downsample(reader, wsi, 2) == 4.0
        region = read_region(reader, wsi, (100, 1000), (300, 200), level=0)
        assert region.shape == (3, 300, 200) and region.dtype == np.uint8
        np.testing.assert_array_equal(region.transpose(1, 2, 0), slide["rgb"][100:400, 1000:1200])
        level1 = read_region(reader, wsi, (30, 50), (70, 90), level=1).transpose(1, 2, 0)
        np.testing.assert_array_equal(level1, slide["rgb"][::2, ::2][30:100, 50:140])
        with pytest.raises(DataFileError, match="outside level 0"):
            read_region(reader, wsi, (900, 0), (256, 256), level=0)
    finally:
        wsi.close()


@pytest.mark.parametrize("layout", ["strips", "jpeg_tiles", "planar_tiles"])
def test_tiff_region_reader_decodes_only_what_it_needs_correctly(tmp_path, layout):
    rgb = np.random.default_rng(0).integers(0, 255, (300, 410, 3), dtype=np.uint8)
    options = {
        "strips": {"data": rgb, "rowsperstrip": 37, "compression": "zlib"},
        "jpeg_tiles": {"data": rgb, "tile": (64, 64), "compression": "jpeg"},
        "planar_tiles": {"data": rgb.transpose(2, 0, 1), "tile": (64, 64), "planarconfig": "separate"},
    }[layout]
    tifffile.imwrite(tmp_path / "image.tif", photometric="rgb", **options)
    with tifffile.TiffFile(tmp_path / "image.tif") as tif:
        page = tif.pages[0]
        full = page.asarray()
        full = full.transpose(1, 2, 0) if layout == "planar_tiles" else full
        for origin, size in [((0, 0), (300, 410)), ((37, 63), (1, 1)), ((250, 5), (50, 400)), ((64, 128), (64, 64))]:
            region = read_tiff_region(page, origin, size)
            np.testing.assert_array_equal(
                region, full[origin[0] : origin[0] + size[0], origin[1] : origin[1] + size[1]]
            )


def test_open_slide_errors_name_the_file(tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"not a tiff at all")
    with pytest.raises(DataFileError, match="broken.svs: cannot open as a whole slide with the tifffile backend"):
        open_slide(tmp_path / "broken.svs")
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(DataFileError, match="grey.tif: expected an 8-bit RGB slide"):
        open_slide(tmp_path / "grey.tif")
    with pytest.raises(DataFileError, match="missing.tif: no such slide file"):
        open_slide(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match="unknown whole-slide backend 'pillow'"):
        open_slide(tmp_path / "grey.tif", backend="pillow")


def test_auto_backend_prefers_cucim_then_openslide_then_tifffile(monkeypatch):
    installed = set()
    monkeypatch.setattr(
        "bundle.wsi.slide.importlib.util.find_spec", lambda name: object() if name in installed else None
    )
    assert resolve_backend("auto") == "tifffile"
    installed.add("openslide")
    assert resolve_backend("auto") == "openslide"
    installed.add("cucim")
    assert resolve_backend("AUTO") == "cucim"
    with pytest.raises(ValueError, match="backend 'tifffile' is not installed"):
        resolve_backend("tifffile")


def test_slide_paths_picks_slides_from_a_folder_or_a_file(slide, tmp_path):
    assert slide_paths(slide["dir"]) == [slide["path"]]
    assert slide_paths(str(slide["path"])) == [slide["path"]]
    with pytest.raises(FileNotFoundError, match="no slides found"):
        slide_paths(tmp_path)


# ----------------------------------------------------------------------------- tissue and tiling


def test_tissue_mask_separates_tissue_from_the_blank_margin(slide):
    with opened_slide(slide["path"]) as (reader, wsi):
        mask, downsample = tissue_mask(reader, wsi)
    assert downsample == 4.0 and mask.shape == (256, 384)
    assert mask[:, : TISSUE // 4].mean() > 0.9
    assert not mask[:, TISSUE // 4 + 1 :].any()


@pytest.mark.parametrize(
    "shape, tile, overlap", [((1024, 1536), 256, 64), ((700, 333), 128, 37), ((50, 90), 256, 64), ((513, 512), 256, 0)]
)
def test_tile_cores_partition_the_slide_and_keep_half_the_overlap_from_interior_edges(shape, tile, overlap):
    origins = tile_grid(shape, tile, overlap)
    assert origins == [
        (r, c) for r in expected_origins(shape[0], tile, overlap) for c in expected_origins(shape[1], tile, overlap)
    ]
    cover = np.zeros(shape, np.int32)
    for origin in origins:
        r0, c0, r1, c1 = tile_window(origin, shape, tile)
        k0, q0, k1, q1 = tile_core(origin, shape, tile, overlap)
        cover[k0:k1, q0:q1] += 1
        for start, first, last, end, length in ((r0, k0, k1, r1, shape[0]), (c0, q0, q1, c1, shape[1])):
            assert first - start >= (overlap // 2 if start > 0 else 0)
            assert end - last >= (overlap // 2 if end < length else 0)
    np.testing.assert_array_equal(cover, 1)


def test_tile_grid_keeps_only_windows_touching_tissue():
    mask = np.zeros((16, 24), bool)  # mask pixel = 64 slide pixels
    mask[2, 3] = True  # slide rows 128..191, cols 192..255
    origins = tile_grid((1024, 1536), 256, 64, mask, mask_downsample=64)
    assert origins == [(0, 0), (0, 192)]
    with pytest.raises(ValueError, match="overlap < tile_size"):
        tile_grid((1024, 1536), 64, 64)


def test_owned_nuclei_rule_on_a_hand_made_window():
    # window rows 100..140, cols 0..40 of a 300x300 slide; core rows 110..130 (interior top and bottom), cols 0..30
    instances = np.zeros((40, 40), np.int32)
    instances[0:3, 10:13] = 1  # touches the interior top edge: dropped
    instances[12:16, 2:6] = 2  # centroid row 113.5, col 3.5: owned
    instances[30:34, 10:14] = 3  # centroid row 131.5: below the core, dropped
    instances[20:24, 0:3] = 4  # touches the left edge, which is the slide border: owned
    instances[20:24, 36:40] = 5  # touches the interior right edge: dropped
    instances[8:12, 20:24] = 6  # rows 108..111: centroid 109.5 < 110, dropped
    instances[9:13, 30:34] = 7  # centroid col 31.5 > core end 30, dropped
    instances[0:30, 15:18] = 8  # centroid (114.5, 16) in the core, but cut by the interior top edge: dropped
    owned = owned_nuclei(instances, (100, 0, 140, 40), (110, 0, 130, 30), (300, 300))
    assert sorted(np.unique(owned)[1:]) == [2, 4]
    np.testing.assert_array_equal(owned[instances == 2], 2)


# ----------------------------------------------------------------------------- stitching end to end


@pytest.mark.parametrize("level", [0, 1])
def test_every_nucleus_comes_out_once_and_whole(slide, tmp_path, level):
    step = 2**level
    rgb, label = slide["rgb"][::step, ::step], slide["label"][::step, ::step]
    fake = GroundTruthTiles(rgb, label, TILE, OVERLAP)
    summary = segment_slide(
        slide["path"], fake, tmp_path, tile_size=TILE, overlap=OVERLAP, level=level, overview_max_side=512
    )

    # each window runs at most once, and those over the glass margin only do not run
    touching = {w for w in fake.windows.values() if w[1] < TISSUE // step}
    assert len(set(fake.calls)) == len(fake.calls) == summary["tiles"] and set(fake.calls) <= touching
    assert len(fake.windows) > len(touching) and summary["tiles_total"] == len(fake.windows)

    # the test exercises nuclei cut by tile borders
    assert len(nuclei_cut_by_windows(label, touching)) > 20

    # CSV: one row per ground-truth nucleus, same centroid and area, in level-0 pixels (QuPath convention)
    truth = ground_truth_table(label)
    truth[:, :2] = (truth[:, :2] + 0.5) * step
    truth[:, 2] *= step * step
    rows, table = read_csv_table(tmp_path / "case_01_nuclei.csv")
    assert summary["nuclei"] == len(rows) == len(truth)
    np.testing.assert_allclose(table, truth, atol=1e-6)
    assert sorted(int(r["id"]) for r in rows) == list(range(1, len(rows) + 1))

    # GeoJSON: QuPath detections whose outlines cover their nucleus, each ground-truth nucleus once
    with open(tmp_path / "case_01.geojson") as file:
        geojson = json.load(file)
    features = geojson["features"]
    assert geojson["type"] == "FeatureCollection" and len(features) == len(truth)
    matched = []
    for feature in features:
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"] == "Nucleus"
        ring = np.array(feature["geometry"]["coordinates"][0]) / step - 0.5  # level pixels, centres at integers
        rr, cc = fill_polygon(ring[:, 1], ring[:, 0], shape=label.shape)
        ids, counts = np.unique(label[rr, cc], return_counts=True)
        best = ids[counts.argmax()]
        iou = counts.max() / (len(rr) + (label == best).sum() - counts.max())
        assert best > 0 and iou > 0.6, (feature["properties"], iou)
        matched.append(best)
    assert len(set(matched)) == len(truth)
    assert {f["properties"]["measurements"]["id"] for f in features} == {int(r["id"]) for r in rows}

    # measurements in µm from the slide's resolution, areas of level-0 pixels; the same centroids as the CSV
    by_id = {int(r["id"]): r for r in rows}
    for feature in features:
        measured, row = feature["properties"]["measurements"], by_id[feature["properties"]["measurements"]["id"]]
        assert measured["Area µm^2"] == pytest.approx(float(row["area"]) * LEVEL0_MPP**2)
        assert measured["Perimeter µm"] == pytest.approx(float(row["perimeter"]) * LEVEL0_MPP)
        centre = shapely.Polygon(feature["geometry"]["coordinates"][0]).centroid
        assert abs(centre.x - float(row["centroid_x"])) < step and abs(centre.y - float(row["centroid_y"])) < step

    # overview: the thumbnail tinted green where nuclei are, the glass left as it is
    overview = np.asarray(Image.open(tmp_path / "case_01_overview.png")).astype(int)
    assert overview.shape == (256, 384, 3)
    thumbnail = slide["rgb"][::4, ::4].astype(int)
    greener = (overview[..., 1] - overview[..., 0]) - (thumbnail[..., 1] - thumbnail[..., 0]) > 20
    assert greener.sum() > len(truth) // 4 and not greener[:, TISSUE // 4 + 1 :].any()
    assert (overview[:, TISSUE // 4 + 1 :] == thumbnail[:, TISSUE // 4 + 1 :]).all()


def test_tile_predictor_output_is_checked(slide, tmp_path):
    with pytest.raises(
        ValueError, match=r"case_01.tif: tile at \(row 0, col 0\) is \(256, 256\) but predict_tile returned \(10, 10\)"
    ):
        segment_slide(
            slide["path"], lambda rgb: np.zeros((10, 10), np.int32), tmp_path, tile_size=TILE, overlap=OVERLAP
        )
    assert not list(tmp_path.iterdir())  # no partial outputs


def test_memory_stays_bounded_by_the_tile_on_a_large_slide(tmp_path):
    """4096x4096 slide (48 MiB as an array), mostly glass, four tissue islands; tiles of 128 px.

    The peak (about 4 MiB) is the thumbnail (256 px a side here) and one tile's work."""
    rgb = np.full((4096, 4096, 3), 255, np.uint8)  # plain glass: compresses fast
    island = synthesize_tile((300, 300), seed=5)[0]
    for row, col in [(200, 300), (1500, 2900), (3000, 700), (3600, 3600)]:
        rgb[row : row + 300, col : col + 300] = island
    write_pyramid(tmp_path / "large.tif", rgb, levels=4)
    full_size = rgb.nbytes
    del rgb

    def dark_blobs(tile_rgb):
        return connected_components(tile_rgb.min(axis=0) < 140).astype(np.int32)

    tracemalloc.start()
    try:
        summary = segment_slide(
            tmp_path / "large.tif", dark_blobs, tmp_path / "out", tile_size=128, overlap=32, overview_max_side=256
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["nuclei"] > 50 and summary["tiles"] < summary["tiles_total"] // 10
    assert peak < 0.1 * full_size, f"peak {peak / 2**20:.1f} MiB for a {full_size / 2**20:.0f} MiB slide"


def test_segment_slides_skips_a_slide_whose_stem_repeats_another_ignoring_case(tmp_path):
    rgb = synthesize_tile((256, 256), seed=3)[0]
    write_pyramid(tmp_path / "Z.tif", rgb, levels=1)
    write_pyramid(tmp_path / "z.TIF", rgb, levels=1)
    with pytest.raises(SystemExit) as exit_info:
        segment_slides(
            [tmp_path / "Z.tif", tmp_path / "z.TIF"],
            lambda tile: np.zeros(tile.shape[1:], np.int32),
            tmp_path / "out",
            tile_size=128,
            overlap=32,
            overview_max_side=128,
        )
    assert str(exit_info.value).splitlines()[1:] == [
        f"  {tmp_path / 'z.TIF'}: same file stem as {tmp_path / 'Z.tif'}: their outputs would overwrite each other"
    ]
    written = [p.name for p in (tmp_path / "out").iterdir() if p.name != "cohort_summary.json"]
    assert written and all(name.startswith("Z") for name in written)


# ----------------------------------------------------------------------------- pretraining tiles


def test_sample_slide_tiles_draws_tissue_tiles_once_and_reuses_them(slide, tmp_path, monkeypatch):
    items = sample_slide_tiles(slide["dir"], tmp_path / "cache", tile_size=128, tiles_per_slide=5, seed=7)
    assert len(items) == 5 and items == sample_slide_tiles(
        slide["path"], tmp_path / "cache", tile_size=128, tiles_per_slide=5, seed=7
    )
    for item in items:
        path = item["image"]
        assert path.startswith(str(tmp_path / "cache" / "level0_128px" / "case_01_"))
        row, col = map(int, path[: -len(".tif")].split("_")[-2:])
        assert col + 128 <= TISSUE and row % 128 == 0 and col % 128 == 0
        np.testing.assert_array_equal(read_image(path), slide["rgb"][row : row + 128, col : col + 128])
    assert sample_slide_tiles(slide["dir"], tmp_path / "cache", tile_size=128, tiles_per_slide=5, seed=8) != items

    monkeypatch.setattr("bundle.wsi.sampling.write_image", lambda *args: pytest.fail("a cached tile was written again"))
    assert sample_slide_tiles(slide["dir"], tmp_path / "cache", tile_size=128, tiles_per_slide=5, seed=7) == items


def test_sample_slide_tiles_picks_the_level_for_a_target_resolution(slide, tmp_path):
    with opened_slide(slide["path"]) as (reader, wsi):
        assert level_for_mpp(reader, wsi, 0.5) == 1 and level_for_mpp(reader, wsi, 0.9) == 2
        with pytest.raises(DataFileError, match="case_01.tif: no level within 25% of 3.0 um/px"):
            level_for_mpp(reader, wsi, 3.0)
    items = sample_slide_tiles(slide["path"], tmp_path, tile_size=128, tiles_per_slide=2, target_mpp=0.5)
    row, col = map(int, items[0]["image"][: -len(".tif")].split("_")[-2:])  # level-0 pixels
    assert "level1_128px" in items[0]["image"]
    np.testing.assert_array_equal(
        read_image(items[0]["image"]), slide["rgb"][::2, ::2][row // 2 : row // 2 + 128, col // 2 : col // 2 + 128]
    )
    with pytest.raises(FileNotFoundError, match="no tile of 2048 px"):
        sample_slide_tiles(slide["path"], tmp_path, tile_size=2048)


# ----------------------------------------------------------------------------- bundle configs


@pytest.fixture(scope="module")
def small_slide_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_slides")
    write_pyramid(folder / "tiny.tif", synthesize_tile((384, 384), seed=4)[0], levels=2)
    return folder


def test_inference_wsi_config_end_to_end(small_slide_dir, tmp_path):
    model_path = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(segmentation_unet("resnet10").state_dict(), model_path)
    result = run_bundle(
        ["inference.json", "inference_wsi.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(small_slide_dir),
        model_path=str(model_path),
        output_dir=str(tmp_path / "out"),
        backbone="resnet10",
        roi_size=256,
        sw_batch_size=1,
        tile_size=256,
        overlap=64,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "out" / "tiny.geojson") as file:
        assert json.load(file)["type"] == "FeatureCollection"
    with open(tmp_path / "out" / "tiny_nuclei.csv", newline="") as file:
        assert csv.DictReader(file).fieldnames[:3] == ["id", "centroid_x", "centroid_y"]
    assert Image.open(tmp_path / "out" / "tiny_overview.png").size == (192, 192)


def test_inference_wsi_config_reports_a_bad_model_file(small_slide_dir, tmp_path):
    torch.save(segmentation_unet("resnet18").state_dict(), tmp_path / "model.pt")
    result = run_bundle(
        ["inference.json", "inference_wsi.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        slide_path=str(small_slide_dir / "tiny.tif"),
        model_path=str(tmp_path / "model.pt"),
        backbone="resnet10",
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'model.pt'}: does not fit this workflow's network" in result.stderr
    assert "rerun with --backbone resnet18" in result.stderr


def test_pretraining_from_whole_slides(slide, tmp_path):
    result = run_bundle(
        ["pretrain.json", "pretrain_wsi.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(slide["dir"]),
        wsi_tile_size=128,
        wsi_tiles_per_slide=4,
        **TINY_PRETRAIN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "pretrained_encoder.pt").is_file()
    tiles = sorted((tmp_path / "runs" / "pretrain" / "wsi_tiles" / "level0_128px").glob("case_01_*.tif"))
    assert len(tiles) == 4
