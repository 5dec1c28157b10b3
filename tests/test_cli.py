"""User mistakes on the ``python -m monai.bundle run`` command line end with one line that says
what is wrong and what to do, not a traceback."""

import json

import numpy as np
import pytest
import torch
from bundle.data import write_image
from bundle.networks import segmentation_unet
from bundle_runner import run_bundle


@pytest.fixture
def tiles(tmp_path):
    folder = tmp_path / "tiles"
    write_image(folder / "a.png", np.zeros((64, 64, 3), np.uint8))
    return folder


def assert_one_line_error(result, expected: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.rstrip().splitlines()[-1] == f"error: {expected}"


def test_a_missing_model_says_how_to_get_one(tmp_path, tiles):
    result = run_bundle(
        ["inference.json"], tmp_path, bundle_root=str(tmp_path), dataset_dir=str(tiles), backbone="resnet10"
    )
    assert_one_line_error(
        result,
        f"{tmp_path / 'models' / 'model.pt'}: file not found; train a model first "
        "(configs/train.json writes models/model.pt under --bundle_root) or point --model_path at one",
    )


def test_a_model_of_another_backbone_names_it(tmp_path, tiles):
    (tmp_path / "models").mkdir()
    torch.save(
        {"network": segmentation_unet("resnet18", out_channels=3).state_dict()}, tmp_path / "models" / "model.pt"
    )
    result = run_bundle(
        ["inference.json"], tmp_path, bundle_root=str(tmp_path), dataset_dir=str(tiles), backbone="resnet34"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'models' / 'model.pt'}: does not fit this workflow's network")
    assert last.endswith("; it holds a resnet18 network: rerun with --backbone resnet18")


def test_a_datalist_without_the_section_lists_the_ones_it_has(tmp_path, tiles):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "tiles/a.png"}], "validation": [{"image": "tiles/a.png"}]}))
    result = run_bundle(
        ["inference.json"], tmp_path, bundle_root=str(tmp_path), dataset_dir=str(datalist), backbone="resnet10"
    )
    assert_one_line_error(
        result,
        f"{datalist}: no images in section(s) test; it has training (1), validation (1) "
        "(choose with --sections, e.g. --sections \"['validation']\")",
    )


def test_one_tile_as_dataset_dir_is_segmented(tmp_path, tiles):
    (tmp_path / "models").mkdir()
    torch.save(
        {"network": segmentation_unet("resnet10", out_channels=3).state_dict()}, tmp_path / "models" / "model.pt"
    )
    result = run_bundle(
        ["inference.json"],
        tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(tiles / "a.png"),
        backbone="resnet10",
        roi_size=64,
        output_dir=str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "a_instances.tif").is_file()
