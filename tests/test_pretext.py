"""Baseline proxy tasks (RotNet, Jigsaw, ColorMe): transforms, networks, losses and 2-iteration bundle runs."""

import numpy as np
import pytest
import torch
from bundle.losses import ColorRegressionLoss, PretextClassificationLoss
from bundle.networks import PretextClassifierNet, segmentation_unet
from bundle.pretext import (
    ColorMePretext,
    ColorMePretextd,
    JigsawPretext,
    JigsawPretextd,
    RandRotationPretext,
    RandRotationPretextd,
    assemble_tiles,
    maximal_hamming_permutations,
    split_tiles,
)
from bundle_runner import run_bundle

IDENTITY = np.arange(9)


def _image(height=120, width=140, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)


def _crop(image, corner, size):
    row, col = corner
    return image[:, row : row + size, col : col + size]


def _pairwise_hamming(permutations):
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(axis=-1)
    np.fill_diagonal(distances, permutations.shape[1] + 1)
    return distances


# RotNet


@pytest.mark.parametrize("seed", range(8))
def test_rotating_back_by_minus_k_recovers_the_crop(seed):
    image = _image()
    transform = RandRotationPretext(crop_size=64).set_random_state(seed)
    rotated, k = transform(image)
    crop = _crop(image, transform.corner, 64)
    assert rotated.shape == (3, 64, 64) and rotated.dtype == torch.uint8 and k in range(4)
    np.testing.assert_array_equal(np.rot90(rotated.numpy(), -k, axes=(1, 2)), crop)
    np.testing.assert_array_equal(rotated.numpy(), np.rot90(crop, k, axes=(1, 2)))


def test_rotation_labels_cover_all_four_classes_evenly():
    transform = RandRotationPretext(crop_size=32).set_random_state(0)
    counts = np.bincount([transform(_image(40, 40))[1] for _ in range(400)], minlength=4)
    assert counts.shape == (4,) and counts.min() > 70, counts


# Jigsaw permutation set


@pytest.mark.parametrize("include_identity", [True, False])
def test_permutation_set_is_unique_far_apart_and_deterministic(include_identity):
    permutations = maximal_hamming_permutations(30, seed=3, include_identity=include_identity)
    assert permutations.shape == (30, 9)
    assert all(sorted(row) == list(range(9)) for row in permutations.tolist())
    assert len({tuple(row) for row in permutations.tolist()}) == 30
    assert _pairwise_hamming(permutations).min() >= 7
    np.testing.assert_array_equal(
        permutations, maximal_hamming_permutations(30, seed=3, include_identity=include_identity)
    )
    assert not np.array_equal(permutations, maximal_hamming_permutations(30, seed=4, include_identity=include_identity))


def test_identity_is_class_zero_or_left_out():
    with_identity = maximal_hamming_permutations(30, seed=0, include_identity=True)
    without = maximal_hamming_permutations(30, seed=0, include_identity=False)
    np.testing.assert_array_equal(with_identity[0], IDENTITY)
    assert not (with_identity[1:] == IDENTITY).all(axis=1).any()
    assert not (without == IDENTITY).all(axis=1).any()


def test_greedy_set_beats_random_permutations():
    rng = np.random.default_rng(0)
    random_set = np.stack([rng.permutation(9) for _ in range(30)])
    assert _pairwise_hamming(maximal_hamming_permutations(30)).min() > _pairwise_hamming(random_set).min()


def test_impossible_permutation_count_is_a_clear_error():
    with pytest.raises(ValueError, match="n_permutations must be in"):
        maximal_hamming_permutations(0)


# Jigsaw puzzles


def test_split_and_assemble_tiles_are_inverse_and_row_major():
    crop = torch.as_tensor(_image(96, 96))
    tiles = split_tiles(crop)
    assert tiles.shape == (9, 3, 32, 32)
    assert torch.equal(tiles[5], crop[:, 32:64, 64:96])
    assert torch.equal(assemble_tiles(tiles), crop)


@pytest.mark.parametrize("seed", range(6))
def test_unpermuting_the_puzzle_recovers_the_crop(seed):
    image = _image()
    transform = JigsawPretext(crop_size=100, n_permutations=10, tile_gap=0).set_random_state(seed)
    puzzle, index = transform(image)
    crop = torch.as_tensor(_crop(image, transform.corner, 99))
    permutation = transform.permutations[index]
    assert puzzle.shape == (3, 99, 99) and puzzle.dtype == torch.uint8 and index in range(10)
    tiles = split_tiles(puzzle)
    for cell in range(9):
        assert torch.equal(tiles[cell], split_tiles(crop)[permutation[cell]])
    assert torch.equal(assemble_tiles(tiles[np.argsort(permutation)]), crop)


def test_puzzle_is_shuffled_unless_the_identity_is_drawn():
    transform = JigsawPretext(crop_size=96, n_permutations=5, tile_gap=0).set_random_state(1)
    image = _image()
    for _ in range(10):
        puzzle, index = transform(image)
        unchanged = torch.equal(puzzle, torch.as_tensor(_crop(image, transform.corner, 96)))
        assert unchanged == (index == 0)


def test_tile_gap_frames_each_tile_with_a_window_of_its_source_tile():
    gap, tile = 6, 32
    image = _image()
    transform = JigsawPretext(crop_size=96, n_permutations=10, tile_gap=gap, fill_value=0).set_random_state(2)
    puzzle, index = transform(image)
    source = split_tiles(torch.as_tensor(_crop(image, transform.corner, 96)))
    inner, start = tile - gap, gap // 2
    for cell, (tile_out, origin) in enumerate(zip(split_tiles(puzzle), transform.permutations[index])):
        window = tile_out[:, start : start + inner, start : start + inner]
        frame = tile_out.clone()
        frame[:, start : start + inner, start : start + inner] = 0
        assert not frame.any(), f"cell {cell}: frame not filled"
        row, col = transform.offsets[origin]
        assert 0 <= row <= gap and 0 <= col <= gap
        assert torch.equal(
            window, source[origin][:, row : row + inner, col : col + inner]
        ), f"cell {cell}: not tile {origin}"


def test_tile_gap_as_large_as_a_tile_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tile_gap must be in \[0, 32\)"):
        JigsawPretext(crop_size=96, tile_gap=32)


# ColorMe


def test_colorme_zeroes_red_and_returns_it_scaled_as_the_label():
    image = _image()
    before = image.copy()
    transform = ColorMePretext(crop_size=64).set_random_state(0)
    inputs, label = transform(image)
    crop = _crop(image, transform.corner, 64)
    assert inputs.shape == (3, 64, 64) and inputs.dtype == torch.uint8
    assert label.shape == (1, 64, 64) and label.dtype == torch.float32
    assert not inputs[0].any()
    np.testing.assert_array_equal(inputs[1:].numpy(), crop[1:])
    np.testing.assert_allclose(label[0].numpy(), crop[0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(image, before)


def test_colorme_channel_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="channel 3 is out of range for an image with 3 channels"):
        ColorMePretext(crop_size=32, channel=3)(_image())


# Seeding and dictionary versions

ARRAY_AND_DICT = [
    (lambda: RandRotationPretext(64), lambda: RandRotationPretextd("image", 64)),
    (
        lambda: JigsawPretext(66, n_permutations=10, tile_gap=4),
        lambda: JigsawPretextd("image", 66, n_permutations=10, tile_gap=4),
    ),
    (lambda: ColorMePretext(64), lambda: ColorMePretextd("image", 64)),
]


def _as_numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@pytest.mark.parametrize("make_array, make_dict", ARRAY_AND_DICT, ids=["rotnet", "jigsaw", "colorme"])
def test_same_seed_same_sample_different_seed_differs(make_array, make_dict):
    image = _image()
    first = [_as_numpy(v) for v in make_array().set_random_state(5)(image)]
    again = [_as_numpy(v) for v in make_array().set_random_state(5)(image)]
    other = [_as_numpy(v) for v in make_array().set_random_state(6)(image)]
    out = make_dict().set_random_state(5)({"image": image, "image_path": "tile.png"})
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert np.array_equal(_as_numpy(out["image"]), first[0]) and np.array_equal(_as_numpy(out["label"]), first[1])
    assert out["image_path"] == "tile.png"


@pytest.mark.parametrize("make_dict", [pair[1] for pair in ARRAY_AND_DICT], ids=["rotnet", "jigsaw", "colorme"])
def test_tile_smaller_than_the_crop_error_names_the_file(make_dict):
    with pytest.raises(ValueError, match=r"tile_7\.png: image of 50x140 px is smaller than crop_size="):
        make_dict()({"image": _image(50, 140), "image_path": "/data/tile_7.png"})


# Networks and losses


def test_classifier_net_gives_logits_and_a_flexible_unet_encoder():
    torch.manual_seed(0)
    net = PretextClassifierNet(backbone="resnet10", n_classes=7).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    result = segmentation_unet(backbone="resnet10").encoder.load_state_dict(net.encoder.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_classification_loss_and_logged_accuracy():
    pred = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 4.0], [0.0, 5.0, 0.0]])
    label = torch.tensor([0, 1, 0, 2])
    loss = PretextClassificationLoss()
    expected = torch.nn.functional.cross_entropy(pred, label).item()
    assert loss(pred, label[:, None]).item() == pytest.approx(expected)
    values = loss.log_values({"pred": pred, "label": label})
    assert values == {"loss": pytest.approx(expected), "accuracy": pytest.approx(0.5)}
    with pytest.raises(ValueError, match=r"one class label per prediction \(4\), got 3"):
        loss(pred, label[:3])


def test_colour_regression_is_on_the_sigmoid_and_logs_mae():
    target = torch.tensor([0.2, 0.5, 0.9, 0.7]).reshape(1, 1, 2, 2)
    exact = torch.logit(target)
    loss = ColorRegressionLoss()
    assert loss(exact, target).item() == pytest.approx(0.0, abs=1e-6)
    off = torch.zeros_like(target)  # sigmoid -> 0.5 everywhere
    values = loss.log_values({"pred": off, "label": target})
    assert values["mae"] == pytest.approx((0.3 + 0.0 + 0.4 + 0.2) / 4)
    assert values["loss"] == pytest.approx(values["mae"])
    assert ColorRegressionLoss("mse")(off, target).item() == pytest.approx((0.09 + 0.0 + 0.16 + 0.04) / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        loss(off, target[:, :, :1])


# Workflows through monai.bundle

TINY = {
    "backbone": "resnet10",
    "crop_size": 96,
    "batch_size": 2,
    "triplets_per_epoch": 4,
    "num_workers": 0,
    "max_epochs": 1,
    "log_every": 1,
}


@pytest.mark.parametrize("task, logged", [("rotnet", "accuracy"), ("jigsaw", "accuracy"), ("colorme", "mae")])
def test_two_iteration_proxy_pretraining_exports_the_encoder(tmp_path, synthetic_dir, task, logged):
    configs = ["pretrain.json", f"pretext_{task}.json"]
    result = run_bundle(configs, cwd=tmp_path, bundle_root=str(tmp_path), dataset_dir=str(synthetic_dir), **TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    encoder_path = tmp_path / "models" / "pretrained_encoder.pt"
    assert f"pretrained encoder written to {encoder_path}" in result.stdout
    assert "Iter: 2/2" in log and f"{logged}: " in log and "triplet_acc" not in log
    unet = segmentation_unet(backbone="resnet10")
    unet.encoder.load_state_dict(torch.load(encoder_path, weights_only=True), strict=True)
    assert (tmp_path / "models" / f"pretrain_{task}" / "checkpoint_epoch=1.pt").is_file()
    assert list((tmp_path / "runs" / f"pretrain_{task}").glob("events.out.tfevents.*"))
