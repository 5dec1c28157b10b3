"""Experiment runner: initialisation x label fraction x seed, each cell through the bundle configs.

    python scripts/experiment.py run --preset cpu --data ../shared/data/monuseg/train
    python scripts/experiment.py run --preset cpu --data DIR --inits scratch,ssl --fractions 1.0,0.1 --seeds 0,1
    python scripts/experiment.py run --preset cpu --data DIR --folds 5          # K-fold cross-validation
    python scripts/experiment.py report --preset cpu                            # tables + plot only
    python scripts/experiment.py run --preset cpu --out experiments/cpu_hardneg --inits ssl \
        --pretrain_overrides '{"negative_sizes": [112, 96]}' --name cpu_hardneg  # a variant, reported apart

A cell = pretrain (once per proxy and seed, reused) -> fine-tune (train.json) -> evaluate
(train.json + evaluate.json), each a ``python -m monai.bundle run`` with the preset's
overrides. Finished steps are skipped on a rerun (their output files exist), so an
interrupted grid resumes where it stopped. Fine-tuning runs a fixed number of optimiser
steps whatever the label fraction (epochs are derived), so fractions differ only in data.
``report`` writes ``docs/results/<preset>.md`` (tables shaped like the paper's Tables 1-4)
``docs/results/<preset>.png`` (AJI against label fraction per initialisation) and
``docs/results/<preset>_tiles.csv`` (every cell's per-tile scores), and appends
``docs/results/<preset>_reading.md`` (notes written by hand) when it exists.

The steps read ``configs/`` and ``bundle/`` of this checkout when they start, and each cell
records the commit it ran on (``git describe --dirty``); the report lists them. To keep
editing while a long grid runs, run it from its own worktree (``git worktree add``).
"""

import csv
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as `python scripts/experiment.py` from anywhere

from bundle.atomic import atomic_path  # noqa: E402
from bundle.runner import CONFIGS_DIR, bundle_run_command  # noqa: E402
from bundle.scalars import read_scalars, tail_means  # noqa: E402

# Each preset (configs/presets/<name>.json): what it is for ("about"), overrides of both configs
# ("common"), of evaluation ("evaluation"), of pretrain.json ("pretrain") and train.json ("train"),
# fine-tuning steps and validations per cell. The GPU scripts and the tests name them too.
PRESETS = {path.stem: json.loads(path.read_text()) for path in sorted((CONFIGS_DIR / "presets").glob("*.json"))}
# How each initialisation is pretrained: extra config files and overrides of pretrain.json.
PRETRAININGS = {
    "ssl": ([], {}),
    "ssl_lst": ([], {"w_cr": 0.0}),
    "ssl_lcr": ([], {"w_st": 0.0}),
    "rotnet": (["pretext_rotnet.json"], {}),
    "jigsaw": (["pretext_jigsaw.json"], {}),
    "colorme": (["pretext_colorme.json"], {}),
}
LABELS = {
    "scratch": "Scratch",
    "imagenet": "ImageNet",
    "ssl": "SSL (L_ST + L_CR)",
    "ssl_lst": "L_ST only",
    "ssl_lcr": "L_CR only",
    "rotnet": "RotNet",
    "jigsaw": "Jigsaw",
    "colorme": "ColorMe",
}


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
    """K datalists over all labelled items (training + validation pooled): fold k validates on its share."""
    datalist = json.loads((prepared / "datalist.json").read_text())
    items = datalist["training"] + datalist["validation"]
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    paths = []
    for fold in range(folds):
        validation = [item for i, item in enumerate(order) if i % folds == fold]
        training = [item for i, item in enumerate(order) if i % folds != fold]
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
        resume=True,
        **init_args,
    )
    bundle_run(["train.json", "evaluate.json"], root / "eval_log.txt", **common)
    (root / "timing.json").write_text(
        json.dumps({"seconds": time.time() - start - pretrain_seconds, "commit": version})
    )
    return json.loads(summary_path.read_text())


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
    imagenet_weights: str | None = None,
    report_to: str = "docs/results",
    name: str | None = None,
    finetune_steps: int | None = None,
    pretrain_epochs: int | None = None,
    pretrain_overrides: dict | None = None,
) -> None:
    """Run (or resume) the grid, then write the report.

    The three last options change a preset: fine-tuning steps, pretraining epochs, and any
    other pretrain.json values (e.g. ``--pretrain_overrides '{"negative_sizes": [112, 96]}'``).
    """
    started = time.time()
    spec = PRESETS[preset]
    if finetune_steps:
        spec = {**spec, "finetune_steps": finetune_steps}
    if pretrain_epochs or pretrain_overrides:
        extra = {**(pretrain_overrides or {}), **({"max_epochs": pretrain_epochs} if pretrain_epochs else {})}
        spec = {**spec, "pretrain": {**spec["pretrain"], **extra}}
    out_dir = (REPO_ROOT / (out or f"experiments/{preset}")).resolve()
    init_list = _as_list(inits, str) + (["imagenet"] if imagenet_weights and "imagenet" not in str(inits) else [])
    unknown = [i for i in init_list if i not in LABELS]
    if unknown:
        raise SystemExit(f"unknown initialisations {unknown}; choose from {sorted(LABELS)}")
    keep_settings(out_dir, {"preset": preset, "schedule": spec, "data": str(Path(data).resolve()), "folds": folds})
    dataset_dir = prepared_dataset(Path(data).resolve(), out_dir)
    datalists = fold_datalists(dataset_dir, out_dir, folds) if folds else [dataset_dir / "datalist.json"]
    grid = [
        (s, fold, f, i)
        for s in _as_list(seeds, int)
        for fold in range(len(datalists))
        for f in _as_list(fractions, float)
        for i in init_list
    ]
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
    elapsed = json.loads((out_dir / "wall.json").read_text())["seconds"] if (out_dir / "wall.json").is_file() else 0.0
    (out_dir / "wall.json").write_text(
        json.dumps({"seconds": elapsed + time.time() - started, "command": " ".join(sys.argv)})
    )
    report(preset, out, report_to, name)


def _cells(out_dir: Path) -> list[dict]:
    cells = []
    for summary in sorted((out_dir / "cells").glob("*/eval/metrics_summary.json")):
        name = summary.parent.parent.name
        parts = name.split("_")
        fold = next((int(p[4:]) for p in parts if p.startswith("fold")), None)
        seed = next(int(p[1:]) for p in parts if p.startswith("s") and p[1:].isdigit())
        fraction = next(int(p[1:]) for p in parts if p.startswith("f") and p[1:].isdigit()) / 100
        init = "_".join(p for p in parts if not ((p[:1] in "fs" and p[1:].isdigit()) or p.startswith("fold")))
        timing = summary.parent.parent / "timing.json"
        commit = json.loads(timing.read_text()).get("commit", "unknown") if timing.is_file() else "unknown"
        cells.append(
            {
                "init": init,
                "fraction": fraction,
                "seed": seed,
                "fold": fold,
                "commit": commit,
                **json.loads(summary.read_text()),
                **_cell_details(summary.parent.parent),
            }
        )
    return cells


def _cell_details(root: Path) -> dict:
    """A cell's worst validation tile (``eval/metrics.csv``) and its stored post-processing choice, where present."""
    details = {}
    rows = (
        list(csv.DictReader(open(root / "eval" / "metrics.csv"))) if (root / "eval" / "metrics.csv").is_file() else []
    )
    if rows:
        worst = min(rows, key=lambda row: float(row["aji"]))
        details |= {"worst_tile": worst["image"], "worst_aji": float(worst["aji"])}
    stored = root / "models" / "model.postprocess.json"
    if stored.is_file():
        chosen = json.loads(stored.read_text())
        details |= {
            "thresholds": f"{chosen['body_threshold']}/{chosen['foreground_threshold']}",
            "aji_default_thresholds": chosen["chosen_by"]["score_of_defaults"],
        }
    return details


def _write_tile_scores(out_dir: Path, path: Path) -> None:
    """Every cell's ``eval/metrics.csv`` rows in one CSV, each prefixed with its cell's name."""
    rows = [
        {"cell": summary.parent.parent.name, **row}
        for summary in sorted((out_dir / "cells").glob("*/eval/metrics.csv"))
        for row in csv.DictReader(open(summary))
    ]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["cell"])
        writer.writeheader()
        writer.writerows(rows)


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f} (n={len(values)})" if len(values) > 1 else f"{mean:.2f}"


def _table(cells: list[dict], inits: list[str], fractions: list[float], metric: str) -> list[str]:
    lines = [
        "| initialisation | " + " | ".join(f"{round(f * 100)} % labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for init in inits:
        row = [_mean_spread([c[metric] for c in cells if c["init"] == init and c["fraction"] == f]) for f in fractions]
        lines.append(f"| {LABELS[init]} | " + " | ".join(row) + " |")
    return lines


def _plot(cells: list[dict], inits: list[str], fractions: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 4))
    for init in inits:
        points = [(f, [c["aji"] for c in cells if c["init"] == init and c["fraction"] == f]) for f in fractions]
        points = [(f, v) for f, v in points if v]
        axis.errorbar(
            [100 * f for f, _ in points],
            [100 * statistics.mean(v) for _, v in points],
            yerr=[100 * statistics.stdev(v) if len(v) > 1 else 0 for _, v in points],
            marker="o",
            capsize=3,
            label=LABELS[init],
        )
    axis.set_xlabel("labelled training tiles (%)")
    axis.set_ylabel("AJI (%)")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    pyplot.close(figure)


def _pretraining_table(out_dir: Path) -> list[str]:
    """Per pretraining run: its minutes and the mean of each logged scalar over its last quarter of iterations."""
    runs = []
    for root in sorted((out_dir / "pretrain").glob("*_s*")):
        init, seed = root.name.rsplit("_s", 1)
        seed = seed.replace("_fold", ", fold ")
        if init in LABELS and (root / "models" / "pretrained_encoder.pt").is_file():
            timing = root / "timing.json"
            minutes = f"{json.loads(timing.read_text())['seconds'] / 60:.1f}" if timing.is_file() else "–"
            runs.append((LABELS[init], seed, minutes, tail_means(read_scalars(root / "runs"))))
    if not runs:
        return []
    tags = sorted({tag for *_, means in runs for tag in means})
    lines = ["| pretraining | seed | minutes | " + " | ".join(tags) + " |", "|---|---|---|" + "---|" * len(tags)]
    for label, seed, minutes, means in runs:
        lines.append(
            f"| {label} | {seed} | {minutes} | "
            + " | ".join(f"{means[t]:.3f}" if t in means else "–" for t in tags)
            + " |"
        )
    return lines


def _per_cell_table(cells: list[dict], inits: list[str]) -> list[str]:
    """Table 4: every cell (fold, seed) with its Dice, AJI, AJI at the default thresholds, thresholds and worst tile."""

    def percent(c: dict, key: str) -> str:
        return f"{100 * c[key]:.2f}" if key in c else "–"

    lines = [
        "## Table 4 – every cell: Dice %, AJI % (with the stored thresholds, and with the defaults 0.5/0.5), worst tile",
        "",
        "| initialisation | labels | seed | fold | Dice | AJI | AJI, default thresholds | thresholds body/foreground "
        "| worst tile (AJI %) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def order(c: dict) -> tuple:
        return inits.index(c["init"]), -c["fraction"], c["seed"], -1 if c["fold"] is None else c["fold"]

    for c in sorted(cells, key=order):
        worst = f"{c['worst_tile']} ({100 * c['worst_aji']:.2f})" if "worst_tile" in c else "–"
        lines.append(
            f"| {LABELS[c['init']]} | {round(c['fraction'] * 100)} % | {c['seed']} | "
            f"{'–' if c['fold'] is None else c['fold']} | {percent(c, 'dice')} | {percent(c, 'aji')} | "
            f"{percent(c, 'aji_default_thresholds')} | {c.get('thresholds', '–')} | {worst} |"
        )
    worst = min((c for c in cells if "worst_tile" in c), key=lambda c: c["worst_aji"], default=None)
    if worst:
        lines += [
            "",
            f"Worst validation tile over all cells: {worst['worst_tile']}, AJI {100 * worst['worst_aji']:.2f} % "
            f"({LABELS[worst['init']]}, {round(worst['fraction'] * 100)} % labels, seed {worst['seed']}, fold {worst['fold']}).",
        ]
    return lines + [""]


def schedule_changes(preset: str, out_dir: Path) -> str:
    """The values of the grid's recorded schedule that differ from the preset, as ``key = value`` text."""
    path = out_dir / "settings.json"
    schedule = json.loads(path.read_text())["schedule"] if path.is_file() else PRESETS[preset]

    def parts(spec: dict) -> dict:  # "common" held the evaluation keys before they had their own part
        return {
            "common": {**spec["common"], **spec.get("evaluation", {})},
            "pretrain": spec["pretrain"],
            "train": spec["train"],
        }

    recorded, preset_parts = parts(schedule), parts(PRESETS[preset])
    changes = [
        f"{part}.{key} = {json.dumps(value)}"
        for part in recorded
        for key, value in recorded[part].items()
        if preset_parts[part].get(key) != value
    ]
    changes += [
        f"{key} = {schedule[key]}" for key in ("finetune_steps", "validations") if schedule[key] != PRESETS[preset][key]
    ]
    return "; ".join(changes)


def report(
    preset: str = "cpu", out: str | None = None, report_to: str = "docs/results", name: str | None = None
) -> None:
    """Write ``<report_to>/<name>.md`` and ``.png`` (``name`` defaults to the preset's) from the finished cells."""
    name = name or preset
    out_dir = (REPO_ROOT / (out or f"experiments/{preset}")).resolve()
    cells = _cells(out_dir)
    if not cells:
        raise SystemExit(f"no finished cells under {out_dir / 'cells'}")
    inits = [i for i in LABELS if any(c["init"] == i for c in cells)]
    fractions = sorted({c["fraction"] for c in cells}, reverse=True)
    wall = json.loads((out_dir / "wall.json").read_text()) if (out_dir / "wall.json").is_file() else {}
    commits = ", ".join(f"`{c}`" for c in sorted({c["commit"] for c in cells}))
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        f"# Experiment results: `{preset}` preset" + (f" ({name})" if name != preset else ""),
        "",
        f"Preset: {PRESETS[preset]['about']}."
        + (f" Changed for this grid: {changes}." if (changes := schedule_changes(preset, out_dir)) else ""),
        "",
        f"Command: `{wall.get('command', 'python scripts/experiment.py run --preset ' + preset)}`",
        "",
        f"Commit(s) the cells ran on: {commits}; machine: {platform.machine()}, {platform.processor() or platform.system()}, "
        f"{__import__('os').cpu_count()} cores; wall time of the runs: {wall.get('seconds', 0) / 60:.0f} min.",
        "",
        f"Cells finished: {len(cells)}; seeds {seeds}"
        + (f", folds {folds}" if (folds := sorted({c["fold"] for c in cells if c["fold"] is not None})) else "")
        + ". Figures are mean ± sample std over the n cells of an entry (seeds × folds), in %, on the validation "
        "tiles of the prepared split (or each fold's held-out tiles).",
        "",
        "## Table 1 – AJI (%) by initialisation and label fraction",
        "",
        *_table(cells, inits, fractions, "aji"),
        "",
        "## Table 1b – Dice (%)",
        "",
        *_table(cells, inits, fractions, "dice"),
        "",
    ]
    ablation = [i for i in ("ssl", "ssl_lst", "ssl_lcr") if i in inits]
    if len(ablation) > 1:
        lines += [
            "## Table 3 – ablation of the two losses, AJI (%)",
            "",
            *_table(cells, ablation, fractions, "aji"),
            "",
        ]
    proxies = [i for i in ("scratch", "imagenet", "rotnet", "jigsaw", "colorme", "ssl") if i in inits]
    if any(i in inits for i in ("rotnet", "jigsaw", "colorme")):
        lines += ["## Table 2 – proxy tasks, AJI (%)", "", *_table(cells, proxies, fractions, "aji"), ""]
    pretraining = _pretraining_table(out_dir)
    if pretraining:
        lines += [
            "## Pretraining – where each run ended (mean of its last quarter of iterations; accuracies are of the proxy task)",
            "",
            *pretraining,
            "",
        ]
    lines += _per_cell_table(cells, inits)
    target = REPO_ROOT / report_to
    _plot(cells, inits, fractions, target / f"{name}.png", f"{name}: AJI vs labels")
    lines += ["", f"![AJI against label fraction]({name}.png)", ""]
    _write_tile_scores(out_dir, target / f"{name}_tiles.csv")
    lines += [f"Per-tile scores of every cell: [`{name}_tiles.csv`]({name}_tiles.csv).", ""]
    reading = target / f"{name}_reading.md"  # hand-written notes survive a regenerated report
    if reading.is_file():
        lines += [reading.read_text().rstrip(), ""]
    with atomic_path(target / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines))
    print(f"report written to {target / f'{name}.md'}")


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
