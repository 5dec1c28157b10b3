"""configs/pretrain.json end to end through ``python -m monai.bundle run`` on synthetic tiles."""

import pytest
import torch
from bundle.networks import segmentation_unet
from bundle_runner import TINY_PRETRAIN, run_bundle

TINY = TINY_PRETRAIN


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({}, id="both"),
        pytest.param({"w_cr": 0.0}, id="lst_only", marks=pytest.mark.slow),
        pytest.param({"w_st": 0.0}, id="lcr_only", marks=pytest.mark.slow),
    ],
)
def test_two_iterations_write_encoder_checkpoint_and_logs(tmp_path, synthetic_dir, weights):
    result = run_bundle(
        ["pretrain.json"], cwd=tmp_path, bundle_root=str(tmp_path), dataset_dir=str(synthetic_dir), **TINY, **weights
    )
    assert result.returncode == 0, result.stderr[-3000:]
    encoder_path = tmp_path / "models" / "pretrained_encoder.pt"
    assert f"pretrained encoder written to {encoder_path}" in result.stdout
    assert "Iter: 2/2" in result.stdout + result.stderr and "triplet_acc" in result.stdout + result.stderr
    unet = segmentation_unet(backbone="resnet10")
    unet.encoder.load_state_dict(torch.load(encoder_path, weights_only=True), strict=True)
    assert (tmp_path / "models" / "pretrain" / "checkpoint_epoch=1.pt").is_file()
    assert list((tmp_path / "runs" / "pretrain").glob("events.out.tfevents.*"))


def test_frozen_layers_keep_their_initial_weights(tmp_path, synthetic_dir):
    encoders = []
    for epochs in (1, 2):
        root = tmp_path / f"epochs_{epochs}"
        frozen = {"frozen_layers": "['encoder.conv1.']", "max_epochs": epochs}
        result = run_bundle(
            ["pretrain.json"], cwd=tmp_path, bundle_root=str(root), dataset_dir=str(synthetic_dir), **{**TINY, **frozen}
        )
        assert result.returncode == 0, result.stderr[-3000:]
        encoders.append(torch.load(root / "models" / "pretrained_encoder.pt", weights_only=True))
    one, two = encoders  # the same seed, so the same initialisation: one and two epochs from it
    assert torch.equal(one["conv1.weight"], two["conv1.weight"])
    assert not torch.equal(one["layer1.0.conv1.weight"], two["layer1.0.conv1.weight"])


@pytest.mark.slow
def test_resumes_from_the_last_checkpoint(tmp_path, synthetic_dir):
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(synthetic_dir), **TINY}
    assert run_bundle(["pretrain.json"], cwd=tmp_path, **common).returncode == 0
    result = run_bundle(["pretrain.json"], cwd=tmp_path, **{**common, "max_epochs": 2})
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Restored all variables from" in log and "checkpoint_epoch=1.pt" in log
    assert "Epoch[1] Complete" not in log and "Epoch[2] Complete" in log


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_bundle(
        ["pretrain.json"], cwd=tmp_path, bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "empty"), **TINY
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'empty'}: no images found" in result.stderr


def test_tile_smaller_than_the_crop_is_a_clear_error(tmp_path, synthetic_dir):
    result = run_bundle(
        ["pretrain.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_dir),
        **{**TINY, "crop_size": 256, "max_shift": 8},
    )
    assert result.returncode != 0
    assert "synthetic_00" in result.stderr and "smaller than crop_size=256" in result.stderr
