"""Command-line overrides checked before a workflow starts: a typo'd key or a value of the
wrong type stops ``python -m monai.bundle run`` with one line per problem, instead of being
ignored (an unknown key just becomes a new, unused config item) or failing deep inside a
transform. MONAI's runner has no such check, hence this module."""

import difflib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser
from monai.bundle.scripts import run as bundle_run

# Arguments of the runner itself, not config items.
RUNNER_ARGUMENTS = {name for name, p in inspect.signature(bundle_run).parameters.items() if p.kind != p.VAR_KEYWORD}
POSITIVE = {
    "crop_size",
    "roi_size",
    "val_roi_size",
    "batch_size",
    "max_epochs",
    "epoch_steps",
    "val_interval",
    "checkpoint_interval",
    "crops_per_tile",
    "triplets_per_epoch",
    "learning_rate",
    "sw_batch_size",
}
NON_NEGATIVE = {"num_workers", "weight_decay", "seed", "max_shift", "label_subset_seed", "hover_weight"}
UNIT_INTERVAL = {"label_fraction"}  # (0, 1]


# One line per parameter users set most, shown by ``--help``.
PARAMETER_DOCS = {
    "backbone": "encoder: resnet10, resnet18, resnet34, resnet50 or resnet101 (must match the checkpoint)",
    "batch_size": "crops per optimiser step (fine-tuning: from that many distinct tiles; pretraining: triplets)",
    "bundle_root": "folder of models/, runs/, eval/ and outputs/",
    "class_weights": "cross-entropy weights of background, body, boundary",
    "cpu_bf16": "bfloat16 autocast on the CPU: 'auto' (where native), True or False",
    "crop_size": "training crop side in pixels (at 40x)",
    "dataset_dir": "a prepared folder, a datalist JSON, a folder of tiles, or one tile",
    "encoder_lr_scale": "fine-tuning: the encoder's learning rate as a multiple of --learning_rate",
    "epoch_steps": "optimiser steps per epoch",
    "frozen_layers": "pretraining: parameter-name prefixes kept at their initialisation, e.g. ['encoder.conv1.', 'encoder.bn1.']",
    "full_resolution_skip": "fine-tuning: a full-resolution stem joins the decoder's last block (read from the checkpoint after)",
    "hover_weight": "fine-tuning: weight of the HoVer-map terms (0: the 3-class map alone; > 0: 5 output channels)",
    "init": "encoder initialisation: ssl, scratch or imagenet",
    "init_weights": "encoder weights file for --init ssl or imagenet",
    "input_downsample": (
        "fine-tuning: the network works on tiles reduced by this integer factor (2: 40x tiles at 20x), "
        "its logits upsampled back before post-processing (read from the checkpoint after)"
    ),
    "label_fraction": "share of the labelled training tiles used, in (0, 1]",
    "label_subset_seed": "None: the first tiles of the datalist's order; an integer: tiles drawn with that seed",
    "learning_rate": "peak learning rate",
    "max_epochs": "training epochs",
    "model_path": "the model file to write (training) or load (evaluation, inference)",
    "mpp": "microns per pixel (slides: read from the slide when not given): measurements in µm, TIFF resolution",
    "num_workers": "data-loader worker processes",
    "output_dir": "where outputs are written",
    "overwrite": "redo finished tiles or slides in --output_dir (tiles: also replace another model's)",
    "resume": "resume from the newest complete checkpoint (False: start over, older checkpoints set aside)",
    "roi_size": "sliding-window side in pixels",
    "sections": "datalist sections to run on, e.g. ['validation']",
    "seed": "random seed",
    "stain_normalization": "Macenko stain normalisation of every tile (fine-tuning: stored with the model, applied after)",
    "tta": "flip test-time augmentation (4 flips averaged)",
    "val_interval": "epochs between validations",
    "view_size": "pretraining: side of the anchor and positive regions, resized to --crop_size (> crop_size: zoomed out)",
}


def cli_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--key value`` and ``--key=value`` pairs of ``argv``, values parsed as python-fire parses them."""
    overrides: dict[str, Any] = {}
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if not token.startswith("--") or len(token) == 2:
            continue
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            value = following if following is not None and not following.startswith("--") else "True"
        overrides[key.replace("-", "_") if key in ("config-file", "meta-file") else key] = DefaultParseValue(value)
    return overrides


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)] if value else []


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (a literal of the config), or None."""
    if _is_expression(value) or _is_expression(default) or default is None:
        return None
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (list, tuple)):
        ok, wanted = isinstance(value, (list, tuple)), "a list, e.g. [1, 2]"
    else:
        return None
    if ok:
        return None
    spelling = (
        " (python-fire reads Python's spelling, also inside a dict)" if str(value).lower() in ("true", "false") else ""
    )
    return f"--{key}: expected {wanted} (the default is {default!r}), got {value!r}{spelling}"


def _range_problem(key: str, value: Any) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if key in POSITIVE and value <= 0:
        return f"--{key}: must be greater than 0, got {value!r}"
    if key in NON_NEGATIVE and value < 0:
        return f"--{key}: must be 0 or more, got {value!r}"
    if key in UNIT_INTERVAL and not 0 < value <= 1:
        return f"--{key}: must be in (0, 1], got {value!r}"
    return None


def override_problems(overrides: dict[str, Any], config: ConfigParser) -> list[str]:
    """One line per override that ``config`` does not define (with the closest known key) or that has a wrong type or range."""
    known = sorted(_config_ids(config.get()))
    problems = []
    for key, value in overrides.items():
        if key in RUNNER_ARGUMENTS:
            continue
        if key not in config:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean --{close[0]}?" if close else "; see the config files for the keys"
            problems.append(f"--{key}: not a key of this workflow's config{hint}")
            continue
        problem = _type_problem(key, value, config.get(key)) or _range_problem(key, value)
        if problem:
            problems.append(problem)
    return problems


def _config_ids(content: Any, prefix: str = "") -> set[str]:
    """Every id of ``content`` (``a``, ``a#b``, ``a#0``), as MONAI's parser spells them."""
    ids = set()
    items = content.items() if isinstance(content, dict) else enumerate(content) if isinstance(content, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        ids |= {name} | _config_ids(value, f"{name}#")
    return ids


def parameter_listing(config: ConfigParser, config_files: list[str]) -> str:
    """The workflow's parameters (top-level items whose default is a value or an expression,
    not a component) with their defaults."""
    rows = [
        (key, value)
        for key, value in config.get().items()
        if not key.startswith("_")
        and key not in ("imports", "initialize", "run", "finalize")
        and not (isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)))
    ]
    width = max(len(key) for key, _ in rows)
    lines = [
        f"Parameters of {' + '.join(Path(f).name for f in config_files)} (override with --key value; "
        "nested items as --section#key value):"
    ]

    def spelled(value: Any) -> str:  # as fire reads it back
        return repr(value) if value is None or isinstance(value, bool) else json.dumps(value)

    lines += [
        f"  --{key:<{width}}  {spelled(value)}" + (f"  # {PARAMETER_DOCS[key]}" if key in PARAMETER_DOCS else "")
        for key, value in sorted(rows)
    ]
    return "\n".join(lines)


def check_overrides(arguments: Sequence[str]) -> None:
    """Stop (``SystemExit``, exit status 1) when the overrides among ``arguments`` (what follows
    ``python -m monai.bundle run``) name unknown keys or carry values of the wrong type or
    range; with ``--help``, print the workflow's parameters and defaults and stop (exit status 0)."""
    overrides = cli_overrides(arguments)
    if "args_file" in overrides and str(overrides["args_file"]).endswith(".json"):
        overrides = {**json.loads(Path(str(overrides["args_file"])).read_text()), **overrides}
    config = ConfigParser()
    config.read_config(_as_list(overrides.get("config_file")))
    if overrides.get("help") is True and "help" not in config:
        print(parameter_listing(config, _as_list(overrides.get("config_file"))))
        raise SystemExit(0)
    problems = override_problems(overrides, config)
    if problems:
        raise SystemExit(
            f"{len(problems)} problem(s) with the command-line overrides; nothing was run:\n"
            + "\n".join(f"  {p}" for p in problems)
        )
