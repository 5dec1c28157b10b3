import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    EpochSeeder,
    StopOnNonFiniteLoss,
    epoch_seed,
    latest_checkpoint,
    set_aside_checkpoints,
)
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandFlipd, RandShiftIntensityd


@pytest.mark.parametrize("decollated", [False, True])
def test_non_finite_loss_stops_with_a_clear_error(decollated):
    losses = [1.0, 0.5, float("nan"), 0.2]

    def step(engine, _):
        output = {"loss": torch.tensor(losses[engine.state.iteration - 1])}
        return [output, output] if decollated else output

    engine = Engine(step)
    StopOnNonFiniteLoss().attach(engine)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 1, iteration 3"):
        engine.run(range(4), max_epochs=1)


def test_finite_losses_run_to_the_end():
    engine = Engine(lambda engine, _: {"loss": 1.0})
    StopOnNonFiniteLoss().attach(engine)
    assert engine.run(range(3), max_epochs=2).iteration == 6


def test_latest_checkpoint_picks_the_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for epoch in (2, 10, 9):
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    torch.save({}, tmp_path / ".checkpoint_epoch=11.pt.tmp")
    torch.save({}, tmp_path / ".checkpoint_epoch=12.x1y2.tmp.pt")  # bundle.atomic's temporary name
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")


@pytest.mark.parametrize(
    "broken", [b"", b"PK\x03\x04 cut short", bytes(range(256)) * 16], ids=["empty", "cut", "random"]
)
def test_latest_checkpoint_skips_files_that_are_not_zip_archives(tmp_path, caplog, broken):
    torch.save({"epoch": 8}, tmp_path / "checkpoint_epoch=8.pt")
    whole = (tmp_path / "checkpoint_epoch=8.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=9.pt").write_bytes(broken)
    (tmp_path / "checkpoint_epoch=10.pt").write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="bundle.handlers"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=8.pt")
    problem_9 = "empty file (0 bytes)" if not broken else "not a zip archive: truncated or corrupt"
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'checkpoint_epoch=10.pt'}: not a complete checkpoint (not a zip archive: truncated or corrupt); skipping it",
        f"{tmp_path / 'checkpoint_epoch=9.pt'}: not a complete checkpoint ({problem_9}); skipping it",
    ]


def test_latest_checkpoint_with_only_broken_files_starts_over_with_a_warning(tmp_path, caplog):
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="bundle.handlers"):
        assert latest_checkpoint(tmp_path) is None
    assert (
        caplog.records[-1].getMessage()
        == f"{tmp_path}: no complete checkpoint to resume from; starting from the beginning"
    )


def saver_engine(tmp_path, **saver_args) -> tuple[Engine, AtomicCheckpointSaver]:
    """An engine of 1 iteration per epoch that changes a weight each epoch, with an AtomicCheckpointSaver."""
    net = torch.nn.Linear(1, 1)

    def step(engine, _):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)
        engine.state.metrics["score"] = float(engine.state.epoch % 2)
        return {"loss": 0.0}

    engine = Engine(step)
    save_dict = {
        "network": net,
        "optimizer": torch.optim.SGD(net.parameters(), lr=0.1),
    }  # 2 objects, as the configs save
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=save_dict, **saver_args)
    saver.attach(engine)
    return engine, saver


def test_atomic_checkpoint_saver_keeps_n_saved_files_with_monai_names(tmp_path):
    engine, _ = saver_engine(tmp_path, save_interval=1, n_saved=2)
    engine.run(range(1), max_epochs=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]
    assert torch.load(tmp_path / "checkpoint_epoch=4.pt", weights_only=True)["network"]["weight"].item() == 4.0


def test_atomic_checkpoint_saver_removes_the_old_file_only_after_the_new_one_is_written(tmp_path, monkeypatch):
    engine, _ = saver_engine(tmp_path, save_interval=1, n_saved=1)
    engine.run(range(1), max_epochs=1)
    seen_during_save = []
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        seen_during_save.append(sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    engine.run(range(1), max_epochs=2)
    assert seen_during_save == [["checkpoint_epoch=1.pt"]]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=2.pt"]


def test_atomic_checkpoint_saver_best_model_with_a_fixed_name(tmp_path):
    engine, _ = saver_engine(tmp_path, save_key_metric=True, key_metric_name="score", key_metric_filename="model.pt")
    engine.run(range(1), max_epochs=4)  # scores 1, 0, 1, 0: the first 1 stays the best
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["network"]["weight"].item() == 1.0


def test_atomic_checkpoint_saver_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    engine, _ = saver_engine(tmp_path, save_interval=1, n_saved=1)
    engine.run(range(1), max_epochs=1)

    def failing_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        engine.run(range(1), max_epochs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=1.pt"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=1.pt")


def random_dataset() -> Dataset:
    """4 items through a random flip and a random intensity shift (main-process transforms)."""
    transform = Compose([RandFlipd("x", prob=0.5), RandShiftIntensityd("x", offsets=1.0, prob=1.0)])
    return Dataset([{"x": np.arange(4.0).reshape(1, 4)} for _ in range(4)], transform=transform)


def epoch_batches(start_epoch: int, max_epochs: int) -> dict[int, list]:
    """Per epoch, the batches an EpochSeeder'ed engine sees, starting after ``start_epoch`` (as a resume does)."""
    loader = DataLoader(random_dataset(), batch_size=2, shuffle=True, num_workers=0)
    seen: dict[int, list] = {}

    def step(engine, batch):
        seen.setdefault(engine.state.epoch, []).append((batch["x"].tolist(), torch.rand(1).item(), np.random.rand()))

    engine = Engine(step)
    EpochSeeder(seed=7).attach(engine)
    engine.state.epoch, engine.state.iteration, engine.state.epoch_length = start_epoch, start_epoch * 2, 2
    engine.state.max_epochs = max_epochs
    engine.run(loader, max_epochs=max_epochs)
    return seen


def test_epoch_seeder_makes_an_epoch_independent_of_the_epochs_before():
    straight = epoch_batches(0, 4)
    resumed = epoch_batches(2, 4)
    assert sorted(resumed) == [3, 4]
    assert resumed == {epoch: straight[epoch] for epoch in (3, 4)}
    assert straight[1] != straight[2]  # still random from epoch to epoch


def test_epoch_seed_differs_between_neighbouring_seeds_ranks_and_epochs():
    seeds = {epoch_seed(seed, epoch, rank) for seed in range(3) for epoch in range(1, 4) for rank in range(2)}
    assert len(seeds) == 18 and all(0 <= s < 2**32 for s in seeds)


def test_best_model_saver_state_keeps_a_better_earlier_model_after_a_resume(tmp_path):
    engine, saver = saver_engine(
        tmp_path, save_key_metric=True, key_metric_name="score", key_metric_filename="model.pt"
    )
    engine.run(range(1), max_epochs=1)  # score 1, weight 1
    state = saver.state_dict()
    assert [priority for priority, _ in state["_saved"]] == [1.0]

    resumed, resumed_saver = saver_engine(
        tmp_path, save_key_metric=True, key_metric_name="score", key_metric_filename="model.pt"
    )
    resumed_saver.load_state_dict(state)
    resumed.state.epoch, resumed.state.iteration, resumed.state.epoch_length = 2, 2, 1
    resumed.run(range(1), max_epochs=3)  # epoch 3 scores 1 again: not higher, so the epoch-1 model stays
    assert torch.load(tmp_path / "model.pt", weights_only=True)["network"]["weight"].item() == 1.0


def test_epoch_checkpoints_of_earlier_processes_count_towards_n_saved(tmp_path):
    for epoch in (1, 2, 3):  # left by runs that were killed and resumed
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    torch.save({}, tmp_path / "model.pt")
    (tmp_path / "checkpoint_epoch=9.pt").write_bytes(b"junk of a higher epoch")
    AtomicDiskSaver(tmp_path, keep=2)({"epoch": 4}, "checkpoint_epoch=4.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
        "checkpoint_epoch=9.pt",
        "model.pt",
    ]
    (tmp_path / "checkpoint_epoch=9.pt").unlink()
    AtomicDiskSaver(tmp_path, keep=1)({"epoch": 4}, "checkpoint_epoch=4.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]
    AtomicDiskSaver(tmp_path, filename="model.pt")({"best": 1}, "ignored.pt")  # fixed-name savers prune nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]


def test_set_aside_checkpoints_moves_an_earlier_runs_files_and_keeps_the_rest(tmp_path, caplog):
    assert set_aside_checkpoints(tmp_path) is None
    for epoch in (2, 4):
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    torch.save({}, tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING, logger="bundle.handlers"):
        target = set_aside_checkpoints(tmp_path)
    assert target.parent == tmp_path and target.name.startswith("superseded_")
    assert sorted(p.name for p in target.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt"]
    assert latest_checkpoint(tmp_path) is None and (tmp_path / "model.pt").is_file()
    assert f"moved to {target}" in caplog.records[-1].getMessage()
