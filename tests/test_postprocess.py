import numpy as np
import pytest
import torch
from bundle.postprocess import ClassMapToInstances, ClassMapToInstancesd
from bundle.targets import BACKGROUND, BODY, BOUNDARY, InstanceToClassMap
from scipy import ndimage
from skimage.draw import disk


def nuclei_map() -> np.ndarray:
    """(64, 80) instance map: a lone disc, two touching squares, two touching discs, three touching bars."""
    label = np.zeros((64, 80), np.int32)
    label[disk((14, 14), 8, shape=label.shape)] = 3
    label[30:46, 4:18] = 7
    label[30:46, 18:34] = 12
    label[disk((16, 50), 9, shape=label.shape)] = 20
    label[disk((16, 66), 7, shape=label.shape)] = 21
    label[40:60, 44:52] = 30
    label[40:60, 52:62] = 31
    label[40:60, 62:76] = 32
    return label


def one_hot(classes: np.ndarray) -> np.ndarray:
    """(1, H, W) or (H, W) class indices -> (3, H, W) float32 one-hot probabilities."""
    return np.eye(3, dtype=np.float32)[classes.reshape(classes.shape[-2:])].transpose(2, 0, 1)


def probabilities(background: np.ndarray, body: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 map from background and body probabilities; boundary takes the rest."""
    return np.stack([background, body, 1.0 - background - body]).astype(np.float32)


def assert_same_instances(expected: np.ndarray, found: np.ndarray) -> None:
    """Every instance of ``expected`` has exactly the pixel set of one instance of ``found``."""
    np.testing.assert_array_equal(expected > 0, found > 0)
    pairs = np.unique(np.stack([expected[expected > 0], found[found > 0]]), axis=1)
    assert pairs.shape[1] == np.unique(expected[expected > 0]).size == np.unique(found[found > 0]).size


@pytest.mark.parametrize("width", [1, 2, 3])
def test_one_hot_targets_are_recovered_exactly(width):
    label = nuclei_map()
    instances = ClassMapToInstances()(one_hot(InstanceToClassMap(width)(label)))
    assert instances.shape == (1, *label.shape) and instances.dtype == np.int32
    assert_same_instances(label, instances[0])


def test_ids_are_relabelled_one_to_n():
    instances = ClassMapToInstances()(one_hot(InstanceToClassMap()(nuclei_map())))
    np.testing.assert_array_equal(np.unique(instances), np.arange(9))


def test_blurred_noisy_probabilities_still_separate_touching_nuclei():
    label = nuclei_map()
    prob = ndimage.gaussian_filter(one_hot(InstanceToClassMap()(label)), sigma=(0, 1, 1))
    prob = np.clip(prob + np.random.default_rng(0).normal(0, 0.05, prob.shape), 0, None)
    prob = (prob / prob.sum(axis=0)).astype(np.float32)
    instances = ClassMapToInstances()(prob)[0]
    assert instances.max() == np.unique(label).size - 1
    for nucleus_id in np.unique(label[label > 0]):
        found, counts = np.unique(instances[label == nucleus_id], return_counts=True)
        assert found[np.argmax(counts)] > 0 and counts.max() > 0.8 * counts.sum()


def test_empty_map_gives_all_zeros():
    prob = probabilities(np.ones((32, 40)), np.zeros((32, 40)))
    instances = ClassMapToInstances()(prob)
    assert instances.shape == (1, 32, 40) and instances.dtype == np.int32 and not instances.any()


def square_nucleus(side: int, width: int = 2) -> np.ndarray:
    """One-hot map of one ``side`` px square nucleus with a ``width`` px boundary, in a 32x32 tile."""
    label = np.zeros((32, 32), np.int32)
    label[4 : 4 + side, 4 : 4 + side] = 1
    return one_hot(InstanceToClassMap(width)(label))


def test_min_nucleus_area_is_honoured():
    prob = square_nucleus(5)  # 25 px, body 1 px
    assert not ClassMapToInstances(min_marker_area=1, min_nucleus_area=26)(prob).any()
    assert (ClassMapToInstances(min_marker_area=1, min_nucleus_area=25)(prob) == 1).sum() == 25


def test_min_marker_area_is_honoured():
    prob = square_nucleus(7)  # 49 px, body 3x3 = 9 px
    assert not ClassMapToInstances(min_marker_area=10)(prob).any()
    assert (ClassMapToInstances(min_marker_area=9)(prob) == 1).sum() == 49


def test_body_threshold_is_honoured():
    background = np.ones((32, 32))
    body = np.zeros((32, 32))
    background[8:20, 8:20], body[8:20, 8:20] = 0.0, 0.6
    prob = probabilities(background, body)
    assert (ClassMapToInstances(body_threshold=0.5)(prob) == 1).sum() == 144
    assert not ClassMapToInstances(body_threshold=0.65)(prob).any()


def test_foreground_threshold_is_honoured():
    background = np.ones((32, 32))
    body = np.zeros((32, 32))
    background[6:22, 6:22], body[6:22, 6:22] = 0.45, 0.1  # rim: foreground 0.55
    background[8:20, 8:20], body[8:20, 8:20] = 0.0, 0.9  # core: 144 px seed
    prob = probabilities(background, body)
    assert (ClassMapToInstances(foreground_threshold=0.5)(prob) == 1).sum() == 256
    assert (ClassMapToInstances(foreground_threshold=0.6)(prob) == 1).sum() == 144


def test_seeds_belong_to_their_nucleus_above_the_foreground_threshold():
    background = np.ones((32, 32))
    body = np.zeros((32, 32))
    background[8:20, 8:20], body[8:20, 8:20] = 0.4, 0.6  # seed (0.6 > 0.5) but foreground 0.6 < 0.7
    prob = probabilities(background, body)
    assert (ClassMapToInstances(body_threshold=0.5, foreground_threshold=0.7)(prob) == 1).sum() == 144


def test_holes_are_filled_only_when_asked():
    classes = np.full((32, 32), BACKGROUND)
    classes[4:24, 4:24] = BOUNDARY
    classes[6:22, 6:22] = BODY
    classes[12:15, 12:15] = BACKGROUND  # a 9 px hole inside the nucleus
    prob = one_hot(classes)
    assert (ClassMapToInstances(fill_holes=True)(prob) == 1).sum() == 400
    assert (ClassMapToInstances(fill_holes=False)(prob) == 1).sum() == 391


def test_torch_input_gives_torch_output():
    prob = torch.from_numpy(one_hot(InstanceToClassMap()(nuclei_map())))
    instances = ClassMapToInstances()(prob)
    assert isinstance(instances, torch.Tensor) and instances.dtype == torch.int32
    assert_same_instances(nuclei_map(), instances[0].numpy())


def test_dictionary_version_writes_output_key():
    prob = one_hot(InstanceToClassMap()(nuclei_map()))
    out = ClassMapToInstancesd(keys="pred", output_key="instances")({"pred": prob})
    assert out["pred"] is prob
    assert_same_instances(nuclei_map(), out["instances"][0])
    replaced = ClassMapToInstancesd()({"pred": prob})
    np.testing.assert_array_equal(replaced["pred"], out["instances"])


def test_dictionary_output_key_needs_one_key():
    with pytest.raises(ValueError, match="exactly one input key"):
        ClassMapToInstancesd(keys=["a", "b"], output_key="instances")


@pytest.mark.parametrize(
    "prob, message",
    [
        (np.zeros((2, 8, 8), np.float32), "shape"),
        (np.zeros((8, 8), np.float32), "shape"),
        (np.zeros((3, 8, 8), np.int64), "float"),
        (np.full((3, 8, 8), 3.0, np.float32), "softmax"),
    ],
)
def test_bad_maps_are_refused(prob, message):
    with pytest.raises(ValueError, match=message):
        ClassMapToInstances()(prob)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"body_threshold": 1.0}, "body_threshold"),
        ({"foreground_threshold": -0.1}, "foreground_threshold"),
        ({"min_nucleus_area": -1}, "min_nucleus_area"),
        ({"connectivity": 3}, "connectivity"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassMapToInstances(**kwargs)
