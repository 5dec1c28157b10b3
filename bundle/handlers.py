"""Ignite handlers of the bundle: encoder export, stop on a non-finite loss, resume lookup."""

import logging
import math
import re
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.utils import CommonKeys
from torch import nn

from bundle.atomic import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(folder: str | Path) -> str | None:
    """Path of the highest-epoch ``checkpoint_epoch=N.pt`` in ``folder`` (MONAI ``CheckpointSaver`` names), or None."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("*checkpoint_epoch=*.pt") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return str(max(found)[1]) if found else None


class EncoderExport:
    """On completion, write ``module.state_dict()`` (CPU tensors) atomically to ``path``.

    Used for ``models/pretrained_encoder.pt``: the exact keys of ``FlexibleUNet.encoder``.
    Nothing is written when the run fails, so a previous good file is never replaced by
    weights from a diverged run.
    """

    def __init__(self, module: nn.Module, path: str | Path):
        self.module, self.path = module, Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = {name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        logger.info("encoder written to %s (%d tensors)", self.path.resolve(), len(state))
        print(f"pretrained encoder written to {self.path.resolve()}")


class StopOnNonFiniteLoss:
    """Raise a clear error when the iteration loss is NaN or infinite.

    The run stops before the next epoch checkpoint, so the last checkpoint on disk is the
    last good one (unlike ignite's ``TerminateOnNan``, which ends the run as if it succeeded).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = from_engine([CommonKeys.LOSS], first=True)(engine.state.output)
        value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss became {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "stopping. The last epoch checkpoint on disk is the last good state: lower the learning "
                "rate or check the input tiles, then rerun to resume from it."
            )
