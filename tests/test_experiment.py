"""The experiment runner on a tiny grid: table shape, plot, and resume without rerunning cells."""

import csv
import json
import re
import subprocess
import sys

import pytest
from bundle.datalist import label_fraction_subset
from bundle.experiment_report import schedule_changes
from bundle.experiments import chosen_folds, fold_datalists, keep_settings
from bundle.presets import PRESETS
from conftest import REPO_ROOT

RUNNER = [sys.executable, str(REPO_ROOT / "scripts" / "experiment.py")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, synthetic_dir):
    out, docs = tmp_path_factory.mktemp("experiment"), tmp_path_factory.mktemp("docs")
    args = [
        "run",
        "--preset",
        "tiny",
        "--data",
        str(synthetic_dir),
        "--out",
        str(out),
        "--inits",
        "scratch,ssl",
        "--fractions",
        "1.0",
        "--seeds",
        "0",
        "--report_to",
        str(docs),
    ]
    first = subprocess.run(RUNNER + args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    return out, docs, args


def test_grid_writes_tables_and_plot(grid):
    out, docs, _ = grid
    report = (docs / "tiny.md").read_text()
    table = report.split("## Table 1 ")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "initialisation" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["Scratch", "SSL (L_ST + L_CR)"]
    assert all(len(row.split("|")) == 4 for row in rows)  # one label-fraction column
    budget = report.split("## Table 5 ")[1].split("## Table 4 ")[0]
    budget_rows = [line for line in budget.splitlines() if line.startswith("| ") and "initialisation" not in line]
    assert [row.split("|")[1].strip() for row in budget_rows] == ["Scratch", "SSL (L_ST + L_CR)"]
    assert all(len(row.split("|")) == 10 and len(re.findall(r"\([+-]\d", row)) == 4 for row in budget_rows)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    assert f"Commit(s) the cells ran on: `{commit}`;" in report
    pretraining = report.split("## Pretraining")[1].split("##")[0]
    header, _, row = [line for line in pretraining.splitlines() if line.startswith("|")]
    assert header.startswith("| pretraining | seed | minutes | l_cr | l_st | loss | rank_acc | triplet_acc |")
    assert row.startswith("| SSL (L_ST + L_CR) | 0 | ") and len(row.split("|")) == len(header.split("|"))
    assert (docs / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "pretrain" / "ssl_s0" / "models" / "pretrained_encoder.pt").is_file()
    # the cell's labelled tiles are drawn with its seed
    assert "training items (seed 0)" in (out / "cells" / "scratch_f100_s0" / "train_log.txt").read_text()


def test_rerun_skips_finished_cells(grid):
    out, _, args = grid
    logs = sorted(out.rglob("*log*.txt"))
    before = {path: path.stat().st_mtime_ns for path in logs}
    again = subprocess.run(RUNNER + args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in logs} == before


def test_a_grid_stopped_part_way_keeps_its_command_and_time(tmp_path, synthetic_dir):
    # the second cell fails (no ImageNet weights file): the first cell's time and the command stay
    args = ["run", "--preset", "tiny", "--data", str(synthetic_dir), "--out", str(tmp_path / "out")]
    args += ["--inits", "scratch", "--imagenet_weights", str(tmp_path / "missing.pt"), "--fractions", "1.0"]
    args += ["--seeds", "0", "--report_to", str(tmp_path / "docs")]
    result = subprocess.run(RUNNER + args, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0 and "[2/2] imagenet_f100_s0" in result.stdout
    wall = json.loads((tmp_path / "out" / "wall.json").read_text())
    assert wall["command"].endswith(" ".join(args)) and wall["seconds"] > 0
    assert (tmp_path / "out" / "cells" / "scratch_f100_s0" / "eval" / "metrics_summary.json").is_file()


def test_unknown_initialisation_is_refused(tmp_path, synthetic_dir):
    result = subprocess.run(
        RUNNER + ["run", "--preset", "tiny", "--data", str(synthetic_dir), "--out", str(tmp_path), "--inits", "magic"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "unknown initialisations ['magic']" in result.stderr


def test_other_settings_in_the_same_folder_are_refused(grid):
    out, _, args = grid
    result = subprocess.run(RUNNER + args + ["--finetune_steps", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (
        f"{out / 'settings.json'}: this folder holds a grid run with other settings (differing: schedule)"
        in result.stderr
    )


def test_report_names_what_a_grid_changed_from_its_preset(tmp_path):
    schedule = json.loads(json.dumps(PRESETS["cpu"]))
    assert schedule_changes("cpu", tmp_path) == ""  # no settings.json: the preset itself
    schedule["pretrain"]["negative_sizes"] = [112, 96]
    schedule["finetune_steps"] = 600
    keep_settings(tmp_path, {"preset": "cpu", "schedule": schedule, "data": "d", "folds": 0})
    assert schedule_changes("cpu", tmp_path) == "pretrain.negative_sizes = [112, 96]; finetune_steps = 600"


def test_folds_and_seeds_label_different_tiles_at_ten_percent(tmp_path):
    stems = [f"tile{i:02d}" for i in range(30)]
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rows = [{"image": f"images/{s}.tif", "label": f"labels/{s}.tif"} for s in stems]
    (prepared / "datalist.json").write_text(json.dumps({"training": rows[:24], "validation": rows[24:]}))
    folds = [json.loads(path.read_text()) for path in fold_datalists(prepared, tmp_path, 5)]
    held_out = [item["image"] for fold in folds for item in fold["validation"]]
    assert sorted(held_out) == sorted(f"{prepared.resolve()}/{row['image']}" for row in rows)
    subsets = {
        (fold, seed): frozenset(item["image"] for item in label_fraction_subset(datalist["training"], 0.1, seed=seed))
        for fold, datalist in enumerate(folds)
        for seed in range(3)
    }
    assert all(len(subset) == 2 for subset in subsets.values())
    # the pooled order alone gave folds 2, 3 and 4 the same two labelled tiles
    assert len(set(subsets.values())) == len(subsets)
    assert len(frozenset().union(*subsets.values())) >= 20


def test_tail_means_average_the_last_quarter_of_each_series():
    from bundle.scalars import tail_means

    series = {"loss": [(step, float(step)) for step in range(8)], "acc": [(0, 0.5)]}
    assert tail_means(series) == {"loss": 6.5, "acc": 0.5}  # steps 6 and 7; a single point is its own tail


def test_report_under_another_name_keeps_the_hand_written_reading(grid, tmp_path):
    out, _, _ = grid
    (tmp_path / "variant_reading.md").write_text("## Reading\n- written by hand\n")
    result = subprocess.run(
        RUNNER + ["report", "--preset", "tiny", "--out", str(out), "--report_to", str(tmp_path), "--name", "variant"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "variant.md",
        "variant.png",
        "variant_reading.md",
        "variant_tiles.csv",
    ]
    report = (tmp_path / "variant.md").read_text()
    assert report.startswith("# Experiment results: `tiny` preset (variant)")
    assert report.rstrip().endswith("## Reading\n- written by hand")


def test_report_lists_every_cell_with_its_thresholds_and_worst_tile(grid):
    out, docs, _ = grid
    report = (docs / "tiny.md").read_text()
    table = report.split("## Table 4 ")[1].split("\n\n")[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == ["Scratch", "SSL (L_ST + L_CR)"]
    for row, cell in zip(rows, ["scratch_f100_s0", "ssl_f100_s0"]):
        stored = json.loads((out / "cells" / cell / "models" / "model.postprocess.json").read_text())
        per_tile = (out / "cells" / cell / "eval" / "metrics.csv").read_text().splitlines()[1:]
        worst = min(per_tile, key=lambda line: float(line.split(",")[1]))
        assert row[7].strip() == f"{stored['body_threshold']}/{stored['foreground_threshold']}"
        assert row[6].strip() == f"{100 * stored['chosen_by']['score_of_defaults']:.2f}"
        assert row[8].strip().startswith(worst.split(",")[0] + " (")
    assert "Worst validation tile over all cells: " in report
    tiles = list(csv.DictReader(open(docs / "tiny_tiles.csv")))
    assert {row["cell"] for row in tiles} == {"scratch_f100_s0", "ssl_f100_s0"}
    assert len(tiles) == sum(
        len((out / "cells" / cell / "eval" / "metrics.csv").read_text().splitlines()) - 1
        for cell in ("scratch_f100_s0", "ssl_f100_s0")
    )


@pytest.mark.slow
def test_cross_validation_pretrains_each_fold_on_its_own_training_tiles(tmp_path, synthetic_dir):
    args = [
        "run",
        "--preset",
        "tiny",
        "--data",
        str(synthetic_dir),
        "--out",
        str(tmp_path),
        "--inits",
        "ssl",
        "--fractions",
        "1.0",
        "--seeds",
        "0",
        "--folds",
        "2",
        "--report_to",
        str(tmp_path / "docs"),
    ]
    result = subprocess.run(RUNNER + args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for fold in (0, 1):
        datalist = json.loads((tmp_path / "folds" / f"datalist_fold{fold}.json").read_text())
        log = (tmp_path / "pretrain" / f"ssl_s0_fold{fold}" / "log.txt").read_text()
        # the pretraining datalist is the fold's: its training tiles, never its held-out ones
        assert f"datalist_fold{fold}.json" in log
        assert (tmp_path / "pretrain" / f"ssl_s0_fold{fold}" / "models" / "pretrained_encoder.pt").is_file()
        train_log = (tmp_path / "cells" / f"ssl_f100_s0_fold{fold}" / "train_log.txt").read_text()
        assert f"ssl_s0_fold{fold}/models/pretrained_encoder.pt" in train_log
        assert len(datalist["validation"]) >= 1
    assert "| SSL (L_ST + L_CR) | 0, fold 1 |" in (tmp_path / "docs" / "tiny.md").read_text()


def test_only_folds_chooses_folds_of_the_split():
    assert chosen_folds(5) == [0, 1, 2, 3, 4] and chosen_folds(0) == [0]
    assert chosen_folds(5, "3,1,1") == [1, 3] and chosen_folds(5, 2) == [2] and chosen_folds(5, (4, 0)) == [0, 4]
    with pytest.raises(SystemExit, match="folds 0 to 4"):
        chosen_folds(5, "5")
    with pytest.raises(SystemExit, match="needs --folds"):
        chosen_folds(0, "0")


def test_only_folds_runs_just_those_folds(tmp_path, synthetic_dir):
    args = ["run", "--preset", "tiny", "--data", str(synthetic_dir), "--out", str(tmp_path), "--inits", "scratch"]
    args += ["--fractions", "1.0", "--seeds", "0", "--folds", "3", "--only_folds", "1"]
    args += ["--report_to", str(tmp_path / "docs")]
    result = subprocess.run(RUNNER + args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "[1/1] scratch_f100_s0_fold1" in result.stdout
    assert sorted(path.name for path in (tmp_path / "cells").iterdir()) == ["scratch_f100_s0_fold1"]
