"""The experiment grid: initialisation x label fraction x seed (x fold), each cell through the bundle configs.

Run by ``scripts/experiment.py`` (its docstring shows the commands). A cell = pretrain (once
per proxy, seed and fold, reused) -> fine-tune (train.json) -> evaluate (train.json +
evaluate.json), each a ``python -m monai.bundle run`` with the preset's overrides (see
:mod:`bundle.presets`). Finished steps are skipped on a rerun (their output files exist), so
an interrupted grid resumes where it stopped. Fine-tuning runs a fixed number of optimiser
steps whatever the label fraction (epochs are derived), so fractions differ only in data.
The steps read ``configs/`` and ``bundle/`` of this checkout when they start, and each cell
records the commit it ran on (``git describe --dirty``).
"""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bundle.atomic import atomic_path
from bundle.experiment_report import report
from bundle.presets import LABELS, PRESETS, PRETRAININGS
from bundle.runner import REPO_ROOT, bundle_run_command

#: How the cells choose their labelled tiles, recorded with a grid: a folder of cells chosen by
#: an earlier rule (every fold's and seed's subset from one order) is not mixed with new ones.
LABEL_SUBSETS = "drawn per seed from each fold's own order"


def _as_list(value, cast) -> list:
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    return [cast(item) for item in items]


def bundle_run(configs: list[str], log: Path, **overrides) -> None:
    """``python -m monai.bundle run`` with ``--key value`` overrides; output to ``log``; raise on failure."""
    command = bundle_run_command(configs, **overrides)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if result.returncode:
        raise RuntimeError(f"step failed (exit {result.returncode}); see {log}")


def prepared_dataset(data: Path, out: Path) -> Path:
    """``data`` if it is a prepared folder (has datalist.json), else prepare it into ``out/prepared``."""
    if (data / "datalist.json").is_file():
        return data
    prepared = out / "prepared"
    if not (prepared / "datalist.json").is_file():
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "prepare", str(data), str(prepared)], check=True
        )
    return prepared


def fold_datalists(prepared: Path, out: Path, folds: int, seed: int = 0) -> list[Path]:
    """K datalists over all labelled items (training + validation pooled): fold k validates on its share.

    Each fold's training list comes in its own seeded order (``default_rng([seed, fold])``):
    in the pooled order the folds' lists share most positions, so the label subsets drawn
    from them (:func:`bundle.datalist.label_fraction_subset`) would label the same tiles in
    several folds.
    """
    datalist = json.loads((prepared / "datalist.json").read_text())
    items = datalist["training"] + datalist["validation"]
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    paths = []
    for fold in range(folds):
        validation = [item for i, item in enumerate(order) if i % folds == fold]
        held_in = [item for i, item in enumerate(order) if i % folds != fold]
        training = [held_in[i] for i in np.random.default_rng([seed, fold]).permutation(len(held_in))]
        base = str(prepared.resolve())

        def absolute(rows: list[dict]) -> list[dict]:
            return [{k: f"{base}/{v}" if k in ("image", "label") else v for k, v in row.items()} for row in rows]

        path = out / "folds" / f"datalist_fold{fold}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"training": absolute(training), "validation": absolute(validation)}, indent=1))
        paths.append(path)
    return paths


def finetune_schedule(preset: dict) -> dict:
    """``max_epochs`` and ``val_interval`` that give the preset's number of optimiser steps.

    An epoch is ``epoch_steps`` batches whatever the number of labelled tiles
    (:class:`bundle.samplers.DistinctTileSampler`), so label fractions differ only in data.
    """
    epochs = max(1, math.ceil(preset["finetune_steps"] / preset["train"]["epoch_steps"]))
    return {"max_epochs": epochs, "val_interval": max(1, epochs // preset["validations"])}


def pretrained_encoder(init: str, seed: int, preset: dict, source: Path, out: Path, fold: int | None = None) -> Path:
    """Pretrain once per (init, seed, fold); return the encoder file (reused when it exists).

    ``source`` is the prepared folder, or in cross-validation the fold's datalist: pretraining
    reads its training (and unlabelled) tiles only, so a fold's held-out tiles are never seen.
    """
    root = out / "pretrain" / (f"{init}_s{seed}" + (f"_fold{fold}" if fold is not None else ""))
    encoder = root / "models" / "pretrained_encoder.pt"
    if not encoder.is_file():
        extra_configs, overrides = PRETRAININGS[init]
        start = time.time()
        bundle_run(
            ["pretrain.json", *extra_configs],
            root / "log.txt",
            bundle_root=str(root),
            dataset_dir=str(source),
            seed=seed,
            **preset["common"],
            **preset["pretrain"],
            **overrides,
        )
        (root / "timing.json").write_text(json.dumps({"seconds": time.time() - start}))
    return encoder


def source_version() -> str:
    """``git describe --always --dirty`` of this checkout (``unknown`` outside git): what a step runs."""
    result = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO_ROOT)
    return result.stdout.strip() or "unknown"


def run_cell(
    init: str,
    fraction: float,
    seed: int,
    preset: dict,
    dataset_dir: Path,
    datalist: Path,
    out: Path,
    cell_name: str,
    imagenet_weights: str | None,
    fold: int | None = None,
) -> dict:
    """Fine-tune and evaluate one cell (skipped when its summary exists); return the summary.

    ``fold`` is the cross-validation fold whose ``datalist`` this is (None: the prepared split).
    """
    root = out / "cells" / cell_name
    summary_path = root / "eval" / "metrics_summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    start, version = time.time(), source_version()
    init_args = (
        {"init": "scratch"}
        if init == "scratch"
        else (
            {"init": "imagenet", "init_weights": imagenet_weights}
            if init == "imagenet"
            else {
                "init": "ssl",
                "init_weights": str(
                    pretrained_encoder(init, seed, preset, dataset_dir if fold is None else datalist, out, fold)
                ),
            }
        )
    )
    pretrain_seconds = time.time() - start
    common = {
        "bundle_root": str(root),
        "dataset_dir": str(dataset_dir),
        "datalist_path": str(datalist),
        "seed": seed,
        **preset["common"],
        **preset["evaluation"],
    }
    bundle_run(
        ["train.json"],
        root / "train_log.txt",
        **common,
        **preset["train"],
        **finetune_schedule(preset),
        label_fraction=fraction,
        label_subset_seed=seed,
        resume=True,
        **init_args,
    )
    bundle_run(["train.json", "evaluate.json"], root / "eval_log.txt", **common)
    (root / "timing.json").write_text(
        json.dumps({"seconds": time.time() - start - pretrain_seconds, "commit": version})
    )
    return json.loads(summary_path.read_text())


def chosen_folds(folds: int, only_folds=None) -> list[int]:
    """The folds a run goes through: every fold of a ``folds``-fold split, or those in ``only_folds``.

    ``only_folds`` is a comma-separated string, a sequence or one int; without a K-fold split
    (``folds`` 0) the run has one "fold", the prepared split, and ``only_folds`` is refused.
    """
    if only_folds is None or only_folds == "":
        return list(range(max(folds, 1)))
    if not folds:
        raise SystemExit("--only_folds needs --folds K (a K-fold split to choose from)")
    chosen = sorted(set(_as_list(only_folds, int)))
    outside = [fold for fold in chosen if not 0 <= fold < folds]
    if outside:
        raise SystemExit(f"--only_folds {outside}: the {folds}-fold split has folds 0 to {folds - 1}")
    return chosen


def keep_settings(out_dir: Path, settings: dict) -> None:
    """Record the settings of the grid in ``out_dir/settings.json``; refuse others in the same folder.

    Finished steps are reused by name, so a folder must hold one preset, schedule, dataset
    and fold count: a run with other settings would mix its cells with the earlier ones.
    """
    path = out_dir / "settings.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = sorted(key for key in recorded.keys() | settings.keys() if recorded.get(key) != settings.get(key))
        if changed:
            raise SystemExit(
                f"{path}: this folder holds a grid run with other settings (differing: {', '.join(changed)}); "
                "choose another --out, or delete the folder to start over"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))


def run(
    preset: str = "cpu",
    data: str = "../shared/data/monuseg/train",
    out: str | None = None,
    inits="scratch,ssl,ssl_lst,ssl_lcr",
    fractions="1.0,0.1",
    seeds="0,1",
    folds: int = 0,
    only_folds=None,
    imagenet_weights: str | None = None,
    report_to: str = "docs/results",
    name: str | None = None,
    finetune_steps: int | None = None,
    pretrain_epochs: int | None = None,
    pretrain_overrides: dict | None = None,
    train_overrides: dict | None = None,
) -> None:
    """Run (or resume) the grid, then write the report.

    ``only_folds`` (e.g. ``0,1``) runs just those folds of the ``folds``-fold split, so a
    grid can be measured fold by fold in short sessions and resumed with the others later.
    The four last options change a preset: fine-tuning steps, pretraining epochs, any other
    pretrain.json values (e.g. ``--pretrain_overrides '{"negative_sizes": [112, 96]}'``) and
    train.json values (e.g. ``--train_overrides '{"encoder_lr_scale": 0.1}'``).
    """
    started = time.time()
    fold_ids = chosen_folds(folds, only_folds)
    spec = PRESETS[preset]
    if finetune_steps:
        spec = {**spec, "finetune_steps": finetune_steps}
    if pretrain_epochs or pretrain_overrides:
        extra = {**(pretrain_overrides or {}), **({"max_epochs": pretrain_epochs} if pretrain_epochs else {})}
        spec = {**spec, "pretrain": {**spec["pretrain"], **extra}}
    if train_overrides:
        spec = {**spec, "train": {**spec["train"], **train_overrides}}
    out_dir = (REPO_ROOT / (out or f"experiments/{preset}")).resolve()
    init_list = _as_list(inits, str) + (["imagenet"] if imagenet_weights and "imagenet" not in str(inits) else [])
    unknown = [i for i in init_list if i not in LABELS]
    if unknown:
        raise SystemExit(f"unknown initialisations {unknown}; choose from {sorted(LABELS)}")
    keep_settings(
        out_dir,
        {
            "preset": preset,
            "schedule": spec,
            "data": str(Path(data).resolve()),
            "folds": folds,
            "label_subsets": LABEL_SUBSETS,
        },
    )
    dataset_dir = prepared_dataset(Path(data).resolve(), out_dir)
    datalists = fold_datalists(dataset_dir, out_dir, folds) if folds else [dataset_dir / "datalist.json"]
    grid = [
        (s, fold, f, i)
        for s in _as_list(seeds, int)
        for fold in fold_ids
        for f in _as_list(fractions, float)
        for i in init_list
    ]
    wall = out_dir / "wall.json"
    earlier = json.loads(wall.read_text())["seconds"] if wall.is_file() else 0.0
    for number, (seed, fold, fraction, init) in enumerate(grid, 1):
        cell_name = f"{init}_f{round(fraction * 100)}_s{seed}" + (f"_fold{fold}" if folds else "")
        print(f"[{number}/{len(grid)}] {cell_name}", flush=True)
        summary = run_cell(
            init,
            fraction,
            seed,
            spec,
            dataset_dir,
            datalists[fold],
            out_dir,
            cell_name,
            imagenet_weights,
            fold if folds else None,
        )
        print(f"    AJI {summary['aji']:.4f} Dice {summary['dice']:.4f}", flush=True)
        # after every cell, so that a grid stopped part-way still reports its command and time
        with atomic_path(wall) as tmp:
            tmp.write_text(json.dumps({"seconds": earlier + time.time() - started, "command": " ".join(sys.argv)}))
    report(preset, out, report_to, name)
