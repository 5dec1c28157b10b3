import csv
import json

import numpy as np
import pytest
import shapely
import tifffile
from bundle.data import DataFileError
from bundle.synthetic import synthesize_tile
from bundle.writers import (
    NUCLEUS_COLUMNS,
    density_overlay,
    instance_polygons,
    nuclei_geojson,
    nucleus_table,
    overlay_contours,
    write_geojson,
    write_instance_tiff,
    write_nuclei_csv,
    write_overlay_png,
)
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.draw import disk, ellipse
from skimage.draw import polygon as fill_polygon
from skimage.measure import regionprops_table

GREEN = (0, 255, 0)


def nuclei_map() -> np.ndarray:
    """(48, 64) map, ids non-contiguous: a disc, two touching squares, an ellipse."""
    label = np.zeros((48, 64), np.int32)
    label[disk((12, 12), 7, shape=label.shape)] = 4
    label[26:40, 6:18] = 10
    label[26:40, 18:30] = 11
    label[ellipse(20, 46, 8, 14, shape=label.shape, rotation=0.6)] = 25
    return label


def grey_image(shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 with pink-ish noise and no pure green pixel."""
    rng = np.random.default_rng(0)
    return rng.integers(100, 200, size=(*shape, 3), dtype=np.uint8)


def rasterised(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, 2) (x, y) polygon -> (H, W) bool mask of the pixels whose centre lies inside."""
    mask = np.zeros(shape, bool)
    mask[fill_polygon(ring[:, 1], ring[:, 0], shape)] = True
    return mask


def inner_contour(label: np.ndarray) -> np.ndarray:
    """Pixels of each nucleus with a 4-neighbour outside it, computed one nucleus at a time."""
    contour = np.zeros(label.shape, bool)
    for nucleus_id in np.unique(label[label > 0]):
        mask = label == nucleus_id
        contour |= mask & ~ndimage.binary_erosion(mask, border_value=1)
    return contour


# ----------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("top, dtype", [(65535, np.uint16), (65536, np.uint32)])
def test_instance_tiff_round_trip_and_dtype(tmp_path, top, dtype):
    label = nuclei_map()
    label[label == 25] = top
    write_instance_tiff(tmp_path / "instances.tif", label[None])
    stored = tifffile.imread(tmp_path / "instances.tif")
    assert stored.dtype == dtype
    np.testing.assert_array_equal(stored, label)
    with tifffile.TiffFile(tmp_path / "instances.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_instance_tiff_needs_tiff_suffix(tmp_path):
    with pytest.raises(DataFileError, match="instances.png"):
        write_instance_tiff(tmp_path / "instances.png", nuclei_map())


# ----------------------------------------------------------------------------- overlay


def test_overlay_differs_from_image_exactly_on_contours():
    label = nuclei_map()
    image = grey_image(label.shape)
    overlay = overlay_contours(image, label, color=GREEN)
    changed = (overlay != image).any(axis=-1)
    np.testing.assert_array_equal(changed, inner_contour(label))
    assert (overlay[changed] == GREEN).all()


def test_overlay_png_round_trip(tmp_path):
    label = nuclei_map()
    image = grey_image(label.shape)
    write_overlay_png(tmp_path / "overlay.png", image, label)
    with Image.open(tmp_path / "overlay.png") as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), overlay_contours(image, label))


def test_overlay_refuses_mismatched_image(tmp_path):
    with pytest.raises(DataFileError, match="overlay.png.*48x64"):
        write_overlay_png(tmp_path / "overlay.png", grey_image((40, 64)), nuclei_map())
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- polygons and GeoJSON


def test_polygons_are_closed_and_rasterise_back():
    label = nuclei_map()
    polygons = instance_polygons(label)
    assert [nucleus_id for nucleus_id, _ in polygons] == [4, 10, 11, 25]
    for nucleus_id, ring in polygons:
        assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
        np.testing.assert_array_equal(ring[0], ring[-1])
        mask, drawn = label == nucleus_id, rasterised(ring, label.shape)
        assert (mask & drawn).sum() / (mask | drawn).sum() > 0.8


def test_polygons_of_synthetic_nuclei_rasterise_back():
    _, label = synthesize_tile((256, 256), seed=3)
    areas = np.bincount(label.ravel())
    polygons = instance_polygons(label)
    assert len(polygons) == label.max()
    for nucleus_id, ring in polygons:
        assert areas[nucleus_id] >= 30
        mask, drawn = label == nucleus_id, rasterised(ring, label.shape)
        assert (mask & drawn).sum() / (mask | drawn).sum() > 0.8


def test_unsimplified_polygon_of_rectangle_lies_on_pixel_edges():
    label = np.zeros((20, 20), np.int32)
    label[5:9, 3:10] = 1  # rows 5-8, columns 3-9
    ((_, ring),) = instance_polygons(label, tolerance=0)
    assert ring[:, 0].min() == 2.5 and ring[:, 0].max() == 9.5
    assert ring[:, 1].min() == 4.5 and ring[:, 1].max() == 8.5
    ((_, simplified),) = instance_polygons(label, tolerance=0.5)
    assert len(simplified) < len(ring)
    assert (simplified >= [2.5, 4.5]).all() and (simplified <= [9.5, 8.5]).all()


@pytest.mark.parametrize("tolerance", [0.5, 2.0])
def test_simplified_outlines_stay_within_tolerance_of_the_pixel_edges(tolerance):
    _, label = synthesize_tile((256, 256), seed=5)
    exact, simplified = instance_polygons(label, tolerance=0), instance_polygons(label, tolerance=tolerance)
    assert [i for i, _ in exact] == [i for i, _ in simplified]
    assert sum(len(ring) for _, ring in simplified) < sum(len(ring) for _, ring in exact)
    for (_, trace), (_, ring) in zip(exact, simplified):
        np.testing.assert_array_equal(ring[0], ring[-1])
        assert {tuple(vertex) for vertex in ring} <= {
            tuple(vertex) for vertex in trace
        }  # a subset of the trace's vertices
        assert shapely.distance(shapely.points(trace), shapely.linestrings(ring)).max() <= tolerance + 1e-9


def test_single_pixel_nucleus_keeps_a_valid_ring():
    label = np.zeros((5, 5), np.int32)
    label[2, 2] = 7
    ((nucleus_id, ring),) = instance_polygons(label)
    assert nucleus_id == 7 and len(ring) >= 4 and np.array_equal(ring[0], ring[-1])


def test_geojson_parses_back_with_one_detection_per_nucleus(tmp_path):
    label = nuclei_map()
    write_geojson(tmp_path / "nuclei.geojson", nuclei_geojson(label))
    collection = json.loads((tmp_path / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == 4
    assert sorted(feature["properties"]["measurements"]["id"] for feature in features) == [4, 10, 11, 25]
    for feature in features:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"] == "Nucleus"
        assert len(feature["properties"]["classification"]["color"]) == 3
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        assert all(isinstance(value, float) for vertex in ring for value in vertex)


def test_geojson_uses_qupath_pixel_corners_and_offset():
    label = np.zeros((20, 20), np.int32)
    label[5:9, 3:10] = 1  # QuPath: x in [3, 10], y in [5, 9]
    (feature,) = nuclei_geojson(label, offset=(1000, 2000), tolerance=0)["features"]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == 1003 and ring[:, 0].max() == 1010
    assert ring[:, 1].min() == 2005 and ring[:, 1].max() == 2009


# ----------------------------------------------------------------------------- table and CSV


def test_table_matches_bincount_areas_and_measurements():
    label = nuclei_map()
    image = grey_image(label.shape)
    rows = nucleus_table(image, label)
    areas = np.bincount(label.ravel())
    assert [row["id"] for row in rows] == [4, 10, 11, 25]
    assert [row["area"] for row in rows] == [int(areas[row["id"]]) for row in rows]
    square = next(row for row in rows if row["id"] == 10)  # rows 26-39, columns 6-17: [6, 18) x [26, 40) in QuPath's
    assert (square["centroid_x"], square["centroid_y"]) == pytest.approx((12.0, 33.0))
    assert square["mean_hematoxylin"] == pytest.approx(rgb2hed(image)[..., 0][label == 10].mean())
    assert all(0 <= row["eccentricity"] < 1 and row["perimeter"] > 0 for row in rows)


def test_table_measures_as_regionprops_does():
    image, label = synthesize_tile((160, 160), seed=4)
    label[label == label.max()] = 0  # ids need not be contiguous
    label[5, 5] = label.max() + 7  # a one-pixel nucleus: eccentricity 0
    rows = nucleus_table(image, label)
    reference = regionprops_table(
        label, intensity_image=rgb2hed(image)[..., 0], properties=("label", "centroid", "area", "eccentricity")
    )
    assert [row["id"] for row in rows] == reference["label"].tolist()
    np.testing.assert_allclose([row["eccentricity"] for row in rows], reference["eccentricity"], atol=1e-9)
    np.testing.assert_allclose([row["centroid_y"] for row in rows], reference["centroid-0"] + 0.5)
    assert [row["area"] for row in rows] == reference["area"].astype(int).tolist()


def test_csv_has_header_and_one_row_per_nucleus(tmp_path):
    label = nuclei_map()
    rows = nucleus_table(grey_image(label.shape), label)
    write_nuclei_csv(tmp_path / "nuclei.csv", rows)
    with open(tmp_path / "nuclei.csv", newline="") as file:
        reader = csv.DictReader(file)
        read = list(reader)
    assert tuple(reader.fieldnames) == NUCLEUS_COLUMNS
    assert len(read) == 4
    assert [int(row["area"]) for row in read] == [int(np.sum(label == row["id"])) for row in rows]
    assert [float(row["centroid_x"]) for row in read] == [row["centroid_x"] for row in rows]


def test_csv_refuses_rows_with_other_columns_and_keeps_old_file(tmp_path):
    target = tmp_path / "nuclei.csv"
    target.write_text("old")
    with pytest.raises(DataFileError, match=r"nuclei\.csv: row 0"):
        write_nuclei_csv(target, [{"id": 1}])
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["nuclei.csv"]


# ----------------------------------------------------------------------------- no nuclei, atomicity, errors


def test_zero_nuclei_write_valid_empty_outputs(tmp_path):
    label = np.zeros((16, 24), np.int32)
    image = grey_image(label.shape)
    write_instance_tiff(tmp_path / "instances.tif", label)
    write_overlay_png(tmp_path / "overlay.png", image, label)
    write_geojson(tmp_path / "nuclei.geojson", nuclei_geojson(label))
    write_nuclei_csv(tmp_path / "nuclei.csv", nucleus_table(image, label))
    assert not tifffile.imread(tmp_path / "instances.tif").any()
    with Image.open(tmp_path / "overlay.png") as png:
        np.testing.assert_array_equal(np.asarray(png), image)
    assert json.loads((tmp_path / "nuclei.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    assert (tmp_path / "nuclei.csv").read_text().splitlines() == [",".join(NUCLEUS_COLUMNS)]


def test_writes_leave_no_temporary_files(tmp_path):
    label = nuclei_map()
    image = grey_image(label.shape)
    write_instance_tiff(tmp_path / "instances.tif", label)
    write_overlay_png(tmp_path / "overlay.png", image, label)
    write_geojson(tmp_path / "nuclei.geojson", nuclei_geojson(label))
    write_nuclei_csv(tmp_path / "nuclei.csv", nucleus_table(image, label))
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["instances.tif", "nuclei.csv", "nuclei.geojson", "overlay.png"]


def test_io_errors_name_the_file(tmp_path):
    (tmp_path / "not_a_folder").write_text("")
    target = tmp_path / "not_a_folder" / "nuclei.geojson"
    with pytest.raises(DataFileError, match="not_a_folder/nuclei.geojson: cannot write"):
        write_geojson(target, nuclei_geojson(nuclei_map()))


def test_geojson_refuses_nan_and_keeps_no_file(tmp_path):
    with pytest.raises(DataFileError, match="bad.geojson"):
        write_geojson(tmp_path / "bad.geojson", {"type": "FeatureCollection", "value": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_csv_and_geojson_share_one_coordinate_convention():
    label = np.zeros((30, 40), np.int32)
    label[5:12, 20:31] = 1  # a rectangle: its outline's centroid is exactly its pixels' centroid
    (row,) = nucleus_table(grey_image(label.shape), label)
    (feature,) = nuclei_geojson(label, tolerance=0)["features"]
    centre = shapely.Polygon(feature["geometry"]["coordinates"][0]).centroid
    assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((centre.x, centre.y)) == (25.5, 8.5)


def test_density_overlay_tints_where_nuclei_are_and_keeps_the_rest():
    image = np.full((4, 5, 3), 200, np.uint8)
    counts = np.zeros((4, 5), np.int64)
    counts[1, 1], counts[2, 3] = 1, 100
    tinted = density_overlay(image, counts, color=(0, 255, 0), max_alpha=0.5)
    assert (tinted[counts == 0] == 200).all()
    assert tuple(tinted[2, 3]) == (100, 228, 100)  # the densest pixel: half way to the colour
    assert 0 < 200 - int(tinted[1, 1, 0]) < 100  # a lone nucleus: a lighter tint
    assert (density_overlay(image, np.zeros((4, 5)), color=(0, 255, 0)) == image).all()
    with pytest.raises(ValueError, match="instance map is 3x5"):
        density_overlay(image, np.zeros((3, 5)))


def test_edge_flag_marks_nuclei_that_reach_the_border():
    label = np.zeros((20, 20), np.int32)
    label[0:4, 5:9] = 1  # top edge
    label[8:12, 8:12] = 2
    label[15:20, 15:20] = 3  # bottom-right corner
    rows = nucleus_table(grey_image(label.shape), label)
    assert [row["touches_edge"] for row in rows] == [1, 0, 1]


@pytest.mark.parametrize("mpp, area_name, area", [(None, "Area px^2", 16.0), (0.25, "Area µm^2", 1.0)])
def test_geojson_carries_measurements_with_units(mpp, area_name, area):
    label = np.zeros((20, 20), np.int32)
    label[8:12, 8:12] = 7
    rows = nucleus_table(grey_image(label.shape), label)
    (feature,) = nuclei_geojson(label, rows=rows, mpp=mpp)["features"]
    measurements = feature["properties"]["measurements"]
    perimeter_name = "Perimeter px" if mpp is None else "Perimeter µm"
    assert set(measurements) == {
        "id",
        area_name,
        perimeter_name,
        "Eccentricity",
        "Hematoxylin OD mean",
        "Touches tile edge",
    }
    assert measurements["id"] == 7 and measurements[area_name] == pytest.approx(area)
    assert measurements[perimeter_name] == pytest.approx(rows[0]["perimeter"] * (mpp or 1))
    assert measurements["Touches tile edge"] == 0 and measurements["Hematoxylin OD mean"] == pytest.approx(
        rows[0]["mean_hematoxylin"]
    )


def test_instance_tiff_records_the_pixel_size(tmp_path):
    write_instance_tiff(tmp_path / "a.tif", nuclei_map(), mpp=0.25)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        tags = tif.pages[0].tags
        assert tags["XResolution"].value == (40000, 1) and tags["ResolutionUnit"].value == 3  # 40000 px/cm = 0.25 µm/px
