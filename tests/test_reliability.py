"""Kill and resume: a SIGKILLed pretraining or fine-tuning run, rerun with the same command,
resumes from its last complete checkpoint and ends with exactly the weights of a run that
was never interrupted (CPU, fixed seed, ``num_workers`` 0; see docs/reliability.md).

Kill points: an external SIGKILL as soon as the first checkpoint file appears (timing
depends on the machine, but the kill always lands before the run ends), and two exact
points made by ``tests/kill_hook.py``: half-way through writing a checkpoint, and right
after a checkpoint was written. Also: a corrupt newest checkpoint is skipped with a warning.
"""

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from workflow_runs import (
    FINETUNE,
    PRETRAIN,
    RUN_TIMEOUT_S,
    Workflow,
    assert_same_state,
    complete_epochs,
    finetune_workflow,
    pretrain_workflow,
    stats_lines,
)


def hook_config(root: Path, hook: str) -> str:
    """An extra config whose ``run`` calls ``kill_hook.<hook>`` after attaching the checkpoint handlers; returns its path.

    (The import is an ``$import`` item, which the bundle parser evaluates before all other
    items, so tests/ reaches ``sys.path`` through PYTHONPATH, see :meth:`Workflow.start`.)
    """
    path = root / "kill_hook.json"
    path.write_text(
        json.dumps(
            {
                "run": [
                    "$import kill_hook",
                    "$[handler.attach(@train#trainer) for handler in @train#state_handlers]",
                    f"$kill_hook.{hook}",
                    "$@train#trainer.run()",
                ]
            }
        )
    )
    return str(path)


def kill_when_a_checkpoint_appears(workflow: Workflow) -> int:
    """Start a run, SIGKILL it once ``checkpoint_epoch=N.pt`` exists; return the run's exit status."""
    process, _ = workflow.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if workflow.ckpt_dir.is_dir() and any(
            p.name.startswith("checkpoint_epoch=") for p in workflow.ckpt_dir.iterdir()
        ):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return process.wait(timeout=RUN_TIMEOUT_S)


def assert_resumed_like_reference(workflow: Workflow, reference: tuple[Workflow, str], resumed_from: int) -> None:
    """Rerun with the same command: resumes from ``resumed_from``, finishes, matches the reference exactly."""
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert f"Restored all variables from {workflow.ckpt_dir / f'checkpoint_epoch={resumed_from}.pt'}" in log
    trainer_epoch = (
        "SupervisedTrainer - INFO - Epoch[{}] Complete"  # evaluators (validation, thresholds) log epochs too
    )
    assert trainer_epoch.format(resumed_from) not in log and trainer_epoch.format(resumed_from + 1) in log
    reference_workflow, reference_log = reference
    resumed_lines = stats_lines(log)
    assert resumed_lines and all(epoch > resumed_from for epoch, _ in resumed_lines)
    assert resumed_lines == {key: value for key, value in stats_lines(reference_log).items() if key[0] > resumed_from}
    assert_same_state(reference_workflow.final_checkpoint(), workflow.final_checkpoint())
    kept = list(workflow.ckpt_dir.glob("checkpoint_epoch=*.pt"))
    assert len(kept) == 1, f"n_saved is 1 across restarts, found {sorted(p.name for p in kept)}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_dir) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "prepare", str(synthetic_dir), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def pretrain_reference(tmp_path_factory, synthetic_dir) -> tuple[Workflow, str]:
    """An uninterrupted tiny pretraining run and its log."""
    workflow = pretrain_workflow(tmp_path_factory.mktemp("pretrain_reference"), synthetic_dir)
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    return workflow, log


@pytest.fixture(scope="module")
def finetune_reference(tmp_path_factory, prepared) -> tuple[Workflow, str]:
    """An uninterrupted tiny fine-tuning run (validation every 2 epochs) and its log."""
    workflow = finetune_workflow(tmp_path_factory.mktemp("finetune_reference"), prepared)
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    return workflow, log


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.slow
def test_pretraining_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    tmp_path, synthetic_dir, pretrain_reference
):
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    assert kill_when_a_checkpoint_appears(workflow) == -signal.SIGKILL
    epochs = complete_epochs(workflow.ckpt_dir)
    assert epochs and epochs[-1] < PRETRAIN["max_epochs"], f"the kill came too late: {epochs}"
    assert_resumed_like_reference(workflow, pretrain_reference, resumed_from=epochs[-1])


@pytest.mark.slow
def test_pretraining_killed_mid_checkpoint_write_resumes_from_the_previous_one(
    tmp_path, synthetic_dir, pretrain_reference
):
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    status, log = workflow.run((hook_config(tmp_path, "kill_mid_save(epoch=3)"),))
    assert status == -signal.SIGKILL, log[-3000:]
    # the half-written file kept its temporary name; epoch 2 was not removed before 3 was complete
    assert complete_epochs(workflow.ckpt_dir) == [2]
    assert not (workflow.ckpt_dir / "checkpoint_epoch=3.pt").exists()
    assert len(list(workflow.ckpt_dir.glob(".checkpoint_epoch=3.*.tmp.pt"))) == 1
    assert_resumed_like_reference(workflow, pretrain_reference, resumed_from=2)


@pytest.mark.slow
def test_pretraining_killed_just_after_a_checkpoint_resumes_from_it(tmp_path, synthetic_dir, pretrain_reference):
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    status, log = workflow.run((hook_config(tmp_path, "kill_after_epoch(@train#trainer, epoch=3)"),))
    assert status == -signal.SIGKILL, log[-3000:]
    assert complete_epochs(workflow.ckpt_dir) == [3]
    assert_resumed_like_reference(workflow, pretrain_reference, resumed_from=3)


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, synthetic_dir):
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    workflow.overrides["max_epochs"] = 1
    assert workflow.run()[0] == 0
    (workflow.ckpt_dir / "checkpoint_epoch=9.pt").write_bytes(
        torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()
    )
    workflow.overrides["max_epochs"] = 2
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert f"{workflow.ckpt_dir / 'checkpoint_epoch=9.pt'}: not a complete checkpoint" in log
    assert f"Restored all variables from {workflow.ckpt_dir / 'checkpoint_epoch=1.pt'}" in log
    assert "Epoch[2] Complete" in log and complete_epochs(workflow.ckpt_dir) == [2]  # n_saved 1, across the restart
    assert (
        workflow.ckpt_dir / "checkpoint_epoch=9.pt"
    ).is_file()  # not this run's: left for the user, skipped on resume


# ----------------------------------------------------------------------------- fine-tuning


def test_finetuning_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    tmp_path, prepared, finetune_reference
):
    workflow = finetune_workflow(tmp_path, prepared)
    assert kill_when_a_checkpoint_appears(workflow) == -signal.SIGKILL
    epochs = complete_epochs(workflow.ckpt_dir)
    assert epochs and epochs[-1] < FINETUNE["max_epochs"], f"the kill came too late: {epochs}"
    assert_resumed_like_reference(workflow, finetune_reference, resumed_from=epochs[-1])


@pytest.mark.slow
def test_finetuning_killed_mid_checkpoint_write_resumes_from_the_previous_one(tmp_path, prepared, finetune_reference):
    workflow = finetune_workflow(tmp_path, prepared)
    status, log = workflow.run((hook_config(tmp_path, "kill_mid_save(epoch=2)"),))
    assert status == -signal.SIGKILL, log[-3000:]
    assert complete_epochs(workflow.ckpt_dir) == [1]
    # the best model of the epoch-2 validation was written whole before the kill, atomically
    assert zipfile.is_zipfile(tmp_path / "models" / "model.pt")
    assert_resumed_like_reference(workflow, finetune_reference, resumed_from=1)


@pytest.mark.slow
def test_finetuning_resume_keeps_the_best_model_of_the_earlier_run(tmp_path, prepared):
    """The training checkpoint stores the best-model tracker; a resumed run reloads it, so its
    first validation replaces ``models/model.pt`` only when it scores higher than the earlier best."""
    workflow = finetune_workflow(tmp_path, prepared)
    workflow.overrides["max_epochs"] = 2
    assert workflow.run()[0] == 0
    checkpoint_path = workflow.ckpt_dir / "checkpoint_epoch=2.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    ((score, name),) = checkpoint["best_model"]["_saved"]  # ignite's (priority, name) of the epoch-2 validation
    assert 0.0 <= score <= 1.0
    checkpoint["best_model"]["_saved"] = [(2.0, name)]  # a score no validation can beat (AJI <= 1)
    torch.save(checkpoint, checkpoint_path)
    best_path = tmp_path / "models" / "model.pt"
    written = best_path.read_bytes()

    workflow.overrides["max_epochs"] = 4
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert f"Restored all variables from {checkpoint_path}" in log and "Epoch[4] Complete" in log
    assert best_path.read_bytes() == written, "the resumed run replaced a better best model"


# ----------------------------------------------------------------------------- loader workers


@pytest.mark.slow
def test_pretraining_with_two_fresh_workers_per_epoch_resumes_exactly(tmp_path, synthetic_dir):
    """With ``persistent_workers`` off, workers are re-created and re-seeded every epoch from
    the torch state EpochSeeder sets, so a resume is exact with workers too (4 epochs, killed after 2)."""
    workers = {"num_workers": 2, "train#dataloader#persistent_workers": False, "max_epochs": 4}
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = pretrain_workflow(tmp_path / "straight", synthetic_dir)
    straight.overrides.update(workers)
    status, straight_log = straight.run()
    assert status == 0, straight_log[-3000:]
    resumed = pretrain_workflow(tmp_path / "resumed", synthetic_dir)
    resumed.overrides.update(workers)
    status, log = resumed.run((hook_config(tmp_path / "resumed", "kill_after_epoch(@train#trainer, epoch=2)"),))
    assert status == -signal.SIGKILL, log[-3000:]
    assert_resumed_like_reference(resumed, (straight, straight_log), resumed_from=2)


@pytest.mark.slow
def test_resume_false_starts_over(tmp_path, synthetic_dir):
    """``--resume False`` (fire's spelling; ``false`` would be a truthy string) ignores the checkpoints."""
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    workflow.overrides["max_epochs"] = 1
    assert workflow.run()[0] == 0
    workflow.overrides["resume"] = False
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert "Restored all variables" not in log and "Epoch[1] Complete" in log


def test_a_fresh_start_sets_the_earlier_runs_checkpoints_aside(tmp_path, synthetic_dir):
    """After ``--resume False``, a plain rerun resumes the fresh run, not the older one it replaced."""
    workflow = pretrain_workflow(tmp_path, synthetic_dir)
    workflow.overrides.update(max_epochs=2, checkpoint_interval=1)
    assert workflow.run()[0] == 0
    assert (workflow.ckpt_dir / "checkpoint_epoch=2.pt").is_file()
    workflow.overrides.update(resume=False, max_epochs=1)
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert "starting over, so the earlier run's 1 checkpoint(s) were moved to" in log
    assert sorted(p.name for p in workflow.ckpt_dir.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    assert [p.name for p in workflow.ckpt_dir.glob("superseded_*/*")] == ["checkpoint_epoch=2.pt"]
    workflow.overrides.update(resume=True, max_epochs=2)
    status, log = workflow.run()
    assert status == 0, log[-3000:]
    assert f"Restored all variables from {workflow.ckpt_dir / 'checkpoint_epoch=1.pt'}" in log
    assert "SupervisedTrainer - INFO - Epoch[2] Complete" in log
