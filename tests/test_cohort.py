"""Cohorts of slides: each slide to one process, finished slides skipped on a rerun, one summary."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from bundle.networks import segmentation_unet
from bundle.runner import bundle_run_command
from bundle.synthetic import synthesize_tile
from bundle.wsi import segment_slides
from bundle.wsi.cohort import SUMMARY_NAME, share_of_rank
from bundle_runner import single_thread_env

SLIDES = ("a", "b", "c")


def test_every_item_goes_to_exactly_one_rank():
    items = list(range(7))
    shares = [share_of_rank(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, [])) == items and shares[0] == [0, 3, 6]
    with pytest.raises(ValueError, match="rank 3 is outside a world of 3"):
        share_of_rank(items, 3, 3)


def test_items_with_the_same_key_go_to_the_same_rank_in_their_order():
    items = ["a/x", "a/y", "b/x", "a/z", "b/y"]
    shares = [share_of_rank(items, rank, 2, key=lambda item: item[-1]) for rank in range(2)]
    assert shares == [["a/x", "b/x", "a/z"], ["a/y", "b/y"]]


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    for seed, name in enumerate(SLIDES):
        tifffile.imwrite(folder / f"{name}.tif", synthesize_tile((192, 192), seed=seed)[0], photometric="rgb")
    return folder


def threshold_nuclei(rgb: np.ndarray) -> np.ndarray:
    """A stand-in network and post-processing: dark pixels are one nucleus per connected blob."""
    from skimage.measure import label

    return label(rgb.mean(0) < 120).astype(np.int32)


def summary(output_dir) -> dict:
    return json.loads((output_dir / SUMMARY_NAME).read_text())


def test_a_rerun_skips_finished_slides_and_redoes_unfinished_ones(slide_dir, tmp_path):
    options = {"tile_size": 128, "overlap": 32, "tissue_threshold": 0.0}
    done = segment_slides(sorted(slide_dir.glob("*.tif")), threshold_nuclei, tmp_path, **options)
    assert [r["slide"] for r in done] == [str(slide_dir / f"{name}.tif") for name in SLIDES]
    totals = summary(tmp_path)["totals"]
    assert (totals["done"], totals["skipped"], totals["nuclei"]) == (3, 0, sum(r["nuclei"] for r in done))
    assert not (tmp_path / ".cohort").exists()  # the per-rank records are merged and removed

    (tmp_path / "b_overview.png").unlink()  # as a run killed before b's outputs were all in place leaves it
    kept = (tmp_path / "a.geojson").stat().st_mtime_ns
    redone = segment_slides(sorted(slide_dir.glob("*.tif")), threshold_nuclei, tmp_path, **options)
    assert [r["slide"] for r in redone] == [str(slide_dir / "b.tif")]
    assert [r["status"] for r in summary(tmp_path)["slides"]] == ["skipped", "done", "skipped"]
    assert (tmp_path / "b_overview.png").is_file() and (tmp_path / "a.geojson").stat().st_mtime_ns == kept

    again = segment_slides(sorted(slide_dir.glob("*.tif")), threshold_nuclei, tmp_path, overwrite=True, **options)
    assert len(again) == 3


def two_process_inference(configs: list[str], tmp_path, dataset_dir, **overrides):
    """A function running ``configs`` under torchrun with 2 gloo processes on a seeded ResNet-10
    (outputs in ``tmp_path/out``), asserting exit status 0; call it once per run."""
    torch.manual_seed(0)
    torch.save(segmentation_unet("resnet10").state_dict(), tmp_path / "model.pt")
    run = bundle_run_command(
        configs,
        bundle_root=str(tmp_path),
        dataset_dir=str(dataset_dir),
        model_path=str(tmp_path / "model.pt"),
        output_dir=str(tmp_path / "out"),
        backbone="resnet10",
        roi_size=128,
        sw_batch_size=1,
        **overrides,
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *run[1:]]

    def run_once() -> None:
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=single_thread_env()
        )
        assert result.returncode == 0, result.stderr[-4000:]

    return run_once


def test_two_processes_share_a_cohort_and_resume_it(slide_dir, tmp_path):
    """torchrun, 2 gloo processes: each slide is segmented once, by one rank; a rerun redoes only
    the slide whose outputs are incomplete."""
    out, run = tmp_path / "out", two_process_inference(
        ["inference.json", "inference_wsi.json", "multi_gpu_inference.json"],
        tmp_path,
        slide_dir,
        tile_size=128,
        overlap=32,
        tissue_threshold=0.0,
    )

    def cohort() -> dict:
        run()
        return summary(out)

    first = cohort()
    assert first["world_size"] == 2 and first["totals"]["done"] == 3
    ranks = {record["slide"]: record["rank"] for record in first["slides"]}
    assert sorted(ranks) == [str(slide_dir / f"{name}.tif") for name in SLIDES] and set(ranks.values()) == {0, 1}

    (out / "c.geojson").unlink()
    second = cohort()
    statuses = {record["slide"]: record["status"] for record in second["slides"]}
    assert statuses == {
        str(slide_dir / "a.tif"): "skipped",
        str(slide_dir / "b.tif"): "skipped",
        str(slide_dir / "c.tif"): "done",
    }
    assert (out / "c.geojson").is_file()


def test_two_processes_share_a_tile_folder_and_resume_it(slide_dir, tmp_path):
    """The same for a folder of tiles (configs/inference.json): each tile is written once, by one
    rank, into one manifest; a rerun redoes only the tile whose outputs are incomplete."""
    out, run = tmp_path / "out", two_process_inference(
        ["inference.json", "multi_gpu_inference.json"], tmp_path, slide_dir
    )

    def tiles() -> dict:
        run()
        assert not list(out.glob(".*"))  # no lock, journal or partial folder left
        return json.loads((out / "manifest.json").read_text())

    first = tiles()
    assert {name: entry["rank"] for name, entry in first.items()} == {"a": 0, "b": 1, "c": 0}
    kept = (out / "a.geojson").stat().st_mtime_ns
    (out / "c_nuclei.csv").unlink()
    second = tiles()
    assert second["a"] == first["a"] and second["b"] == first["b"]  # not redone
    assert second["c"]["rank"] == 0 and (out / "c_nuclei.csv").is_file()
    assert (out / "a.geojson").stat().st_mtime_ns == kept
