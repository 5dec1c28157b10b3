"""Tissue masks of whole slides: a thumbnail read block by block, thresholded on HSV saturation.

Conventions: see :mod:`bundle.wsi`.
"""

import math

import numpy as np
from bundle.wsi.slide import GLASS_VALUE, level_count, level_downsample, level_shape, read_region
from monai.data import WSIReader
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.transform import downscale_local_mean

#: Side, in pixels of the thumbnail's source level, of the blocks the thumbnail is read in.
THUMBNAIL_BLOCK = 1024

#: Histogram bins of saturation (0..1) for Otsu's threshold.
SATURATION_BINS = 256


# ----------------------------------------------------------------------------- tissue


def slide_thumbnail(reader: WSIReader, wsi, level: int | None = None, max_side: int = 2048) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 overview of the slide and its downsample (level-0 pixels per thumbnail pixel).

    Read from ``level`` (default: the lowest resolution) in blocks of about
    :data:`THUMBNAIL_BLOCK` px, each shrunk by the integer factor that brings the level's
    longer side to at most ``max_side`` (block means; cells past the level's edge count as
    glass), so a slide without a small level is never held whole.
    """
    level = level_count(reader, wsi) - 1 if level is None else level
    height, width = level_shape(reader, wsi, level)
    factor = max(1, math.ceil(max(height, width) / max_side))
    step = factor * max(1, THUMBNAIL_BLOCK // factor)
    thumbnail = np.empty((-(-height // factor), -(-width // factor), 3), np.uint8)
    for row in range(0, height, step):
        for col in range(0, width, step):
            size = (min(step, height - row), min(step, width - col))
            block = read_region(reader, wsi, (row, col), size, level).transpose(1, 2, 0)
            small = np.rint(downscale_local_mean(block, (factor, factor, 1), cval=GLASS_VALUE)) if factor > 1 else block
            thumbnail[
                row // factor : row // factor + small.shape[0], col // factor : col // factor + small.shape[1]
            ] = small
    return thumbnail, level_downsample(reader, wsi, level) * factor


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """(h, w) float32 HSV saturation, ``(max - min) / max`` over the channels (0 where max is 0), of (h, w, 3) uint8.

    Written here because ``skimage.color.rgb2hsv`` builds all three channels in float64 with
    temporaries (about 50 bytes a pixel) when only saturation is needed (about 6 here).
    """
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.divide(high - low, high, out=np.zeros(high.shape, np.float32), where=high > 0, dtype=np.float32)


def drop_small_pieces(mask: np.ndarray, min_area: int) -> np.ndarray:
    """(h, w) bool mask without its 8-connected pieces of fewer than ``min_area`` pixels.

    scipy's ``label`` and a ``bincount`` rather than scikit-image's ``remove_small_objects``,
    whose size argument changed meaning in 0.26, or ``area_opening``, whose max-tree costs
    about 32 bytes a pixel.
    """
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(pieces.ravel()) >= min_area
    keep[0] = False
    return keep[pieces]


def tissue_mask_from_rgb(
    rgb: np.ndarray, threshold: float | None = None, auto_range: tuple[float, float] = (0.02, 0.15), min_area: int = 16
) -> np.ndarray:
    """(h, w) bool tissue mask of an (h, w, 3) uint8 thumbnail: saturation above a threshold.

    H&E stains tissue in saturated pinks and purples; glass, fat and background are grey or
    white (saturation near 0). Args:

    - threshold: saturation (0..1) above which a pixel is tissue; None: Otsu's threshold of
      the saturation histogram, clipped to ``auto_range`` so that a slide without glass is not
      split in two (cap) and faint noise on blank glass is not taken for tissue (floor).
    - min_area: tissue pieces of fewer thumbnail pixels are dropped (dust, specks).
    """
    saturation = hsv_saturation(rgb)
    if threshold is None:
        counts, edges = np.histogram(
            saturation, bins=SATURATION_BINS, range=(0.0, 1.0)
        )  # blockwise: no image-sized copies
        threshold = float(np.clip(threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2)), *auto_range))
    return drop_small_pieces(saturation > threshold, min_area)


def tissue_mask(
    reader: WSIReader,
    wsi,
    level: int | None = None,
    threshold: float | None = None,
    max_side: int = 2048,
    min_area: int = 16,
) -> tuple[np.ndarray, float]:
    """``(mask (h, w) bool, downsample)``: :func:`tissue_mask_from_rgb` of :func:`slide_thumbnail`.

    ``downsample`` is level-0 pixels per mask pixel. ``level`` (default the lowest resolution),
    ``max_side``: see :func:`slide_thumbnail`; ``threshold``, ``min_area`` (mask pixels): see
    :func:`tissue_mask_from_rgb`.
    """
    thumbnail, downsample = slide_thumbnail(reader, wsi, level, max_side)
    return tissue_mask_from_rgb(thumbnail, threshold, min_area=min_area), downsample
