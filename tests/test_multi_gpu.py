"""The multi-GPU partial configs on 2 CPU processes (torchrun, gloo): same weights on both ranks, rank 0 writes."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

TINY = {"backbone": "resnet10", "crop_size": 64, "num_workers": 0, "max_epochs": 1}
# Test-only finalize: every rank saves its parameters, then the process group is destroyed.
# (BatchNorm running statistics are buffers: each rank updates them from its own last batch
# and DDP re-broadcasts rank 0's at every forward; checkpoints hold rank 0's.)
SAVE_RANK_WEIGHTS = {
    "finalize": [
        "$torch.save({k: p.detach() for k, p in @network_def.named_parameters()}, "
        "@bundle_root + '/rank' + str(dist.get_rank()) + '.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ]
}


def torchrun(tmp_path, configs, extra_config=None, **overrides):
    extra = tmp_path / "save_rank_weights.json"
    extra.write_text(json.dumps({**SAVE_RANK_WEIGHTS, **(extra_config or {})}))
    files = [str(REPO_ROOT / "configs" / c) for c in configs] + [str(extra)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps(files),
    ]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def assert_one_writer_process(log_dir):
    """Every TensorBoard event file comes from one process (names end in .<pid>.<n>)."""
    files = list(log_dir.glob("events.out.tfevents.*"))
    assert files and len({path.name.split(".")[-2] for path in files}) == 1


def assert_same_weights_on_both_ranks(root):
    rank0, rank1 = (torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """10 small synthetic tiles: 2 validation tiles, one per rank."""
    from bundle.synthetic import synthesize_dataset

    tiles, out = tmp_path_factory.mktemp("tiles"), tmp_path_factory.mktemp("prepared")
    synthesize_dataset(tiles, n_tiles=10, shape=(128, 128), seed=1)
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "prepare", str(tiles), str(out)], check=True
    )
    return out


def test_pretrain_on_two_processes(tmp_path, synthetic_dir):
    result = torchrun(
        tmp_path,
        ["pretrain.json", "multi_gpu_pretrain.json"],
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_dir),
        max_shift=16,
        negative_sizes=[48, 32],
        batch_size=1,
        triplets_per_epoch=4,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_weights_on_both_ranks(tmp_path)
    assert result.stdout.count("pretrained encoder written to") == 1  # rank 0 only
    assert list((tmp_path / "models" / "pretrain").glob("checkpoint_epoch=*.pt"))
    assert_one_writer_process(tmp_path / "runs" / "pretrain")


def handlers_with_one_inserted_first(section: str) -> dict:
    """``train.json``'s ``<section>#handlers`` with an all-rank handler inserted in front (rank-0 ones move)."""
    handlers = json.loads((REPO_ROOT / "configs" / "train.json").read_text())[section]["handlers"]
    silent = {"_target_": "StatsHandler", "iteration_log": False, "epoch_log": False}
    return {f"{section}#handlers": [silent, *handlers]}


def test_train_on_two_processes(tmp_path, prepared):
    # the multi-GPU file must not depend on where handlers sit in train.json's lists
    inserted = {**handlers_with_one_inserted_first("train"), **handlers_with_one_inserted_first("validate")}
    result = torchrun(
        tmp_path,
        ["train.json", "multi_gpu_train.json"],
        extra_config=inserted,
        bundle_root=str(tmp_path),
        dataset_dir=str(prepared),
        init="scratch",
        batch_size=1,
        crops_per_tile=1,
        val_interval=1,
        **TINY,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_weights_on_both_ranks(tmp_path)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert_one_writer_process(tmp_path / "runs" / "train")
    assert "val_mean_aji" in result.stdout + result.stderr
