"""train.json, evaluate.json and inference.json end to end through ``monai.bundle`` on synthetic tiles."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bundle_runner import run_bundle
from conftest import REPO_ROOT

TINY = {
    "backbone": "resnet10",
    "crop_size": 64,
    "batch_size": 2,
    "crops_per_tile": 1,
    "num_workers": 0,
    "sw_batch_size": 4,
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("prepared")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "prepare", str(synthetic_dir), str(out)], check=True
    )
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared):
    root = tmp_path_factory.mktemp("run")
    result = run_bundle(
        ["train.json"],
        cwd=root,
        bundle_root=str(root),
        dataset_dir=str(prepared),
        init="scratch",
        max_epochs=2,
        val_interval=1,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stdout + result.stderr


def test_training_validates_on_aji_and_keeps_the_best_model(trained):
    root, log = trained
    assert "val_mean_aji" in log and "initialised at random (scratch)" in log
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "train" / "checkpoint_epoch=2.pt").is_file()
    assert list((root / "runs" / "train").glob("events.out.tfevents.*"))


def test_ssl_init_loads_the_pretrained_encoder(tmp_path, prepared):
    import torch
    from bundle.networks import TripletEncoderNet

    (tmp_path / "models").mkdir()
    torch.save(
        TripletEncoderNet(backbone="resnet10").encoder.state_dict(), tmp_path / "models" / "pretrained_encoder.pt"
    )
    result = run_bundle(
        ["train.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(prepared),
        init="ssl",
        max_epochs=1,
        val_interval=1,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "initialised from ssl weights" in result.stdout + result.stderr
        and "tensors matched" in result.stdout + result.stderr
    )


def test_label_fraction_trains_on_the_nested_subset(tmp_path, prepared):
    result = run_bundle(
        ["train.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(prepared),
        init="scratch",
        label_fraction=0.25,
        max_epochs=1,
        val_interval=1,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 4 training tiles, 25 % -> 1 tile, batch 2 -> one iteration per epoch
    assert "label fraction 0.25: 1 of 4 training items" in result.stdout + result.stderr


def test_evaluate_writes_one_row_per_image_and_a_summary(trained, prepared):
    root, _ = trained
    result = run_bundle(
        ["train.json", "evaluate.json"], cwd=root, bundle_root=str(root), dataset_dir=str(prepared), **TINY
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(root / "eval" / "metrics.csv")))
    validation = json.loads((prepared / "datalist.json").read_text())["validation"]
    assert [row["image"] for row in rows] == [item["image"].split("/")[-1] for item in validation]
    assert {"aji", "aji_plus", "dice", "dice2", "pq", "dq", "sq", "n_gt", "n_pred"} <= set(rows[0])
    # evaluate.json adds the error budget: AJI after each correction from the ground truth
    assert {"aji_separated", "aji_missed_added", "aji_false_dropped", "aji_pixels_cleaned"} <= set(rows[0])
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    assert summary["n_images"] == len(rows)
    assert summary["aji"] == pytest.approx(np.mean([float(row["aji"]) for row in rows]))


def test_inference_writes_four_outputs_per_tile_and_skips_unreadable_ones(trained, prepared, tmp_path):
    root, _ = trained
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in sorted((prepared / "images").glob("*.tif"))[:2]:
        shutil.copy(path, tiles / path.name)
    (tiles / "broken tile.tif").write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    result = run_bundle(
        ["inference.json"],
        cwd=root,
        bundle_root=str(root),
        dataset_dir=str(tiles),
        output_dir=str(out),
        backbone="resnet10",
        roi_size=64,
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "1 tile(s) could not be read" in log and "broken tile.tif" in log
    for path in sorted(tiles.glob("synthetic_*.tif")):
        instances = tifffile.imread(out / f"{path.stem}_instances.tif")
        geojson = json.loads((out / f"{path.stem}.geojson").read_text())
        rows = list(csv.DictReader(open(out / f"{path.stem}_nuclei.csv")))
        ids = np.unique(instances[instances > 0])
        assert len(geojson["features"]) == len(ids) == len(rows)
        assert all(f["properties"]["objectType"] == "detection" for f in geojson["features"])
        assert [int(row["id"]) for row in rows] == ids.tolist()
        assert (out / f"{path.stem}_overlay.png").is_file()
    assert not list(out.glob("broken*"))


def test_training_ends_by_storing_thresholds_chosen_on_validation(trained, prepared):
    root, log = trained
    stored = json.loads((root / "models" / "model.postprocess.json").read_text())
    assert "post-processing thresholds written to" in log
    assert stored["body_threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7) and stored["foreground_threshold"] in (
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
    )
    assert stored["chosen_by"]["tiles"] == len(json.loads((prepared / "datalist.json").read_text())["validation"])
    assert stored["chosen_by"]["score"] >= stored["chosen_by"]["score_of_defaults"]


def nuclei_per_tile(out) -> list[int]:
    return [int(tifffile.imread(path).max()) for path in sorted(out.glob("*_instances.tif"))]


def test_inference_and_evaluation_use_the_thresholds_stored_with_the_model(trained, prepared, tmp_path):
    root, _ = trained
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(root / "models" / "model.pt", model_dir / "model.pt")
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shutil.copy(sorted((prepared / "images").glob("*.tif"))[0], tiles)
    settings = model_dir / "model.postprocess.json"

    def infer(out, **overrides):
        result = run_bundle(
            ["inference.json"],
            cwd=tmp_path,
            bundle_root=str(tmp_path),
            dataset_dir=str(tiles),
            output_dir=str(out),
            backbone="resnet10",
            roi_size=64,
            **overrides,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return nuclei_per_tile(out)

    # every pixel a seed and foreground: the whole tile is one nucleus
    settings.write_text(
        json.dumps({"body_threshold": 0.0, "foreground_threshold": 0.0, "min_marker_area": 0, "min_nucleus_area": 0})
    )
    assert infer(tmp_path / "all", tta=True) == [1]
    # nuclei must cover 10^9 pixels: none is kept, at inference and at evaluation
    settings.write_text(json.dumps({"min_nucleus_area": 10**9}))
    assert infer(tmp_path / "none") == [0]
    result = run_bundle(
        ["train.json", "evaluate.json"],
        cwd=tmp_path,
        bundle_root=str(tmp_path),
        dataset_dir=str(prepared),
        tta=True,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())["n_pred"] == 0
    # a value given on the command line wins over the stored one
    assert infer(
        tmp_path / "override",
        **{
            "postprocess#min_nucleus_area": 0,
            "postprocess#body_threshold": 0.0,
            "postprocess#foreground_threshold": 0.0,
            "postprocess#min_marker_area": 0,
        },
    ) == [1]


def test_the_loss_weights_boundaries_and_pools_dice_over_the_batch():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    loss = parser.get_parsed_content("loss")
    assert loss.cross_entropy.weight.tolist() == [1.0, 1.0, 2.0]
    assert loss.dice.batch is True


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_the_encoder_learning_rate_is_a_multiple_of_the_decoders(scale):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    parser.update({"backbone": "resnet10", "device": "$torch.device('cpu')", "encoder_lr_scale": scale})
    optimizer = parser.get_parsed_content("optimizer")
    network = parser.get_parsed_content("network")
    encoder = {id(p) for p in network.encoder.parameters()}
    rates = {(id(p) in encoder, group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    assert rates == {(True, 0.0003 * scale), (False, 0.0003)}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(network.parameters()))


def evaluate_and_infer_one_tile(tmp_path, prepared, common: dict, tta: bool) -> None:
    """Evaluate the model trained in ``common["bundle_root"]``, then segment one tile with it."""
    root = Path(common["bundle_root"])
    result = run_bundle(["train.json", "evaluate.json"], dataset_dir=str(prepared), tta=tta, **common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "eval" / "metrics_summary.json").read_text())["n_images"] > 0
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shutil.copy(sorted((prepared / "images").glob("*.tif"))[0], tiles)
    result = run_bundle(
        ["inference.json"],
        cwd=tmp_path,
        bundle_root=str(root),
        dataset_dir=str(tiles),
        output_dir=str(tmp_path / "out"),
        backbone="resnet10",
        roi_size=64,
        tta=tta,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(nuclei_per_tile(tmp_path / "out")) == 1


def train_one_epoch(tmp_path, prepared, **overrides) -> tuple[dict, dict]:
    """Fine-tune for one epoch in ``tmp_path / "run"`` with ``overrides``; the common run
    arguments for :func:`evaluate_and_infer_one_tile`, and the model's network weights."""
    import torch

    root = tmp_path / "run"
    common = {"cwd": tmp_path, "bundle_root": str(root), **TINY}
    result = run_bundle(
        ["train.json"], dataset_dir=str(prepared), init="scratch", max_epochs=1, val_interval=1, **overrides, **common
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = torch.load(root / "models" / "model.pt", weights_only=True)
    return common, weights.get("network", weights)


def test_a_hover_model_trains_stores_its_contact_threshold_and_infers_from_its_checkpoint(tmp_path, prepared):
    """hover_weight > 0: a 5-channel network; evaluation and inference build it from the checkpoint alone."""
    common, weights = train_one_epoch(tmp_path, prepared, hover_weight=1.0)
    assert weights["segmentation_head.0.weight"].shape[0] == 5
    stored = json.loads((Path(common["bundle_root"]) / "models" / "model.postprocess.json").read_text())
    assert stored["contact_threshold"] in (0.02, 0.03, 0.05, 0.08, 1.0)
    assert {"contact_threshold"} < set(stored["chosen_by"]["trials"][0])
    evaluate_and_infer_one_tile(tmp_path, prepared, common, tta=True)


def test_a_full_resolution_model_evaluates_and_infers_from_its_checkpoint(tmp_path, prepared):
    """full_resolution_skip: evaluation and inference rebuild the stem from the checkpoint alone."""
    common, weights = train_one_epoch(tmp_path, prepared, full_resolution_skip=True)
    assert any(key.startswith("full_resolution_stem.") for key in weights)
    evaluate_and_infer_one_tile(tmp_path, prepared, common, tta=False)


def test_a_downsampled_model_evaluates_and_infers_at_the_tiles_resolution_from_its_checkpoint(tmp_path, prepared):
    """input_downsample 2: the factor rides in the weights; evaluation and inference rebuild the
    network from the checkpoint alone."""
    from monai.bundle import ConfigParser

    common, weights = train_one_epoch(tmp_path, prepared, input_downsample=2)
    assert int(weights["input_downsample"]) == 2
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": common["bundle_root"], "backbone": "resnet10"})
    assert parser.get_parsed_content("network").factor == 2
    evaluate_and_infer_one_tile(tmp_path, prepared, common, tta=True)


def test_a_stain_normalised_model_stores_its_reference_and_inference_normalises_to_it(tmp_path, prepared):
    """stain_normalization: the reference rides in the weights; inference builds its predictor from it."""
    from bundle.stain import MACENKO_REFERENCE
    from monai.bundle import ConfigParser

    common, weights = train_one_epoch(tmp_path, prepared, stain_normalization=True)
    np.testing.assert_allclose(weights["stain_reference"].numpy(), MACENKO_REFERENCE, atol=1e-6)
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": common["bundle_root"], "backbone": "resnet10"})
    stain = parser.get_parsed_content("predictor").normalize_stain
    np.testing.assert_allclose(stain.target_stains, np.asarray(MACENKO_REFERENCE)[:, :2], atol=1e-6)
    evaluate_and_infer_one_tile(tmp_path, prepared, common, tta=False)
