"""Tiny pretraining and fine-tuning runs through ``python -m monai.bundle run`` subprocesses,
and what the reliability and determinism tests compare: StatsHandler lines, checkpoints."""

import os
import re
import subprocess
import zipfile
from pathlib import Path

import torch
from bundle.presets import preset_overrides
from bundle.runner import bundle_run_command
from bundle_runner import single_thread_env

TESTS_DIR = Path(__file__).resolve().parent
# The tiny preset (configs/presets/tiny.json), run long enough to kill and resume: 2
# iterations per pretraining epoch (4 triplets, batches of 2); fine-tuning epochs over the 4
# training tiles (train.json's own epoch_steps, not the preset's 1), 2 iterations each.
PRETRAIN = {**preset_overrides("tiny", "pretrain"), "max_epochs": 6, "checkpoint_interval": 1, "log_every": 1}
FINETUNE = {
    **{key: value for key, value in preset_overrides("tiny", "train").items() if key != "epoch_steps"},
    "init": "scratch",
    "max_epochs": 4,
    "val_interval": 2,
    "checkpoint_interval": 1,
    "log_every": 1,
}
STATS_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- (.*?)\s*$", re.MULTILINE)
RUN_TIMEOUT_S = 300


class Workflow:
    """One bundle workflow (configs + tiny overrides) run in ``root`` through subprocesses."""

    def __init__(self, configs: list[str], ckpt_subdir: str, root: Path, **overrides):
        self.configs, self.root = configs, root
        self.ckpt_dir = root / "models" / ckpt_subdir
        self.overrides = {"bundle_root": str(root), **overrides}
        self.runs = 0

    def command(self, extra_configs: tuple[str, ...] = ()) -> list[str]:
        return bundle_run_command([*self.configs, *extra_configs], **self.overrides)

    def start(self, extra_configs: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
        """Start a run in the background; its stdout and stderr go to ``root/run<N>.log``."""
        self.runs += 1
        log_path = self.root / f"run{self.runs}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                self.command(extra_configs), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=self.env()
            )
        return process, log_path

    @staticmethod
    def env() -> dict[str, str]:
        """One OpenMP thread (see bundle_runner), and tests/ importable for tests/kill_hook.py."""
        env = single_thread_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
        return env

    def run(self, extra_configs: tuple[str, ...] = ()) -> tuple[int, str]:
        """Run to the end; return (exit status, log)."""
        process, log_path = self.start(extra_configs)
        return process.wait(timeout=RUN_TIMEOUT_S), log_path.read_text()

    def final_checkpoint(self) -> dict:
        return torch.load(self.ckpt_dir / f"checkpoint_epoch={self.overrides['max_epochs']}.pt", weights_only=True)


def complete_epochs(folder: Path) -> list[int]:
    """Epochs of the ``checkpoint_epoch=N.pt`` files in ``folder`` that are whole zip archives."""
    return sorted(int(p.stem.split("=")[1]) for p in folder.glob("checkpoint_epoch=*.pt") if zipfile.is_zipfile(p))


def stats_lines(log: str) -> dict[tuple[int, int], str]:
    """``{(epoch, iteration): "loss: ... "}`` from the StatsHandler lines of a log."""
    return {(int(epoch), int(iteration)): values for epoch, iteration, values in STATS_LINE.findall(log)}


def assert_same_state(a, b, where: str = "checkpoint") -> None:
    """Nested dicts/lists of tensors and numbers are exactly equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def pretrain_workflow(root: Path, synthetic_dir: Path) -> Workflow:
    return Workflow(["pretrain.json"], "pretrain", root, dataset_dir=str(synthetic_dir), **PRETRAIN)


def finetune_workflow(root: Path, prepared: Path) -> Workflow:
    return Workflow(["train.json"], "train", root, dataset_dir=str(prepared), **FINETUNE)
