"""Checkpoint files as untrusted data: damaged, foreign and pickled files are named, never loaded."""

import logging
import zipfile

import pytest
import torch
from bundle.checkpoints import (
    CheckedCheckpointLoader,
    CheckpointError,
    archive_problem,
    load_checkpoint,
    network_has_full_resolution_skip,
    network_input_downsample,
)
from bundle.handlers import latest_checkpoint
from bundle.networks import segmentation_unet
from ignite.engine import Engine


def save_checkpoint(path, scale=1.0):
    torch.manual_seed(0)
    torch.save({"network": {"weight": torch.randn(64, 64) * scale}, "trainer": {"epoch": 1}}, path)


def flip_bytes_inside(path, count=4096):
    """Zero ``count`` bytes in the middle of a tensor record: still a valid zip, wrong weights."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if "/data/" in info.filename)
    start = record.header_offset + 30 + len(record.filename) + len(record.extra) + 8
    data[start : start + min(count, record.file_size - 16)] = bytes(min(count, record.file_size - 16))
    path.write_bytes(bytes(data))


def test_an_intact_checkpoint_loads(tmp_path):
    save_checkpoint(tmp_path / "c.pt")
    assert archive_problem(tmp_path / "c.pt") is None
    assert set(load_checkpoint(tmp_path / "c.pt", required_keys=["network"])) == {"network", "trainer"}


def test_flipped_bytes_inside_a_valid_zip_are_caught_by_crc(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path)
    flip_bytes_inside(path)
    assert zipfile.is_zipfile(path)  # the old check passed this file
    with pytest.raises(CheckpointError, match=r"c\.pt: damaged: member .*/data/0 fails its CRC-32 check"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "file not found"),
        (b"", "empty file (0 bytes)"),
        (b"not a zip at all", "not a zip archive: truncated or corrupt"),
    ],
)
def test_missing_empty_and_garbage_files_are_named(tmp_path, content, problem):
    path = tmp_path / "c.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == f"{path}: {problem}"


def test_a_zip_that_is_not_a_checkpoint_and_a_dict_of_another_kind_are_refused(tmp_path):
    foreign = tmp_path / "notes.pt"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="a zip archive but not a PyTorch checkpoint"):
        load_checkpoint(foreign)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(
        CheckpointError, match=r"other\.pt: not a checkpoint of this workflow \(no network, trainer in it\)"
    ):
        load_checkpoint(other, required_keys=["network", "trainer"])
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict of weights"):
        load_checkpoint(tensor)


def test_resume_falls_back_past_damaged_foreign_and_pickled_newest_files(tmp_path, caplog):
    save_checkpoint(tmp_path / "checkpoint_epoch=2.pt")
    save_checkpoint(tmp_path / "checkpoint_epoch=5.pt")
    flip_bytes_inside(tmp_path / "checkpoint_epoch=5.pt")
    torch.save(
        {"network": {"w": torch.zeros(1)}, "trainer": {"epoch": 4}, "payload": object()},
        tmp_path / "checkpoint_epoch=4.pt",
    )
    torch.save({"something": 1}, tmp_path / "checkpoint_epoch=3.pt")
    with caplog.at_level(logging.WARNING, logger="bundle.handlers"):
        assert latest_checkpoint(tmp_path, required_keys=["network", "trainer"]) == str(
            tmp_path / "checkpoint_epoch=2.pt"
        )
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("skipping it" in m for m in messages)
    assert "checkpoint_epoch=5.pt: not a complete checkpoint (damaged: member" in messages[0]
    assert "checkpoint_epoch=4.pt: not a complete checkpoint (holds Python objects" in messages[1]
    assert "checkpoint_epoch=3.pt: not a complete checkpoint (not a checkpoint of this workflow" in messages[2]


def test_checked_loader_names_the_file_when_weights_do_not_fit(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path)
    engine = Engine(lambda engine, batch: None)
    CheckedCheckpointLoader(load_path=str(path), load_dict={"network": torch.nn.Linear(3, 3)}).attach(engine)
    with pytest.raises(CheckpointError, match=r"model\.pt: does not fit this workflow's network \(RuntimeError"):
        engine.run([0], max_epochs=1)


def test_checked_loader_loads_a_good_file(tmp_path):
    path = tmp_path / "model.pt"
    network = torch.nn.Linear(3, 3)
    torch.save({"network": network.state_dict()}, path)
    target = torch.nn.Linear(3, 3)
    engine = Engine(lambda engine, batch: None)
    CheckedCheckpointLoader(load_path=str(path), load_dict={"network": target}).attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.equal(target.weight, network.weight)


def test_checked_loader_names_the_backbone_a_model_was_trained_with(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"network": segmentation_unet("resnet18", out_channels=3).state_dict()}, path)
    engine = Engine(lambda engine, batch: None)
    CheckedCheckpointLoader(
        load_path=str(path), load_dict={"network": segmentation_unet("resnet34", out_channels=3)}
    ).attach(engine)
    with pytest.raises(CheckpointError) as error:
        engine.run([0], max_epochs=1)
    message = str(error.value)
    assert message.startswith(f"{path}: does not fit this workflow's network (RuntimeError: ")
    assert message.endswith("; it holds a resnet18 network: rerun with --backbone resnet18") and len(message) < 600


def test_checked_loader_says_how_to_get_a_missing_model(tmp_path):
    engine = Engine(lambda engine, batch: None)
    CheckedCheckpointLoader(
        load_path=str(tmp_path / "models" / "model.pt"), load_dict={"network": torch.nn.Linear(3, 3)}
    ).attach(engine)
    with pytest.raises(
        CheckpointError, match=r"model\.pt: file not found; train a model first .* or point --model_path at one"
    ):
        engine.run([0], max_epochs=1)


def test_a_full_resolution_skip_is_read_from_the_checkpoint(tmp_path):
    for full_resolution_skip in (False, True):
        path = tmp_path / f"model_{full_resolution_skip}.pt"
        network = segmentation_unet("resnet10", full_resolution_skip=full_resolution_skip)
        torch.save({"network": network.state_dict()}, path)
        assert network_has_full_resolution_skip(path) is full_resolution_skip
    assert network_has_full_resolution_skip(tmp_path / "missing.pt") is False


def test_the_input_downsample_is_read_from_the_checkpoint(tmp_path):
    for factor in (1, 2, 4):
        path = tmp_path / f"model_{factor}.pt"
        torch.save({"network": segmentation_unet("resnet10", input_downsample=factor).state_dict()}, path)
        assert network_input_downsample(path) == factor
    assert network_input_downsample(tmp_path / "missing.pt") == 1
