"""Pretraining tiles from whole slides: tissue tiles drawn at random, cached once as TIFF files.

Conventions: see :mod:`bundle.wsi`.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bundle.data import stem_of, write_image
from bundle.wsi.slide import (
    level_downsample,
    level_for_mpp,
    level_shape,
    opened_slide,
    read_region,
    slide_path_of,
    slide_paths,
)
from bundle.wsi.tiling import mask_footprint
from bundle.wsi.tissue import tissue_mask
from monai.data import WSIReader

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pretraining tiles


def tissue_tile_origins(
    mask: np.ndarray,
    mask_downsample: float,
    slide_shape: tuple[int, int],
    tile_size: int,
    min_tissue_fraction: float = 0.5,
) -> list[tuple[int, int]]:
    """(row, col) origins of the non-overlapping ``tile_size`` tiles inside ``slide_shape`` (h, w)
    whose mask footprint is at least ``min_tissue_fraction`` tissue (0..1).

    Pixels of the tiles' level throughout; ``mask_downsample``: level pixels per mask pixel.
    """
    rows, cols = range(0, slide_shape[0] - tile_size + 1, tile_size), range(
        0, slide_shape[1] - tile_size + 1, tile_size
    )
    windows = [(row, col, row + tile_size, col + tile_size) for row in rows for col in cols]
    return [w[:2] for w in windows if mask_footprint(mask, w, mask_downsample).mean() >= min_tissue_fraction]


def choose_tissue_tiles(
    reader: WSIReader,
    wsi,
    tile_size: int,
    count: int,
    level: int,
    rng: np.random.Generator,
    tissue_threshold: float | None = None,
    min_tissue_fraction: float = 0.5,
    min_tissue_area: int = 16,
) -> list[tuple[int, int]]:
    """Up to ``count`` (row, col) origins, in pixels of ``level``, of tissue tiles drawn without
    replacement by ``rng`` from :func:`tissue_tile_origins` of the slide's :func:`tissue_mask`; sorted."""
    shape, downsample = level_shape(reader, wsi, level), level_downsample(reader, wsi, level)
    mask, mask_downsample = tissue_mask(reader, wsi, threshold=tissue_threshold, min_area=min_tissue_area)
    origins = tissue_tile_origins(mask, mask_downsample / downsample, shape, tile_size, min_tissue_fraction)
    picks = rng.choice(len(origins), size=min(count, len(origins)), replace=False) if origins else []
    return sorted(origins[i] for i in picks)


def cache_tiles(
    reader: WSIReader, wsi, origins: Sequence[tuple[int, int]], tile_size: int, level: int, folder: Path
) -> list[Path]:
    """Write each ``tile_size`` tile at ``origins`` (pixels of ``level``) to ``folder`` as
    ``<slide stem>_<row>_<col>.tif`` (row, col in level-0 pixels) unless that file exists; the paths."""
    stem, downsample = stem_of(slide_path_of(reader, wsi)), level_downsample(reader, wsi, level)
    paths = []
    for row, col in origins:
        path = folder / f"{stem}_{round(row * downsample)}_{round(col * downsample)}.tif"
        if not path.is_file():
            write_image(path, read_region(reader, wsi, (row, col), (tile_size, tile_size), level).transpose(1, 2, 0))
        paths.append(path)
    return paths


def sample_slide_tiles(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    tile_size: int = 1000,
    tiles_per_slide: int = 16,
    level: int = 0,
    target_mpp: float | None = None,
    seed: int = 0,
    backend: str = "tifffile",
    tissue_threshold: float | None = None,
    min_tissue_fraction: float = 0.5,
    min_tissue_area: int = 16,
    mpp_rtol: float = 0.25,
) -> list[dict[str, str]]:
    """Pretraining datalist from whole slides: ``[{"image": tile path}, ...]``.

    Per slide, up to ``tiles_per_slide`` non-overlapping ``tile_size`` tiles at least
    ``min_tissue_fraction`` tissue are drawn with ``np.random.default_rng((seed, slide
    index))`` (:func:`choose_tissue_tiles`; the tissue mask of :func:`segment_slide`), read at
    ``level`` -- or, when ``target_mpp`` (um/px) is given, at the level closest to it within
    ``mpp_rtol`` (:func:`level_for_mpp`, no resampling) -- and written once as TIFF files in
    ``<cache_dir>/level<L>_<tile_size>px/`` (:func:`cache_tiles`; existing files are reused,
    so delete the folder when the slides change).

    Why files: the unchanged pretraining chain of configs/pretrain.json starts with
    ``LoadTiled``, which reads paths; cached tiles are decoded from the slide once, then
    loaded into its CacheDataset like any tile folder. A slide without such a tile (too
    small, too little tissue) is logged and skipped.

    Raises:
        FileNotFoundError: no slides (:func:`slide_paths`), or no tile from any slide.
        DataFileError: naming the slide, when it cannot be opened or read.
    """
    items = []
    for index, slide in enumerate(slide_paths(slides)):
        with opened_slide(slide, backend) as (reader, wsi):
            if target_mpp is not None:
                level = level_for_mpp(reader, wsi, target_mpp, mpp_rtol)
            rng = np.random.default_rng((seed, index))
            origins = choose_tissue_tiles(
                reader,
                wsi,
                tile_size,
                tiles_per_slide,
                level,
                rng,
                tissue_threshold,
                min_tissue_fraction,
                min_tissue_area,
            )
            paths = cache_tiles(reader, wsi, origins, tile_size, level, Path(cache_dir) / f"level{level}_{tile_size}px")
        if not paths:
            fraction = f"{min_tissue_fraction:.0%}"
            logger.warning(
                "%s: no %d px tile at level %d is %s tissue; slide skipped", slide, tile_size, level, fraction
            )
        items += [{"image": str(p)} for p in paths]
    if not items:
        raise FileNotFoundError(
            f"{slides}: no tile of {tile_size} px with {min_tissue_fraction:.0%} tissue in any slide"
        )
    return items
