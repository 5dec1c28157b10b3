"""Experiment presets and the initialisations a grid can compare.

Each preset is a file, ``configs/presets/<name>.json``: what it is for ("about"), overrides of
both configs ("common"), of evaluation ("evaluation"), of pretrain.json ("pretrain") and
train.json ("train"), fine-tuning steps and validations per cell. The experiment runner, the
GPU scripts and the tests read them here.
"""

import json

from bundle.runner import CONFIGS_DIR

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


def preset_overrides(name: str, workflow: str) -> dict:
    """The ``--key value`` overrides of preset ``name`` for ``workflow``: "pretrain" or "train"."""
    spec = PRESETS[name]
    if workflow == "pretrain":
        return {**spec["common"], **spec["pretrain"]}
    if workflow == "train":
        return {**spec["common"], **spec["evaluation"], **spec["train"]}
    raise ValueError(f"workflow must be 'pretrain' or 'train', got {workflow!r}")
