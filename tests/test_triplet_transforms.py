import numpy as np
import pytest
import torch
from bundle.transforms import RandHEDJitter, RandHEDJitterd, TripletCrop, TripletCropd

POOL = (96, 64, 48, 32)


def _image(height=200, width=240, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(20))
def test_triplet_geometry(seed):
    crop = TripletCrop(crop_size=128, max_shift=40, negative_sizes=POOL).set_random_state(seed)
    image = _image()
    anchor, positive, negative = crop(image)
    (ar, ac, asz), (pr, pc, psz), (nr, nc, nsz) = crop.boxes.values()
    assert anchor.shape == positive.shape == negative.shape == (3, 128, 128)
    assert asz == psz == 128
    assert 0 <= pr and pr + 128 <= 200 and 0 <= pc and pc + 128 <= 240
    assert abs(pr - ar) <= 40 and abs(pc - ac) <= 40
    assert nsz in POOL
    assert pr <= nr and nr + nsz <= pr + 128 and pc <= nc and nc + nsz <= pc + 128
    np.testing.assert_array_equal(anchor, image[:, ar : ar + 128, ac : ac + 128])
    np.testing.assert_array_equal(positive, image[:, pr : pr + 128, pc : pc + 128])
    assert negative.dtype == np.uint8


def test_negative_is_the_resized_sub_crop():
    image = np.zeros((3, 200, 200), np.uint8)
    image[:, 100:, :] = 200
    crop = TripletCrop(crop_size=128, max_shift=40, negative_sizes=(64,), mode="nearest").set_random_state(3)
    _, _, negative = crop(image)
    nr, nc, side = crop.boxes["negative"]
    expected = np.repeat(np.repeat(image[:, nr : nr + side, nc : nc + side], 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(negative, expected)


def test_same_seed_same_triplets_and_different_seed_differs():
    image = _image()
    first = TripletCrop(128, 40, POOL).set_random_state(7)(image)
    again = TripletCrop(128, 40, POOL).set_random_state(7)(image)
    other = TripletCrop(128, 40, POOL).set_random_state(8)(image)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_small_image_error_names_the_file():
    transform = TripletCropd(keys="image", crop_size=256, max_shift=10, negative_sizes=(64,))
    with pytest.raises(ValueError, match=r"tile_7\.png.*smaller than crop_size=256"):
        transform({"image": _image(200, 300), "image_path": "/data/tile_7.png"})


def test_dict_version_outputs_three_keys_and_drops_source():
    out = TripletCropd(keys="image", crop_size=128, max_shift=40, negative_sizes=POOL).set_random_state(1)(
        {"image": _image()}
    )
    assert set(out) == {"anchor", "positive", "negative"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"negative_sizes": (128,)},
        {"negative_sizes": ()},
        {"max_shift": -1},
        {"view_size": 64},
        {"view_size": 192, "negative_sizes": (192,)},
    ],
)
def test_invalid_settings_refused(kwargs):
    with pytest.raises(ValueError):
        TripletCrop(**{"crop_size": 128, "max_shift": 10, "negative_sizes": (64,), **kwargs})


def test_hed_jitter_identity_when_not_perturbed():
    image = torch.rand(3, 16, 16) * 0.9 + 0.05
    jitter = RandHEDJitter(prob=1.0, sigma_scale=0.0, sigma_shift=0.0).set_random_state(0)
    torch.testing.assert_close(jitter(image), image, atol=1e-4, rtol=0)


def test_hed_jitter_changes_colour_and_is_shared_across_keys():
    image = torch.rand(3, 16, 16) * 0.9 + 0.05
    out = RandHEDJitterd(keys=["a", "b"], prob=1.0, sigma_scale=0.2, sigma_shift=0.2).set_random_state(0)(
        {"a": image, "b": image.clone()}
    )
    assert not torch.allclose(out["a"], image, atol=1e-3)
    torch.testing.assert_close(out["a"], out["b"])
    assert out["a"].min() >= 0 and out["a"].max() <= 1


@pytest.mark.parametrize("seed", [3, 4])  # seed 3 draws a 96 px negative, seed 4 one of 64 px
def test_zoomed_out_views_are_reductions_of_their_regions(seed):
    image = _image(400, 400)
    crop = TripletCrop(crop_size=64, max_shift=40, negative_sizes=(96, 64), mode="area", view_size=128)
    anchor, positive, negative = crop.set_random_state(seed)(image)
    (ar, ac, asz), (pr, pc, psz), (nr, nc, nsz) = crop.boxes.values()
    assert asz == psz == 128 and nsz in (96, 64)
    assert pr <= nr and nr + nsz <= pr + 128 and pc <= nc and nc + nsz <= pc + 128
    halved = image[:, ar : ar + 128, ac : ac + 128].reshape(3, 64, 2, 64, 2).astype(float).mean(axis=(2, 4))
    np.testing.assert_allclose(anchor, halved, atol=0.51)
    assert positive.shape == negative.shape == (3, 64, 64)
    if nsz == 64:  # a negative of crop_size is the region itself, not resampled
        np.testing.assert_array_equal(negative, image[:, nr : nr + 64, nc : nc + 64])


def test_default_view_size_keeps_the_paper_triplet():
    image = _image()
    paper = TripletCrop(128, 40, POOL).set_random_state(9)(image)
    explicit = TripletCrop(128, 40, POOL, view_size=128).set_random_state(9)(image)
    assert all(np.array_equal(a, b) for a, b in zip(paper, explicit))


def test_image_smaller_than_the_view_is_refused_by_name():
    transform = TripletCropd(keys="image", crop_size=64, max_shift=10, negative_sizes=(64,), view_size=256)
    with pytest.raises(ValueError, match=r"tile_3\.png.*smaller than view_size=256"):
        transform({"image": _image(200, 300), "image_path": "/data/tile_3.png"})
