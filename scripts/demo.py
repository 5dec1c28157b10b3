"""The whole pipeline on the embedded synthetic data, as ``make demo`` runs it.

generate -> prepare -> summarise -> pretrain -> fine-tune (ssl and scratch) -> evaluate
-> infer, each step through ``python -m monai.bundle run`` with ``configs/quick.json``
(small backbone and crops, so it finishes in minutes on a laptop CPU). Nothing is downloaded.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as `python scripts/demo.py` from anywhere

from bundle.runner import bundle_run_command  # noqa: E402
from bundle.synthetic import synthesize_dataset  # noqa: E402


def bundle_run(configs: list[str], **overrides) -> None:
    """``python -m monai.bundle run`` on ``configs`` with ``--key value`` overrides; stop on failure."""
    command = bundle_run_command(configs, **overrides)
    print(f"\n$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def demo(out: str = "outputs/demo", n_tiles: int = 12, tile_size: int = 1000, seed: int = 0, **overrides) -> None:
    """Run every workflow on synthetic tiles under ``out``; extra ``--key value`` go to every config."""
    started = time.time()
    root = (REPO_ROOT / out).resolve()
    synthetic, prepared = root / "synthetic", root / "prepared"
    synthesize_dataset(synthetic, n_tiles=n_tiles, shape=(tile_size, tile_size), seed=seed)
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare.py"),
            "prepare",
            str(synthetic),
            str(prepared),
            "--seed",
            str(seed),
        ],
        check=True,
    )
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare.py"), "summarize", str(prepared / "datalist.json")],
        check=True,
    )

    common = {"dataset_dir": str(prepared), "seed": seed, **overrides}
    bundle_run(["pretrain.json", "quick.json"], bundle_root=str(root / "ssl"), **common)
    results = {}
    for init in ("ssl", "scratch"):
        run_root = str(root / init)
        bundle_run(["train.json", "quick.json"], bundle_root=run_root, init=init, **common)
        bundle_run(["train.json", "quick.json", "evaluate.json"], bundle_root=run_root, **common)
        results[init] = json.loads((root / init / "eval" / "metrics_summary.json").read_text())
    inference_dir = root / "inference"
    bundle_run(
        ["inference.json", "quick.json"],
        bundle_root=str(root / "ssl"),
        dataset_dir=str(prepared),
        sections=["validation"],
        output_dir=str(inference_dir),
        overwrite=True,
    )  # a rerun of the demo replaces its own outputs
    print(
        f"\nDemo finished in {(time.time() - started) / 60:.1f} min on {n_tiles} synthetic {tile_size}px tiles "
        f"({results['ssl']['n_images']} validation tiles)"
    )
    print(f"{'init':<10}{'AJI':>8}{'AJI+':>8}{'Dice':>8}{'PQ':>8}")
    for init, summary in results.items():
        print(
            f"{init:<10}{summary['aji']:>8.3f}{summary['aji_plus']:>8.3f}{summary['dice']:>8.3f}{summary['pq']:>8.3f}"
        )
    print(f"overlays: {inference_dir}/*_overlay.png")


if __name__ == "__main__":
    fire.Fire(demo)
