"""QuPath GeoJSON in: outlines drawn in QuPath become instance labels, under the rules of Aperio XML."""

import json

import numpy as np
import pytest
import tifffile
from bundle.data import DataFileError, read_label, write_image
from bundle.preparation import prepare
from bundle.qupath import read_qupath_geojson


def square(x0, y0, x1, y1):
    """A closed GeoJSON ring (QuPath coordinates: pixel (0, 0) spans [0, 1) x [0, 1))."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry, object_type="annotation", **extra):
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": object_type}, **extra}


QUPATH_EXPORT = {
    "type": "FeatureCollection",
    "features": [
        feature({"type": "Polygon", "coordinates": [square(2, 2, 6, 6)]}),
        feature({"type": "MultiPolygon", "coordinates": [[square(10, 2, 12, 4)], [square(14, 2, 16, 4)]]}, "detection"),
        feature({"type": "Polygon", "coordinates": [square(0, 10, 10, 20), square(3, 13, 7, 17)]}),  # with a hole
        feature(
            {"type": "Polygon", "coordinates": [square(11, 10, 19, 19)]},
            "cell",
            nucleusGeometry={"type": "Polygon", "coordinates": [square(13, 12, 16, 15)]},
        ),
    ],
}


def expected_label() -> np.ndarray:
    label = np.zeros((24, 24), np.int32)
    label[2:6, 2:6] = 1
    label[2:4, 10:12] = label[2:4, 14:16] = 2
    label[10:20, 0:10] = 3
    label[13:17, 3:7] = 0
    label[12:15, 13:16] = 4  # the cell's nucleus, not its whole outline
    return label


def test_annotations_detections_cells_multipolygons_and_holes_are_rasterised(tmp_path):
    path = tmp_path / "tile.geojson"
    path.write_text(json.dumps(QUPATH_EXPORT))
    np.testing.assert_array_equal(read_qupath_geojson(path, (24, 24)), expected_label())
    path.write_text(json.dumps(QUPATH_EXPORT["features"]))  # QuPath's default export: a plain list of features
    np.testing.assert_array_equal(read_qupath_geojson(path, (24, 24)), expected_label())


def test_unusable_features_are_skipped_with_one_warning(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text(
        json.dumps(
            [
                feature({"type": "Polygon", "coordinates": [square(2, 2, 6, 6)]}),
                feature({"type": "Point", "coordinates": [3, 3]}),
                feature({"type": "Polygon", "coordinates": [[[1, 1], [2, 2]]]}),
                feature({"type": "Polygon", "coordinates": [[[1, 1], ["nan", 2], [3, 1]]]}),
                feature({"type": "Polygon", "coordinates": [square(-1e8, -1e8, 1e8, 1e8)]}),
            ]
        )
    )
    with pytest.warns(UserWarning) as caught:
        label = read_qupath_geojson(path, (200, 200))
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{path}: skipped 3 region(s) with fewer than 3 vertices or non-numeric/non-finite/out-of-range "
        "coordinates; skipped 1 region(s) covering more than 10000 px (no nucleus is that large)"
    )
    assert np.unique(label).tolist() == [0, 1] and (label == 1).sum() == 16


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty file (0 bytes)"),
        ('{"type": "FeatureCollection", "features": [', "malformed JSON at line 1, column 44: Expecting value"),
        (
            '{"name": "not geojson"}',
            "not GeoJSON: expected a FeatureCollection, a list of features, a feature or a geometry",
        ),
    ],
)
def test_broken_files_are_named_with_the_problem(tmp_path, text, problem):
    path = tmp_path / "broken.geojson"
    path.write_text(text)
    with pytest.raises(DataFileError) as error:
        read_qupath_geojson(path, (8, 8))
    assert str(error.value).startswith(f"{path}: {problem}")


def test_prepare_takes_qupath_geojson_beside_each_image(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for index in range(3):
        write_image(src / "images" / f"tile{index}.tif", np.full((24, 24, 3), 200, np.uint8))
        (src / "annotations").mkdir(exist_ok=True)
        (src / "annotations" / f"tile{index}.geojson").write_text(json.dumps(QUPATH_EXPORT))
    datalist = json.loads((tmp_path / prepare(src=str(src), out=str(out))).read_text())
    items = datalist["training"] + datalist["validation"]
    assert len(items) == 3 and {item["label_source"] for item in items} == {"geojson"}
    for item in items:
        np.testing.assert_array_equal(read_label(out / item["label"]), expected_label())
    assert tifffile.imread(out / "images" / "tile0.tif").shape == (24, 24, 3)
