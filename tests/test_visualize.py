"""Count-head density maps: the computation (bundle/density.py), and scripts/visualize.py (figure, CLI, errors)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle import density
from bundle.data import write_image
from bundle.networks import TripletEncoderNet
from bundle.synthetic import synthesize_tile
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "visualize.py"
_spec = importlib.util.spec_from_file_location("visualize_script", SCRIPT)
visualize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(visualize)

CROP, NEGATIVE = 64, 32  # CLI: a 2x2 deepest map with resnet10
MAP_CROP = 160  # density_maps: a 5x5 deepest map


@pytest.fixture(scope="module")
def net() -> TripletEncoderNet:
    torch.manual_seed(0)
    return TripletEncoderNet("resnet10", embedding_dim=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, net) -> Path:
    """A pretraining-style checkpoint of the random resnet10 network, in its own folder."""
    folder = tmp_path_factory.mktemp("pretrain")
    torch.save({"network": net.state_dict(), "optimizer": {}}, folder / "checkpoint_epoch=3.pt")
    return folder


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> list[Path]:
    """Two synthetic 96x96 tiles."""
    folder = tmp_path_factory.mktemp("tiles")
    paths = [folder / f"tile_{seed}.tif" for seed in (0, 1)]
    for seed, path in enumerate(paths):
        write_image(path, synthesize_tile((96, 96), seed=seed)[0])
    return paths


def random_crops(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two random (3, MAP_CROP, MAP_CROP) uint8 crops."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, size=(3, MAP_CROP, MAP_CROP), dtype=np.uint8) for _ in range(2))


def test_density_maps_match_the_count_of_forward(net):
    positive, negative = random_crops(0)
    net.train()
    map_pos, map_neg, f_pos, f_neg = density.density_maps(net, positive, negative)
    assert net.training, "density_maps must restore the training flag"
    assert map_pos.shape == map_neg.shape == (MAP_CROP, MAP_CROP)
    net.eval()
    with torch.no_grad():
        _, count = net(torch.from_numpy(np.stack([positive, negative])).float() / 255)
        raw = net.count_map(torch.from_numpy(np.stack([positive, negative])).float() / 255)
    assert raw.shape == (2, 5, 5)
    assert f_pos == pytest.approx(float(count[0]), abs=1e-5)
    assert f_neg == pytest.approx(float(count[1]), abs=1e-5)
    assert abs(f_pos - f_neg) > 1e-4, "different crops should give different counts"
    expected = torch.nn.functional.interpolate(
        raw[:, None], size=(MAP_CROP, MAP_CROP), mode="bilinear", align_corners=False
    )[:, 0]
    assert np.allclose(map_pos, expected[0].numpy(), atol=1e-5) and np.allclose(map_neg, expected[1].numpy(), atol=1e-5)


def test_density_maps_refuse_crops_of_different_sizes(net):
    positive, _ = random_crops(1)
    with pytest.raises(ValueError, match="one size"):
        density.density_maps(net, positive, positive[:, :32, :32])


def test_cli_writes_a_png_with_a_row_pair_per_image(checkpoint, tiles, tmp_path):
    out = tmp_path / "figures" / "density.png"
    command = [
        sys.executable,
        str(SCRIPT),
        "density",
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(tiles[0]),
        "--image",
        str(tiles[1]),
    ]
    command += ["--crop_size", str(CROP), "--negative_size", str(NEGATIVE), "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(f"{tile.name}: f(positive) = " in result.stdout for tile in tiles), result.stdout
    assert result.stdout.count("f(positive) > f(negative): ") == 2
    assert 20_000 < out.stat().st_size < 5_000_000
    with Image.open(out) as png:
        assert png.format == "PNG"
        width, height = visualize.figure_inches(2)
        assert png.size == (round(width * visualize.DPI), round(height * visualize.DPI))
        assert np.asarray(png.convert("L")).std() > 10, "the figure should not be blank"
    assert not [p for p in out.parent.iterdir() if p != out], "no temporary file left behind"


def test_image_list_string_is_split():
    assert visualize.image_paths("[a.tif, b.tif]") == [Path("a.tif"), Path("b.tif")]
    assert visualize.merge_repeated_flag(["density", "--image", "a b.tif", "--image=c.tif"], "image") == [
        "density",
        '--image=["a b.tif", "c.tif"]',
    ]


def test_missing_checkpoint_names_the_path(tiles, tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint_epoch=1.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        visualize.density(
            checkpoint=str(missing),
            image=str(tiles[0]),
            crop_size=CROP,
            negative_size=NEGATIVE,
            out=str(tmp_path / "d.png"),
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint_epoch"):
        visualize.density(
            checkpoint=str(tmp_path),
            image=str(tiles[0]),
            crop_size=CROP,
            negative_size=NEGATIVE,
            out=str(tmp_path / "d.png"),
        )
    assert not (tmp_path / "d.png").exists()


def test_checkpoint_without_network_key(net, tmp_path):
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"model": net.state_dict()}, path)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=1\.pt: no 'network' entry"):
        density.load_network(path)


def test_wrong_backbone_is_refused_and_the_right_one_inferred(checkpoint):
    assert density.load_network(checkpoint).backbone == "resnet10"
    with pytest.raises(ValueError, match="resnet10 encoder that does not load into a resnet18"):
        density.load_network(checkpoint, backbone="resnet18")


def test_image_smaller_than_the_crop_names_the_file(checkpoint, tiles, tmp_path):
    with pytest.raises(ValueError, match=r"tile_0\.tif: image of 96x96 px is smaller than crop_size=128"):
        visualize.density(
            checkpoint=str(checkpoint),
            image=str(tiles[0]),
            crop_size=128,
            negative_size=NEGATIVE,
            out=str(tmp_path / "d.png"),
        )
    assert not (tmp_path / "d.png").exists()
