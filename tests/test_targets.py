import numpy as np
import pytest
import torch
from bundle.targets import BACKGROUND, BODY, BOUNDARY, InstanceToClassMap, InstanceToClassMapd
from scipy import ndimage


def touching_squares() -> np.ndarray:
    """(12, 22) map: ids 5 (rows 1-10, cols 1-9) and 9 (rows 1-10, cols 10-19) share an edge."""
    label = np.zeros((12, 22), np.int32)
    label[1:11, 1:10] = 5
    label[1:11, 10:20] = 9
    return label


def expected_squares(width: int) -> np.ndarray:
    """Hand-built target of :func:`touching_squares`: a ``width`` px rim inside each square."""
    expected = np.zeros((12, 22), np.uint8)
    for cols in (slice(1, 10), slice(10, 20)):
        expected[1:11, cols] = BOUNDARY
        expected[1 + width : 11 - width, cols.start + width : cols.stop - width] = BODY
    return expected


def voronoi_label(shape: tuple[int, int], n_cells: int, seed: int) -> np.ndarray:
    """Every pixel belongs to one of ``n_cells`` nuclei (ids 3, 6, 9, ...): all nuclei touch."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, shape, size=(n_cells, 2))
    rows, cols = np.indices(shape)
    distance = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    return 3 * (np.argmin(distance, axis=-1) + 1)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_touching_squares_match_hand_drawn_target(width):
    classes = InstanceToClassMap(boundary_width=width)(touching_squares()[None])
    assert classes.shape == (1, 12, 22) and classes.dtype == np.uint8
    np.testing.assert_array_equal(classes[0], expected_squares(width))


def test_bodies_of_touching_squares_do_not_touch():
    label = touching_squares()
    body = InstanceToClassMap()(label)[0] == BODY
    left, right = body & (label == 5), body & (label == 9)
    assert left.any() and right.any()
    assert not (ndimage.binary_dilation(left, structure=np.ones((3, 3))) & right).any()


def test_background_stays_background():
    label = touching_squares()
    classes = InstanceToClassMap()(label)[0]
    assert (classes[label == 0] == BACKGROUND).all()
    assert (classes[label > 0] != BACKGROUND).all()


def test_nucleus_cut_by_tile_edge_has_no_boundary_along_the_edge():
    label = np.zeros((8, 8), np.int32)
    label[:, :5] = 4
    classes = InstanceToClassMap(boundary_width=2)(label)[0]
    np.testing.assert_array_equal(classes[:, :3], BODY)
    np.testing.assert_array_equal(classes[:, 3:5], BOUNDARY)


@pytest.mark.parametrize("width", [1, 2])
def test_bodies_of_different_nuclei_never_touch_even_diagonally(width):
    label = voronoi_label((96, 96), n_cells=40, seed=0)
    classes = InstanceToClassMap(boundary_width=width)(label)[0]
    body_ids = np.where(classes == BODY, label, 0)
    padded = np.pad(body_ids, 1)
    height, width_px = body_ids.shape
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        neighbour = padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width_px]
        assert not ((body_ids > 0) & (neighbour > 0) & (body_ids != neighbour)).any()
    assert np.unique(body_ids[body_ids > 0]).size > 30  # most cells keep a body


def test_boundary_rim_is_exactly_width_pixels_deep():
    label = voronoi_label((64, 64), n_cells=12, seed=1)
    width = 3
    classes = InstanceToClassMap(boundary_width=width)(label)[0]
    # city-block distance of each pixel to the nearest pixel of another id, one nucleus at a time
    depth = np.zeros(label.shape)
    for nucleus_id in np.unique(label):
        inside = label == nucleus_id
        outside = np.pad(~inside, 1, constant_values=False)
        depth[inside] = ndimage.distance_transform_cdt(~outside, metric="taxicab")[1:-1, 1:-1][inside]
    np.testing.assert_array_equal(classes == BOUNDARY, depth <= width)


def test_torch_and_float_inputs():
    label = torch.from_numpy(touching_squares()[None]).float()
    classes = InstanceToClassMap()(label)
    assert isinstance(classes, torch.Tensor) and classes.dtype == torch.uint8
    np.testing.assert_array_equal(classes[0].numpy(), expected_squares(2))


def test_dictionary_version_converts_only_its_keys():
    label = touching_squares()[None]
    out = InstanceToClassMapd(keys="label", boundary_width=1)({"label": label, "image": label})
    np.testing.assert_array_equal(out["label"][0], expected_squares(1))
    assert out["image"] is label


@pytest.mark.parametrize(
    "label, message",
    [
        (np.zeros((2, 4, 4), np.int32), "shape"),
        (np.full((4, 4), 1.5), "non-integer"),
        (np.full((4, 4), -1), "negative"),
        (np.full((4, 4), "a"), "dtype"),
    ],
)
def test_bad_label_maps_are_refused(label, message):
    with pytest.raises(ValueError, match=message):
        InstanceToClassMap()(label)


def test_boundary_width_must_be_positive():
    with pytest.raises(ValueError, match="boundary_width"):
        InstanceToClassMap(boundary_width=0)
