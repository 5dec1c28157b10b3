"""Print, as JSON, what one process draws: the first pretraining epoch's triplets per loader
worker count, and the label-fraction subsets of fine-tuning. Used by tests/test_determinism.py.

    python tests/determinism_probe.py SYNTHETIC_DIR PREPARED_DIR [--workers 0 2]
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bundle.handlers import EpochSeeder  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

SEED = 0
PRETRAIN = {"crop_size": 64, "max_shift": 16, "negative_sizes": [48, 32], "batch_size": 2, "triplets_per_epoch": 8}
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def parser_for(config: str, **overrides) -> ConfigParser:
    """A parser of configs/<config> with overrides, after the config's own seeding (``initialize``)."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / config))
    parser.update(overrides)
    set_determinism(seed=SEED)
    return parser


def digest(tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]


def first_epoch_triplets(dataset_dir: str, num_workers: int) -> list[dict]:
    """Per batch of epoch 1 (seeded as the trainer's EpochSeeder does): tile names and crop digests."""
    loader = parser_for(
        "pretrain.json", dataset_dir=dataset_dir, num_workers=num_workers, **PRETRAIN
    ).get_parsed_content("train#dataloader")
    EpochSeeder(SEED)(SimpleNamespace(state=SimpleNamespace(epoch=1, dataloader=loader)))
    return [
        {
            "tiles": [Path(p).name for p in batch["image_path"]],
            **{view: digest(batch[view]) for view in ("anchor", "positive", "negative")},
        }
        for batch in loader
    ]


def label_fraction_subsets(prepared_dir: str) -> dict[str, list[str]]:
    """Training images of each label fraction, as configs/train.json selects them."""
    return {
        str(fraction): [
            Path(item["image"]).name
            for item in parser_for("train.json", dataset_dir=prepared_dir, label_fraction=fraction).get_parsed_content(
                "train#datalist"
            )
        ]
        for fraction in FRACTIONS
    }


def main() -> None:
    arguments = argparse.ArgumentParser()
    arguments.add_argument("synthetic_dir")
    arguments.add_argument("prepared_dir")
    arguments.add_argument("--workers", type=int, nargs="+", default=[0])
    args = arguments.parse_args()
    triplets = {str(n): first_epoch_triplets(args.synthetic_dir, n) for n in args.workers}
    print(json.dumps({"triplets": triplets, "label_fractions": label_fraction_subsets(args.prepared_dir)}))


if __name__ == "__main__":
    main()
