"""Whole-slide images: open, find tissue, tile, segment nuclei tile by tile, stitch, and sample tiles.

Modules: :mod:`~bundle.wsi.slide` (open, levels, read regions), :mod:`~bundle.wsi.tissue`
(tissue mask), :mod:`~bundle.wsi.tiling` (tile grid and the stitching rule),
:mod:`~bundle.wsi.segment` (segment a slide, write its outputs), :mod:`~bundle.wsi.cohort`
(slides over several processes, the run's summary) and
:mod:`~bundle.wsi.sampling` (pretraining tiles). The names configs and tests use are
re-exported here, so ``bundle.wsi.X`` keeps working.

Conventions:

- levels: 0 is full resolution; level ``l`` is ``downsample(l)`` times smaller (a float,
  level-0 height / level height). Tiles are read and segmented at one ``level``; every
  output (GeoJSON, CSV) is in level-0 pixels, the frame QuPath and slide viewers use.
- positions are ``(row, col)`` and sizes ``(h, w)`` in pixels of the level named beside them;
  images are channel-first ``(3, h, w)`` uint8 RGB as MONAI's ``WSIReader`` returns them.
"""

from bundle.wsi.sampling import sample_slide_tiles
from bundle.wsi.segment import segment_slide, segment_slides
from bundle.wsi.slide import (
    level_count,
    level_downsample,
    level_for_mpp,
    level_shape,
    open_slide,
    opened_slide,
    read_region,
    read_tiff_region,
    resolve_backend,
    slide_paths,
)
from bundle.wsi.tiling import owned_nuclei, tile_core, tile_grid, tile_window
from bundle.wsi.tissue import tissue_mask

__all__ = [
    "level_count",
    "level_downsample",
    "level_for_mpp",
    "level_shape",
    "open_slide",
    "opened_slide",
    "owned_nuclei",
    "read_region",
    "read_tiff_region",
    "resolve_backend",
    "sample_slide_tiles",
    "segment_slide",
    "segment_slides",
    "slide_paths",
    "tile_core",
    "tile_grid",
    "tile_window",
    "tissue_mask",
]
