"""Tile inference outputs: one bad tile does not stop the run, a tile's four outputs appear together,
and an output folder is held by one run and one model at a time."""

import json
import os
import subprocess
import sys

import bundle.inference as inference
import numpy as np
import pytest
import torch
from bundle.inference import SaveNucleiOutputsd, TileEvaluator, TileScreen
from bundle.output_folder import LOCK_NAME, MANIFEST_NAME, OutputFolder
from monai.data import DataLoader

SUFFIXES = ("_instances.tif", "_overlay.png", ".geojson", "_nuclei.csv")
JOURNAL = ".manifest-rank0.jsonl"


def tile(name: str) -> dict:
    instances = np.zeros((1, 16, 16), np.int32)
    instances[0, 4:9, 4:9] = 1
    return {"image": torch.rand(3, 16, 16), "image_path": f"/data/{name}.tif", "instances": instances}


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"network": {"w": torch.ones(2)}}, path)
    return path


class FailsOnBrightTiles(torch.nn.Module):
    """A 3-class 'network' that runs out of memory on tiles brighter than 0.5."""

    def forward(self, x):
        if x.mean() > 0.5:
            raise MemoryError("Unable to allocate 2.3 GiB")
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


@pytest.mark.parametrize("where", ["network", "writers"])
def test_a_tile_failing_during_inference_is_skipped_and_the_next_is_processed(tmp_path, where):
    """A MemoryError in the network pass, or in the nucleus table of a huge tile, costs that tile only."""
    screen, done = TileScreen(), []

    def write(d):
        if where == "writers" and d["image_path"].endswith("big.tif"):
            raise MemoryError("Unable to allocate 2.3 GiB")
        done.append(d["image_path"])
        return d

    data = [
        {"image": torch.full((3, 8, 8), 0.9 if where == "network" else 0.1), "image_path": "/data/big.tif"},
        {"image": torch.full((3, 8, 8), 0.1), "image_path": "/data/next.tif"},
    ]
    evaluator = TileEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=1),
        network=FailsOnBrightTiles(),
        postprocessing=write,
        screen=screen,
    )
    evaluator.run()
    assert done == ["/data/next.tif"]
    assert screen.failures == {
        "/data/big.tif": "/data/big.tif: failed during inference (MemoryError: Unable to allocate 2.3 GiB); no output written"
    }
    with pytest.raises(SystemExit, match="1 tile\\(s\\) could not be read, processed or written"):
        screen.exit_status()


def test_a_writer_failing_leaves_none_of_the_tiles_outputs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(inference, "write_geojson", lambda path, content: (_ for _ in ()).throw(OSError("disk error")))
    with pytest.raises(OSError, match="disk error"):
        SaveNucleiOutputsd(output_dir=out)(tile("a"))
    assert list(out.iterdir()) == []  # not the instance TIFF and overlay written before it, no partial folder


def test_outputs_of_a_tile_appear_together_and_leftovers_of_a_killed_run_are_removed(tmp_path, model):
    out = tmp_path / "out"
    (out / ".partial-old-123").mkdir(parents=True)
    (out / ".partial-old-123" / "old_instances.tif").write_bytes(b"half")
    (out / ".old_nuclei.x1y2.tmp.csv").write_text("half")
    folder = OutputFolder(out, model)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    SaveNucleiOutputsd(output_dir=out, folder=folder)(tile("a"))
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, JOURNAL, *(f"a{s}" for s in SUFFIXES)])
    folder.close()  # the journal is merged into the manifest
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME, *(f"a{s}" for s in SUFFIXES)])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["a"]["model"]["path"] == str(model.resolve()) and len(manifest["a"]["model"]["sha256"]) == 16
    assert sorted(manifest["a"]["files"]) == sorted(f"a{s}" for s in SUFFIXES)
    (nucleus,) = json.loads((out / "a.geojson").read_text())["features"]
    assert nucleus["properties"]["measurements"]["Area px^2"] == 25.0  # measurements reach QuPath


def test_a_known_pixel_size_gives_measurements_in_microns(tmp_path):
    SaveNucleiOutputsd(output_dir=tmp_path, mpp=0.5)(tile("a"))
    (nucleus,) = json.loads((tmp_path / "a.geojson").read_text())["features"]
    assert nucleus["properties"]["measurements"]["Area µm^2"] == pytest.approx(25 * 0.25)


def test_a_second_live_run_on_the_same_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, model):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(str(sleeper.pid))
        with pytest.raises(
            SystemExit, match=f"another inference run \\(pid {sleeper.pid}\\) is writing to this folder"
        ):
            OutputFolder(out, model)
    finally:
        sleeper.kill()
        sleeper.wait()
    OutputFolder(out, model)  # the holder is gone: its lock is taken over
    assert (out / LOCK_NAME).read_text() == str(os.getpid())


def test_a_folder_with_another_models_tiles_is_refused_unless_overwrite(tmp_path, model):
    out = tmp_path / "out"
    first = OutputFolder(out, model)
    SaveNucleiOutputsd(output_dir=out, folder=first)(tile("a"))
    first._unlock()
    OutputFolder(out, model)._unlock()  # the same model may add to its own folder
    other = tmp_path / "other.pt"
    torch.save({"network": {"w": torch.zeros(2)}}, other)
    with pytest.raises(SystemExit, match="holds outputs of another model .*--overwrite True"):
        OutputFolder(out, other)
    assert not (out / LOCK_NAME).exists()  # the refused run released its lock
    replacing = OutputFolder(out, other, overwrite=True)
    SaveNucleiOutputsd(output_dir=out, folder=replacing)(tile("a"))
    replacing.close()
    assert json.loads((out / MANIFEST_NAME).read_text())["a"]["model"]["path"] == str(other.resolve())


def test_a_rerun_knows_the_finished_tiles_from_a_killed_runs_journal(tmp_path, model, caplog):
    """Each tile adds one journal line (the manifest is not rewritten per tile); a run killed before
    ``close`` leaves the journal, cut mid-line, and the next run reads it."""
    out = tmp_path / "out"
    killed = OutputFolder(out, model)
    for name in ("a", "b", "c"):
        SaveNucleiOutputsd(output_dir=out, folder=killed)(tile(name))
    assert not (out / MANIFEST_NAME).exists() and len((out / JOURNAL).read_text().splitlines()) == 3
    (out / JOURNAL).write_text((out / JOURNAL).read_text() + '{"d": {"mod')  # killed while writing d's line
    (out / "b_overlay.png").unlink()  # and b is incomplete
    killed._unlock()

    rerun = OutputFolder(out, model)
    assert "ignoring an incomplete line" in caplog.text
    assert [rerun.finished(name) for name in ("a", "b", "c", "d")] == [True, False, True, False]
    assert not OutputFolder(out, model, overwrite=True).finished("a")  # overwrite redoes every tile
    rerun.close()
    assert sorted(json.loads((out / MANIFEST_NAME).read_text())) == ["a", "b", "c"]
    assert not list(out.glob(".manifest-rank*.jsonl"))


def test_the_screen_skips_tiles_finished_in_the_output_folder(tmp_path, model):
    from bundle.data import write_image

    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.tif", np.zeros((16, 16, 3), np.uint8))
    items = [{"image": str(tmp_path / f"{name}.tif")} for name in ("a", "b")]
    out = tmp_path / "out"
    folder = OutputFolder(out, model)
    SaveNucleiOutputsd(output_dir=out, folder=folder)(tile("a"))
    assert TileScreen().readable(items, folder=folder) == items[1:]
    assert TileScreen().readable(items) == items  # without a folder every tile runs


def test_a_tile_needing_more_memory_than_available_is_skipped_naming_the_need(tmp_path):
    from bundle.data import write_image

    write_image(tmp_path / "big.tif", np.zeros((100, 200, 3), np.uint8))
    write_image(tmp_path / "small.tif", np.zeros((10, 20, 3), np.uint8))
    items = [{"image": str(tmp_path / name)} for name in ("big.tif", "small.tif")]
    screen = TileScreen(memory_bytes=inference.tile_inference_bytes(100, 200) - 1)
    assert screen.readable(items) == items[1:]
    assert screen.failures[str(tmp_path / "big.tif")].startswith(
        f"{tmp_path / 'big.tif'}: 100x200 pixels need about 1.0 GiB for tile inference"
    )
    assert "run configs/inference.json + configs/inference_wsi.json on it" in screen.failures[str(tmp_path / "big.tif")]
    assert TileScreen().memory_bytes > 2**20  # the machine's available memory by default
