"""Macenko stain normalisation (bundle.stain): the stains land on the reference's, in the right order."""

import numpy as np
import pytest
import torch
from bundle.stain import MACENKO_REFERENCE, StainNormalize, StainNormalized, haematoxylin_first, training_reference
from monai.apps.pathology.transforms import ExtractHEStains

REFERENCE = np.asarray(MACENKO_REFERENCE)


def two_stain_tile(size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, size, size) uint8 tile stained with other H and E vectors than the reference's
    (a redder haematoxylin, a bluer eosin), and masks of its haematoxylin-only and eosin-only pixels."""
    rng = np.random.default_rng(seed)
    n = size * size
    kind = rng.choice(3, n, p=[0.4, 0.4, 0.2])  # 0: nucleus (H), 1: stroma (E), 2: background
    concentrations = np.zeros((n, 2))
    concentrations[kind == 0, 0] = rng.uniform(0.8, 1.5, np.sum(kind == 0))
    concentrations[kind == 1, 1] = rng.uniform(0.8, 1.5, np.sum(kind == 1))
    stains = np.stack([unit(np.array([0.75, 0.62, 0.22])), unit(np.array([0.27, 0.85, 0.45]))])
    rgb = 240 * np.exp(-concentrations @ stains) - 1
    image = rgb.clip(0, 255).round().astype(np.uint8).T.reshape(3, size, size)
    return image, (kind == 0).reshape(size, size), (kind == 1).reshape(size, size)


def mean_direction(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit mean optical-density vector (R, G, B) of ``image``'s pixels under ``mask``."""
    density = -np.log((image[:, mask].astype(float) + 1) / 240).mean(axis=1)
    return density / np.linalg.norm(density)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_nuclei_take_the_reference_haematoxylin_and_stroma_its_eosin():
    image, nuclei, stroma = two_stain_tile()
    normalised = StainNormalize()(image)
    assert normalised.shape == image.shape and normalised.dtype == np.uint8
    assert mean_direction(image, nuclei) @ unit(REFERENCE[:, 0]) < 0.97  # the source stains differ
    assert mean_direction(image, stroma) @ unit(REFERENCE[:, 1]) < 0.995
    assert mean_direction(normalised, nuclei) @ unit(REFERENCE[:, 0]) > 0.9999
    assert mean_direction(normalised, stroma) @ unit(REFERENCE[:, 1]) > 0.9999


def test_the_result_does_not_depend_on_the_order_monai_returns_the_stains_in(monkeypatch):
    image, _, _ = two_stain_tile()
    expected = StainNormalize()(image)
    extract = ExtractHEStains.__call__
    monkeypatch.setattr(ExtractHEStains, "__call__", lambda self, im: extract(self, im)[:, ::-1])
    np.testing.assert_array_equal(StainNormalize()(image), expected)


def test_haematoxylin_is_the_stain_that_absorbs_red_more_than_blue():
    np.testing.assert_array_equal(haematoxylin_first(REFERENCE[:, [1, 0]]), REFERENCE[:, :2])
    np.testing.assert_array_equal(haematoxylin_first(REFERENCE[:, :2]), REFERENCE[:, :2])


def test_a_tile_with_too_little_stain_is_left_as_it_is_and_named(caplog):
    blank = np.full((3, 100, 100), 235, np.uint8)
    blank[:, :10, :10] = 60  # 100 stained pixels: too few to estimate stains from
    with caplog.at_level("WARNING", logger="bundle.stain"):
        out = StainNormalized("image")({"image": blank, "image_path": "/data/blank_4.tif"})
    np.testing.assert_array_equal(out["image"], blank)
    assert "blank_4.tif: left unnormalised, 100 stained pixels" in caplog.text


def test_bad_images_and_references_are_refused():
    with pytest.raises(ValueError, match="takes \\(3, H, W\\) uint8"):
        StainNormalize()(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="reference is \\(3, 3\\)"):
        StainNormalize(REFERENCE[:, :2])


def test_the_dictionary_version_names_the_file_of_an_image_it_cannot_normalise():
    normalise = StainNormalized(keys="image")
    image, _, _ = two_stain_tile(64)
    out = normalise({"image": image, "image_path": "a.tif"})
    np.testing.assert_array_equal(out["image"], StainNormalize()(image))
    with pytest.raises(ValueError, match="^b.tif: stain normalisation failed"):
        normalise({"image": image.astype(np.float32), "image_path": "b.tif"})


def test_the_training_reference_is_the_macenko_one_only_when_enabled():
    np.testing.assert_array_equal(training_reference(True), REFERENCE)
    assert training_reference(False) is None


def test_a_checkpoint_tells_which_stain_its_network_was_trained_on(tmp_path):
    from bundle.checkpoints import network_stain_reference
    from bundle.networks import segmentation_unet

    for name, reference in (("stained", MACENKO_REFERENCE), ("plain", None)):
        network = segmentation_unet("resnet10", stain_reference=reference)
        torch.save({"network": network.state_dict()}, tmp_path / f"{name}.pt")
    np.testing.assert_allclose(network_stain_reference(tmp_path / "stained.pt"), REFERENCE, atol=1e-6)
    assert network_stain_reference(tmp_path / "plain.pt") is None
    assert network_stain_reference(tmp_path / "missing.pt") is None


def test_the_predictor_normalises_an_image_before_the_network_sees_it():
    from bundle.networks import segmentation_unet
    from bundle.postprocess import ClassMapToInstances
    from bundle.predictor import NucleiPredictor
    from monai.inferers import SimpleInferer

    torch.manual_seed(0)
    network = segmentation_unet("resnet10")
    image, _, _ = two_stain_tile(64)
    seen = []

    def inferer(inputs, net):
        seen.append(inputs.clone())
        return net(inputs)

    with_stain = NucleiPredictor(network, inferer, ClassMapToInstances(), stain_reference=MACENKO_REFERENCE)
    plain = NucleiPredictor(network, SimpleInferer(), ClassMapToInstances())
    np.testing.assert_array_equal(with_stain(torch.as_tensor(image)), plain(StainNormalize()(image)))
    np.testing.assert_allclose(seen[0][0].numpy(), StainNormalize()(image) / 255.0, atol=1e-6)


@pytest.mark.parametrize("config, load", [("train.json", "load_tile"), ("pretrain.json", "train#load")])
def test_the_option_adds_the_normalisation_after_loading_in_fine_tuning_and_pretraining(config, load):
    from conftest import REPO_ROOT
    from monai.bundle import ConfigParser

    for enabled in (False, True):
        parser = ConfigParser()
        parser.read_config(str(REPO_ROOT / "configs" / config))
        parser["stain_normalization"] = enabled
        kinds = [type(transform).__name__ for transform in parser.get_parsed_content(load)]
        assert kinds[0] == "LoadTiled" and ("StainNormalized" in kinds) == enabled
