"""Write a folder of synthetic H&E tiles (MoNuSeg layout: images/*.tif, masks/*.png).

python scripts/synthesize.py --out_dir data/synthetic --n_tiles 12 --size 1000 --seed 0
"""

import sys
import time
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.synthetic import synthesize_dataset  # noqa: E402


def main(out_dir: str = "data/synthetic", n_tiles: int = 12, size: int = 1000, seed: int = 0) -> None:
    """Write ``n_tiles`` square tiles of ``size`` pixels under ``out_dir``, seeded by ``seed``."""
    start = time.perf_counter()
    stems = synthesize_dataset(out_dir, n_tiles=n_tiles, shape=(size, size), seed=seed)
    elapsed = time.perf_counter() - start
    per_tile = elapsed / max(len(stems), 1)
    print(f"wrote {len(stems)} tiles of {size}x{size} px to {out_dir}/images and {out_dir}/masks")
    print(f"stems: {stems[0]} .. {stems[-1]}" if stems else "stems: none")
    print(f"time: {elapsed:.2f} s ({per_tile:.3f} s per tile, including writing)")


if __name__ == "__main__":
    fire.Fire(main)
