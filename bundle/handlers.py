"""Ignite handlers of the bundle: encoder export, stop on a non-finite loss, resume lookup, metric files."""

import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys, convert_to_numpy
from torch import nn

from bundle.atomic import atomic_path
from bundle.metrics import nuclei_metrics

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
        output = engine.state.output
        loss = (output[0] if isinstance(output, list) else output)[CommonKeys.LOSS]  # decollated or not
        value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss became {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "stopping. The last epoch checkpoint on disk is the last good state: lower the learning "
                "rate or check the input tiles, then rerun to resume from it."
            )


class NucleiMetricsWriter:
    """Per-image nuclei metrics of an evaluator, written as ``metrics.csv`` plus ``metrics_summary.json``.

    Each iteration scores every decollated item's ``pred_key`` instance map against its
    ``label_key`` map with :func:`bundle.metrics.nuclei_metrics`; at the end one CSV row per
    image (named by its file) and the mean of each metric are written atomically, and the
    means are logged.
    """

    def __init__(self, output_dir: str | Path, pred_key: str = "instances", label_key: str = "label", image_key: str = "image"):
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.score_iteration)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def score_iteration(self, engine: Engine) -> None:
        for batch_item, output_item in zip(engine.state.batch, engine.state.output):
            gt = convert_to_numpy(batch_item.get(self.label_key, output_item.get(self.label_key)))[0]
            pred = convert_to_numpy(output_item[self.pred_key])[0]
            name = Path(str(batch_item.get(f"{self.image_key}_path", len(self.rows)))).name
            self.rows.append({"image": name, **nuclei_metrics(gt.astype(np.int64), pred.astype(np.int64))})

    def summary(self) -> dict[str, float]:
        """Mean of every numeric column over the images scored so far."""
        columns = [key for key in self.rows[0] if key != "image"] if self.rows else []
        return {key: float(np.mean([row[key] for row in self.rows])) for key in columns}

    def write(self, engine: Engine) -> None:
        if not self.rows:
            raise RuntimeError("no image was evaluated: check the datalist section")
        with atomic_path(self.output_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        summary = {"n_images": len(self.rows), **self.summary()}
        with atomic_path(self.output_dir / "metrics_summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        logger.info("mean over %d images: %s", len(self.rows), ", ".join(f"{k} {v:.4f}" for k, v in self.summary().items()))
        print(f"metrics of {len(self.rows)} images written to {(self.output_dir / 'metrics.csv').resolve()}")
