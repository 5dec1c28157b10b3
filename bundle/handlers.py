"""Ignite handlers of the bundle: checkpoints that survive a kill, resume lookup (checked files), per-epoch seeding,
encoder export, stop on a non-finite loss, metric files."""

import csv
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from bundle.atomic import atomic_path
from bundle.checkpoints import CheckpointError, load_checkpoint
from bundle.cli import user_error
from bundle.error_budget import error_budget
from bundle.metrics import nuclei_metrics
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver, StatsHandler
from monai.utils import CommonKeys, convert_to_numpy, set_determinism
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(folder: str | Path, required_keys: Sequence[str] = ()) -> str | None:
    """Path of the highest-epoch usable ``checkpoint_epoch=N.pt`` in ``folder`` (MONAI ``CheckpointSaver`` names), or None.

    Each candidate is checked with :func:`bundle.checkpoints.load_checkpoint` (an intact zip
    whose members pass their CRC-32, a tensor-only dict holding ``required_keys``); a file
    that fails (cut short by a kill or a full disk, damaged, pickled objects, another kind of
    file) is skipped with a logged warning naming it and the problem, and the next lower
    epoch is tried, so a resume never stops on, or silently loads, a broken newest file.
    """
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).glob("*checkpoint_epoch=*.pt")
        if (m := CHECKPOINT_PATTERN.search(p.name))
    ]
    for _, path in sorted(found, reverse=True):
        try:
            load_checkpoint(path, required_keys=required_keys, mmap=True)
            return str(path)
        except CheckpointError as error:
            logger.warning("%s: not a complete checkpoint (%s); skipping it", path, error.problem)
    if found:
        logger.warning("%s: no complete checkpoint to resume from; starting from the beginning", folder)
    return None


def set_aside_checkpoints(folder: str | Path) -> Path | None:
    """Move an earlier run's ``checkpoint_epoch=N.pt`` files into ``folder/superseded_<UTC time>/``; return it, or None.

    Called when a run starts over (``--resume False``): left in place, the older run's
    checkpoints would be found by the next plain rerun, which would resume the older run.
    They are moved, not deleted (the warning names the folder), and files another process
    moved first are skipped.
    """
    found = [p for p in Path(folder).glob("*checkpoint_epoch=*.pt") if CHECKPOINT_PATTERN.search(p.name)]
    if not found:
        return None
    target = Path(folder) / time.strftime("superseded_%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(exist_ok=True)
    for path in found:
        try:
            path.replace(target / path.name)
        except FileNotFoundError:  # another rank of a multi-process run moved it
            continue
    logger.warning(
        "%s: starting over, so the earlier run's %d checkpoint(s) were moved to %s", folder, len(found), target
    )
    return target


def prune_checkpoints(folder: str | Path, keep: int, written: str | Path) -> list[Path]:
    """Delete older ``checkpoint_epoch=N.pt`` files in ``folder`` so that ``keep`` remain up to ``written``
    (the file just saved, always kept); return those deleted.

    ignite's ``n_saved`` only counts the files of the running process, so without this every
    kill and resume would leave one more checkpoint behind. Files of a higher epoch than
    ``written`` are left alone: not this run's to judge (a broken one is skipped on resume).
    """
    newest = int(CHECKPOINT_PATTERN.search(Path(written).name).group(1))
    older = sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("*checkpoint_epoch=*.pt")
        if (m := CHECKPOINT_PATTERN.search(p.name)) and int(m.group(1)) < newest
    )
    stale = [path for _, path in older[: max(0, len(older) - (keep - 1))]]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that never leaves a run without a complete checkpoint on disk.

    MONAI's ``CheckpointSaver`` writes with ``atomic=False`` (``torch.save`` straight onto the
    final name), and ignite's ``Checkpoint`` removes the file it replaces *before* writing the
    new one: a kill during the write leaves half a file and no older one. Here each file is
    written through :func:`bundle.atomic.atomic_path` (temporary name, then rename), and files
    ignite asks to remove are removed only after the next file is complete. A kill mid-write
    leaves the previous checkpoint and a hidden ``.<name>.*.tmp.pt`` file, which no loader
    picks and which may be deleted.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, keep: int | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename  # fixed name (MONAI's key-metric/final savers), or None
        self.keep = keep  # epoch checkpoints kept on disk across restarts (see prune_checkpoints), or None
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        path = self.dirname / (self.filename or filename)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        for name in self._superseded:
            if name != path.name:
                (self.dirname / name).unlink(missing_ok=True)
        self._superseded.clear()
        if self.keep is not None and CHECKPOINT_PATTERN.search(path.name):
            prune_checkpoints(self.dirname, self.keep, path)

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments and file names) whose files go through :class:`AtomicDiskSaver`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                keep = checkpoint.n_saved if checkpoint is self._interval_checkpoint else None
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename, keep)

    def state_dict(self) -> dict:
        """The best-score tracker (ignite's ``(priority, filename)`` list) of the key-metric file, for a training checkpoint.

        Saved with the training state (and restored by MONAI's ``load_state_dict``), so a
        resumed run replaces the best model only with a higher-scoring one.
        """
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class ConciseStatsHandler(StatsHandler):
    """MONAI's ``StatsHandler``, except that a user error (:data:`bundle.cli.USER_ERRORS`: a bad
    file, checkpoint or full disk) is logged as its one-line message, without the traceback;
    the error is raised on as before (and ``bundle.cli`` prints it as ``error: …``)."""

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if user_error(e) is None:
            super().exception_raised(engine, e)
        self.logger.error(f"Exception: {e}")
        raise e


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for ``epoch`` of process ``rank`` of a run seeded with ``seed`` (all >= 0).

    Mixed by ``numpy.random.SeedSequence``, so runs with neighbouring seeds do not share
    streams shifted by one epoch (as ``seed + epoch`` would).
    """
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


class EpochSeeder:
    """At every ``EPOCH_STARTED``, reseed the run from ``(seed, rank, epoch)`` alone.

    Seeds torch, numpy and ``random`` (``monai.utils.set_determinism``) and the random
    transforms of the engine's dataset (``monai.data.utils.set_rnd``, as MONAI's
    ``DataLoader`` does once at construction), so every epoch draws the same crops, flips
    and sampling order whether the run went straight through or was resumed from a
    checkpoint: a resumed run ends with the same weights on the CPU.

    The transforms seeded are those of the main process, which run them when
    ``num_workers`` is 0. Loader workers are seeded by MONAI's ``worker_init_fn`` from a base
    seed drawn from torch when the loader iterator is made: after this reseed, each epoch,
    unless ``persistent_workers`` keeps one set of workers (and their advancing state) for
    the whole run. Attach it before every other handler (first of ``train#handlers``).
    """

    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = int(seed), int(rank)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = epoch_seed(self.seed, engine.state.epoch, self.rank)
        set_determinism(seed=value)
        set_rnd(engine.state.dataloader.dataset, value)


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
    ``label_key`` map with :func:`bundle.metrics.nuclei_metrics` (and, with ``error_budget``,
    :func:`bundle.error_budget.error_budget`: the AJI after each correction from the ground
    truth); at the end one CSV row per image (named by its file) and the mean of each metric
    are written atomically, and the means are logged.
    """

    def __init__(
        self,
        output_dir: str | Path,
        pred_key: str = "instances",
        label_key: str = "label",
        image_key: str = "image",
        error_budget: bool = False,
    ):
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.error_budget = error_budget
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
            gt, pred = gt.astype(np.int64), pred.astype(np.int64)
            budget = error_budget(gt, pred) if self.error_budget else {}
            self.rows.append({"image": name, **nuclei_metrics(gt, pred), **budget})

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
        logger.info(
            "mean over %d images: %s", len(self.rows), ", ".join(f"{k} {v:.4f}" for k, v in self.summary().items())
        )
        print(f"metrics of {len(self.rows)} images written to {(self.output_dir / 'metrics.csv').resolve()}")
