"""Test-only hooks that SIGKILL a bundle run at an exact point of its checkpointing.

Imported by the ``run`` list of an extra config (see ``tests/test_reliability.py``); SIGKILL
cannot be caught, so the process dies as it would under ``kill -9`` or the OOM killer.
"""

import io
import os
import signal

import torch
from ignite.engine import Engine, Events


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_mid_save(epoch: int) -> None:
    """Make the ``torch.save`` of the checkpoint of ``epoch`` write half its bytes, then die."""
    original = torch.save

    def save(obj, f, *args, **kwargs):
        trainer = obj.get("trainer") if isinstance(obj, dict) else None  # ignite's state_dict: iteration, epoch_length
        if not isinstance(trainer, dict) or trainer.get("iteration") != epoch * trainer.get("epoch_length", -1):
            return original(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
        else:
            with open(f, "wb") as file:
                file.write(data[: len(data) // 2])
        _die()

    torch.save = save


def kill_after_epoch(engine: Engine, epoch: int) -> None:
    """Die at the end of ``epoch``, after every handler attached before this call (the checkpoint saver)."""
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=epoch), lambda _: _die())
