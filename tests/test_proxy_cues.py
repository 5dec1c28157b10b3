"""bundle.proxy_cues: the crops it compares, and the rates told apart for heads built to read one cue."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.data import write_image
from bundle.networks import TripletEncoderNet
from bundle.proxy_cues import cue_crops, proxy_cues
from bundle.synthetic import synthesize_tile
from bundle.transforms import resize_square
from conftest import REPO_ROOT
from torch import nn

CROP, SIDES = 48, (32, 24)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [np.ascontiguousarray(synthesize_tile((96, 96), seed=seed)[0].transpose(2, 0, 1)) for seed in (0, 1)]


class SharpnessHead(nn.Module):
    """f = mean absolute horizontal gradient: reads blur only, blind to nucleus size."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
        return f[:, None], f


class DarknessHead(nn.Module):
    """f = mean darkness of the crop: the same for a crop and its blurred copy."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = 1 - x.mean(dim=(1, 2, 3))
        return f[:, None], f


def test_the_blurred_companion_holds_the_positive_resampled_and_the_negative_its_sub_crop(images):
    positives, negatives, blurred = cue_crops(images[0], CROP, SIDES, 5, np.random.default_rng(0))
    assert positives.shape == negatives.shape == blurred.shape == (5, 3, CROP, CROP)
    for positive, copy in zip(positives, blurred):
        side = next(
            s
            for s in SIDES
            if np.array_equal(copy, resize_square(resize_square(positive, s, "bilinear"), CROP, "bilinear"))
        )
        assert side in SIDES
    assert not any(np.array_equal(p, n) for p, n in zip(positives, negatives))


def test_a_sharpness_head_ranks_by_blur_and_a_darkness_head_does_not(images):
    sharp = proxy_cues(SharpnessHead(), images, CROP, SIDES, crops_per_image=12)
    dark = proxy_cues(DarknessHead(), images, CROP, SIDES, crops_per_image=12)
    assert sharp["blur_only"] > 0.95 and sharp["blur_share"] > 0.5
    assert dark["blur_share"] < 0.2 and abs(sharp["blur_share"] - dark["blur_share"]) > 0.4


def test_an_image_no_larger_than_the_crop_is_refused(images):
    with pytest.raises(ValueError, match="not larger than crop_size=96"):
        cue_crops(images[0], 96, SIDES, 1, np.random.default_rng(0))


@pytest.fixture
def cues_command(tmp_path, images) -> tuple[list[str], Path]:
    """The CLI's command for a random resnet10 checkpoint and one 96 px tile, and the tile."""
    torch.manual_seed(0)
    torch.save(
        {"network": TripletEncoderNet("resnet10", embedding_dim=8).state_dict()}, tmp_path / "checkpoint_epoch=1.pt"
    )
    tile = tmp_path / "tile.tif"
    write_image(tile, images[0].transpose(1, 2, 0))
    return [sys.executable, "scripts/visualize.py", "cues", "--checkpoint", str(tmp_path), "--image", str(tile)], tile


def test_cli_prints_the_rates_for_a_checkpoint(cues_command):
    command = cues_command[0] + ["--crop_size", "64", "--negative_sizes", "[32]", "--crops_per_image", "4"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"proxy", "blur_only", "equal_blur", "blur_share", "embedding_blur_share"}
    assert all(0 <= figures[key] <= 1 for key in ("proxy", "blur_only", "equal_blur"))


def test_cli_names_a_tile_smaller_than_the_crop(cues_command):
    command, tile = cues_command
    result = subprocess.run(command + ["--crop_size", "128"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{tile}: 96x96 px is not larger than --crop_size 128" in result.stderr
