import pytest
import torch
from ignite.engine import Engine

from bundle.handlers import StopOnNonFiniteLoss, latest_checkpoint


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
        (tmp_path / f"checkpoint_epoch={epoch}.pt").touch()
    (tmp_path / ".checkpoint_epoch=11.pt.tmp").touch()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")
