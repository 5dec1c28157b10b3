"""The experiment grid's report: tables shaped like the paper's, a plot, per-tile scores.

``report`` writes ``<report_to>/<name>.md`` (Tables 1-5), ``<name>.png`` (AJI against label
fraction per initialisation) and ``<name>_tiles.csv`` (every cell's per-tile scores), and
appends ``<name>_reading.md`` (notes written by hand) when it exists.
"""

import csv
import json
import platform
import statistics
from pathlib import Path

from bundle.atomic import atomic_path
from bundle.error_budget import ORACLES
from bundle.presets import LABELS, PRESETS
from bundle.runner import REPO_ROOT
from bundle.scalars import read_scalars, tail_means


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


def _error_budget_table(cells: list[dict], inits: list[str], fractions: list[float]) -> list[str]:
    """Mean AJI % per initialisation and label fraction, as scored and after each correction of
    :data:`bundle.error_budget.ORACLES`; [] when no cell was evaluated with the error budget."""
    scored = [c for c in cells if all(name in c for name in ORACLES)]
    if not scored:
        return []
    lines = [
        "## Table 5 – where AJI is lost: mean AJI (%) after correcting one kind of error from the ground truth",
        "",
        "Separated: the predicted foreground split as the true nuclei are. Missed added: true nuclei the "
        "prediction does not touch, added whole. False dropped: predicted nuclei on no true nucleus, removed. "
        "Pixels cleaned: the prediction cut to the true foreground. The larger the gain over the AJI, the more "
        "that kind of error costs.",
        "",
        "| initialisation | labels | n | AJI | "
        + " | ".join(name.removeprefix("aji_").replace("_", " ") for name in ORACLES)
        + " |",
        "|---|---|---|---|" + "---|" * len(ORACLES),
    ]
    for init in inits:
        for fraction in fractions:
            group = [c for c in scored if c["init"] == init and c["fraction"] == fraction]
            if group:
                means = [100 * statistics.mean(c[key] for c in group) for key in ("aji", *ORACLES)]
                lines.append(
                    f"| {LABELS[init]} | {round(fraction * 100)} % | {len(group)} | {means[0]:.2f} | "
                    + " | ".join(f"{value:.2f} ({value - means[0]:+.2f})" for value in means[1:])
                    + " |"
                )
    return [*lines, ""]


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
    lines += _error_budget_table(cells, inits, fractions)
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
