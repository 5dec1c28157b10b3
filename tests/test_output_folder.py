"""Tile inference outputs: one bad tile does not stop the run, a tile's four outputs appear together,
and an output folder is held by one run and one model at a time."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bundle.inference as inference
from bundle.inference import SaveNucleiOutputsd, SkipFailedTiles, TileScreen
from bundle.output_folder import LOCK_NAME, MANIFEST_NAME, OutputFolder

SUFFIXES = ("_instances.tif", "_overlay.png", ".geojson", "_nuclei.csv")


def tile(name: str) -> dict:
    instances = np.zeros((1, 16, 16), np.int32)
    instances[0, 4:9, 4:9] = 1
    return {"image": torch.rand(3, 16, 16), "image_path": f"/data/{name}.tif", "instances": instances}


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"network": {"w": torch.ones(2)}}, path)
    return path


def test_a_tile_failing_in_its_writers_is_skipped_and_the_next_is_written(tmp_path, monkeypatch):
    out, screen = tmp_path / "out", TileScreen()
    real_table, calls = inference.nucleus_table, []

    def table_failing_once(rgb, instances):  # fails like the table of a 5000x5000 tile under a memory limit
        calls.append(rgb.shape)
        if len(calls) == 1:
            raise MemoryError("Unable to allocate 2.3 GiB")
        return real_table(rgb, instances)

    monkeypatch.setattr(inference, "nucleus_table", table_failing_once)
    guarded = SkipFailedTiles(SaveNucleiOutputsd(output_dir=out), screen)
    guarded(tile("big"))
    guarded(tile("next"))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"next{s}" for s in SUFFIXES)  # nothing of "big", no partial folder
    assert screen.failures == {"/data/big.tif": "/data/big.tif: failed after the network (MemoryError: Unable to allocate 2.3 GiB); no output written"}
    with pytest.raises(SystemExit, match="1 tile\\(s\\) could not be read, processed or written"):
        screen.exit_status()


def test_outputs_of_a_tile_appear_together_and_leftovers_of_a_killed_run_are_removed(tmp_path, model):
    out = tmp_path / "out"
    (out / ".partial-old-123").mkdir(parents=True)
    (out / ".partial-old-123" / "old_instances.tif").write_bytes(b"half")
    (out / ".old_nuclei.x1y2.tmp.csv").write_text("half")
    folder = OutputFolder(out, model)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    SaveNucleiOutputsd(output_dir=out, folder=folder)(tile("a"))
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME, *(f"a{s}" for s in SUFFIXES)])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["a"]["model"]["path"] == str(model.resolve()) and len(manifest["a"]["model"]["sha256"]) == 16
    assert sorted(manifest["a"]["files"]) == sorted(f"a{s}" for s in SUFFIXES)


def test_a_second_live_run_on_the_same_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, model):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(str(sleeper.pid))
        with pytest.raises(SystemExit, match=f"another inference run \\(pid {sleeper.pid}\\) is writing to this folder"):
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
    assert json.loads((out / MANIFEST_NAME).read_text())["a"]["model"]["path"] == str(other.resolve())


def test_a_tile_needing_more_memory_than_available_is_skipped_naming_the_need(tmp_path):
    from bundle.data import write_image

    write_image(tmp_path / "big.tif", np.zeros((100, 200, 3), np.uint8))
    write_image(tmp_path / "small.tif", np.zeros((10, 20, 3), np.uint8))
    items = [{"image": str(tmp_path / name)} for name in ("big.tif", "small.tif")]
    screen = TileScreen(memory_bytes=100 * 200 * inference.INFERENCE_BYTES_PER_PIXEL - 1)
    assert screen.readable(items) == items[1:]
    assert screen.failures[str(tmp_path / "big.tif")].startswith(f"{tmp_path / 'big.tif'}: 100x200 pixels need about 0.0 GiB for tile inference")
    assert "run configs/inference_wsi.json on it" in screen.failures[str(tmp_path / "big.tif")]
    assert TileScreen().memory_bytes > 2**20  # the machine's available memory by default
