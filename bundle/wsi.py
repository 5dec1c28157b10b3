"""Whole-slide images: open, find tissue, tile, segment nuclei tile by tile, stitch, and sample tiles.

Conventions:

- levels: 0 is full resolution; level ``l`` is ``downsample(l)`` times smaller (a float,
  level-0 height / level height). Tiles are read and segmented at one ``level``; every
  output (GeoJSON, CSV) is in level-0 pixels, the frame QuPath and slide viewers use.
- positions are ``(row, col)`` and sizes ``(h, w)`` in pixels of the level named beside them;
  images are channel-first ``(3, h, w)`` uint8 RGB as MONAI's ``WSIReader`` returns them.

Stitching (:func:`owned_nuclei`, the tiling rule of HoVer-Net and StarDist): tiles are
``tile_size`` windows on a grid of stride ``tile_size - overlap``, so neighbours share an
``overlap``-wide strip. Each window has a *core*: the window minus ``overlap // 2`` on each
interior side (none on a side at the slide edge); the cores of the full grid partition the
slide. A nucleus is kept from a window only when

1. it does not touch an interior edge of the window (it is whole there), and
2. its centroid, in slide pixels, lies in the window's core.

Why once and whole: a nucleus whose pixels all lie within ``overlap // 2 - 1`` px (per axis)
of its centroid is whole in the window whose core holds its centroid, because that core
keeps at least ``overlap // 2`` px from the window's interior edges; every other window
either cuts it (rule 1) or sees the same whole nucleus with the same centroid outside its
core (rule 2); and the cores do not overlap. ``overlap`` must therefore exceed the largest
nucleus diameter plus 2 px: 64 px covers nuclei up to ~60 px across (15 um at 0.25 um/px,
40x); the default 128 leaves a margin, and gives the network context at tile edges. The
centroid test is exact: it compares integer coordinate sums, never rounded means.

Memory: a slide is never held whole. The tissue mask and the overview come from a
thumbnail of at most ``overview_max_side`` px a side, read block by block; tiles are read
one at a time (for TIFF only the TIFF tiles or strips they cover, see
:func:`read_region`); nucleus outlines and table rows are streamed to temporary files
renamed into place at the end (:func:`bundle.atomic.atomic_path`).
"""

import csv
import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from ignite.handlers import Checkpoint
from monai.data import WSIReader
from monai.utils import convert_to_numpy
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import relabel_sequential
from skimage.transform import downscale_local_mean

from bundle.atomic import atomic_path
from bundle.data import DataFileError, stem_of, suffix_of, write_image
from bundle.targets import as_label_map
from bundle.writers import NUCLEUS_COLUMNS, NUCLEUS_RGB, nuclei_geojson, nucleus_table

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")
"""Slide files :func:`slide_paths` picks from a folder (all readable by the tifffile backend)."""

BACKENDS = ("tifffile", "openslide", "cucim")
AUTO_BACKEND_ORDER = ("cucim", "openslide")
"""Tried in this order by ``backend="auto"``: cuCIM (GPU-accelerated decoding), then OpenSlide
(the widest range of vendor formats); tifffile, always installed, when neither is."""

GLASS_VALUE = 255
"""Fill for TIFF tiles a slide leaves out (empty segments): white, as bare glass."""

THUMBNAIL_BLOCK = 1024
"""Side, in pixels of the thumbnail's source level, of the blocks the thumbnail is read in."""

SATURATION_BINS = 256
"""Histogram bins of saturation (0..1) for Otsu's threshold."""

HALF_PIXEL = 0.5
"""Pixel centres lie at integers: level pixel ``i`` spans ``[i - 0.5, i + 0.5)``, so its centre is
level-0 coordinate ``(i + 0.5) * downsample - 0.5``."""


# ----------------------------------------------------------------------------- opening


def resolve_backend(backend: str) -> str:
    """The WSIReader backend to use: ``backend`` itself, or for ``"auto"`` the first installed of
    :data:`AUTO_BACKEND_ORDER`, else ``"tifffile"``.

    Raises:
        ValueError: an unknown name, or a named backend whose package is not installed.
    """
    name = backend.lower()
    if name == "auto":
        return next((b for b in AUTO_BACKEND_ORDER if importlib.util.find_spec(b) is not None), "tifffile")
    if name not in BACKENDS:
        raise ValueError(f"unknown whole-slide backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if importlib.util.find_spec(name) is None:
        raise ValueError(f"whole-slide backend {name!r} is not installed (pip install {name}); or use 'tifffile' or 'auto'")
    return name


def open_slide(path: str | os.PathLike, backend: str = "tifffile") -> tuple[WSIReader, object]:
    """Open a slide with MONAI's ``WSIReader``: ``(reader, wsi)``; close ``wsi`` when done
    (or use :func:`opened_slide`).

    ``backend``: ``"tifffile"`` (TIFF/SVS, always available), ``"openslide"``, ``"cucim"``, or
    ``"auto"`` (see :func:`resolve_backend`).

    Raises:
        DataFileError: naming the file, when it is missing or the backend cannot read it, or
            (tifffile) when level 0 is not 8-bit RGB.
    """
    path, name = Path(path), resolve_backend(backend)
    if not path.is_file():
        raise DataFileError(path, "no such slide file")
    reader = WSIReader(backend=name)
    try:
        wsi = reader.read(str(path))
    except Exception as error:  # each backend raises its own types (TiffFileError, OpenSlideError, ...)
        problem = f"cannot open as a whole slide with the {name} backend ({type(error).__name__}: {error})"
        raise DataFileError(path, problem) from None
    if name == "tifffile":
        _check_tiff_rgb(path, wsi)
    return reader, wsi


@contextmanager
def opened_slide(path: str | os.PathLike, backend: str = "tifffile") -> Iterator[tuple[WSIReader, object]]:
    """:func:`open_slide` as a context manager that closes the slide on exit."""
    reader, wsi = open_slide(path, backend)
    try:
        yield reader, wsi
    finally:
        close = getattr(wsi, "close", None)
        if close is not None:
            close()


def slide_paths(
    source: str | os.PathLike | Sequence[str | os.PathLike], suffixes: Sequence[str] = SLIDE_SUFFIXES
) -> list[Path]:
    """Slides to process: a slide file, a folder (its files ending in ``suffixes``, sorted), or a list of either.

    Raises:
        FileNotFoundError: a path that does not exist, or no slide found.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found: list[Path] = []
    for item in map(Path, sources):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            found += sorted(p for p in item.iterdir() if p.is_file() and suffix_of(p) in suffixes)
        else:
            raise FileNotFoundError(f"{item}: no such slide file or folder")
    if not found:
        raise FileNotFoundError(f"{', '.join(map(str, sources))}: no slides found (looked for {', '.join(suffixes)})")
    return found


# ----------------------------------------------------------------------------- geometry


def _is_tifffile(reader: WSIReader) -> bool:
    return reader.backend == "tifffile"


def _tiff_levels(wsi) -> list:
    """Pyramid pages, full resolution first, as tifffile parses them (pages, SubIFDs, SVS, OME).

    MONAI's tifffile backend counts top-level pages instead, which misses SubIFD pyramids and
    takes an SVS thumbnail for level 1; tifffile's own pyramid is used for every level query.
    """
    return [level.keyframe for level in wsi.series[0].levels]


def _check_tiff_rgb(path: Path, wsi) -> None:
    page = _tiff_levels(wsi)[0]
    if page.samplesperpixel < 3 or page.dtype != np.uint8:
        problem = f"expected an 8-bit RGB slide, level 0 has {page.samplesperpixel} sample(s) of {page.dtype}"
        raise DataFileError(path, problem)


def slide_path_of(reader: WSIReader, wsi) -> str:
    """The file the slide was opened from (for messages)."""
    return reader.get_file_path(wsi)


def level_count(reader: WSIReader, wsi) -> int:
    """Number of resolution levels."""
    return len(_tiff_levels(wsi)) if _is_tifffile(reader) else reader.get_level_count(wsi)


def _checked_level(reader: WSIReader, wsi, level: int) -> int:
    count = level_count(reader, wsi)
    if not 0 <= level < count:
        raise DataFileError(slide_path_of(reader, wsi), f"has levels 0..{count - 1}, level {level} was asked for")
    return level


def level_shape(reader: WSIReader, wsi, level: int) -> tuple[int, int]:
    """(h, w) of ``level`` in its own pixels."""
    level = _checked_level(reader, wsi, level)
    if _is_tifffile(reader):
        page = _tiff_levels(wsi)[level]
        return int(page.imagelength), int(page.imagewidth)
    return tuple(int(n) for n in reader.get_size(wsi, level))


def level_downsample(reader: WSIReader, wsi, level: int) -> float:
    """Level-0 pixels per pixel of ``level`` (1.0 at level 0), from the heights as MONAI computes it."""
    if _is_tifffile(reader):
        return level_shape(reader, wsi, 0)[0] / level_shape(reader, wsi, level)[0]
    return float(reader.get_downsample_ratio(wsi, _checked_level(reader, wsi, level)))


def level_mpp(reader: WSIReader, wsi, level: int) -> float:
    """Microns per pixel of ``level`` (mean of the two axes): level 0's, times the downsample.

    Raises:
        DataFileError: the slide carries no usable resolution metadata.
    """
    try:
        mpp0 = float(np.mean(reader.get_mpp(wsi, 0)))
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as error:
        problem = f"no usable resolution (microns per pixel) metadata ({error}); choose a level instead"
        raise DataFileError(slide_path_of(reader, wsi), problem) from None
    return mpp0 * level_downsample(reader, wsi, level)


def level_for_mpp(reader: WSIReader, wsi, target_mpp: float, rtol: float = 0.25) -> int:
    """The level whose resolution is closest to ``target_mpp`` microns per pixel; no resampling.

    Args:
        rtol: largest accepted relative difference ``|mpp - target| / target``.

    Raises:
        DataFileError: no usable mpp metadata, or no level within ``rtol`` (levels' mpp listed).
    """
    mpps = [level_mpp(reader, wsi, level) for level in range(level_count(reader, wsi))]
    errors = [abs(mpp - target_mpp) / target_mpp for mpp in mpps]
    best = int(np.argmin(errors))
    if errors[best] > rtol:
        listing = ", ".join(f"{mpp:.3g}" for mpp in mpps)
        problem = f"no level within {rtol:.0%} of {target_mpp} um/px (levels: {listing} um/px)"
        raise DataFileError(slide_path_of(reader, wsi), problem)
    return best


# ----------------------------------------------------------------------------- reading


def read_region(reader: WSIReader, wsi, origin: tuple[int, int], size: tuple[int, int], level: int) -> np.ndarray:
    """(3, h, w) uint8 RGB of the ``size`` (h, w) region at ``origin`` (row, col), both in pixels of ``level``.

    The region must lie inside the level. openslide and cuCIM read it through
    ``WSIReader.get_data`` (level-0 location); tifffile through :func:`read_tiff_region`.

    Raises:
        DataFileError: naming the file and region, when it is outside the level or cannot be decoded.
    """
    path = slide_path_of(reader, wsi)
    height, width = level_shape(reader, wsi, level)
    (row, col), (h, w) = origin, size
    if h <= 0 or w <= 0 or row < 0 or col < 0 or row + h > height or col + w > width:
        raise DataFileError(path, f"region {h}x{w} at (row {row}, col {col}) lies outside level {level} ({height}x{width})")
    try:
        if _is_tifffile(reader):
            rgb = read_tiff_region(_tiff_levels(wsi)[level], origin, size)[..., :3].transpose(2, 0, 1)
        else:
            scale = level_downsample(reader, wsi, level)
            location = (round(row * scale), round(col * scale))
            rgb, _ = reader.get_data(wsi, location=location, size=size, level=level)
    except Exception as error:  # codec and backend errors of many types
        problem = f"cannot read region {h}x{w} at (row {row}, col {col}) of level {level} ({type(error).__name__}: {error})"
        raise DataFileError(path, problem) from None
    return np.ascontiguousarray(convert_to_numpy(rgb), dtype=np.uint8)


def read_tiff_region(page, origin: tuple[int, int], size: tuple[int, int], fill: int = GLASS_VALUE) -> np.ndarray:
    """(h, w, samples) array of one region of a tifffile page, decoding only the tiles or strips it covers.

    Written here because MONAI's tifffile backend decodes the whole level for every patch
    (a full-resolution level of a slide is tens of GB) and tifffile's own region reads need
    zarr, which is not a dependency. Bytes are read with tifffile's ``read_segments`` and
    decoded with the page's own ``decode`` (every TIFF compression tifffile supports).
    A striped page is read in whole-width strips. Segments the file leaves out are ``fill``.
    """
    (top, left), (height, width) = origin, size
    if page.is_tiled:
        seg_h, seg_w = page.tilelength, page.tilewidth
    else:
        seg_h, seg_w = page.rowsperstrip or page.imagelength, page.imagewidth
    across, down = -(-page.imagewidth // seg_w), -(-page.imagelength // seg_h)
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    indices = [
        (plane * down + row) * across + col
        for plane in range(planes)
        for row in range(top // seg_h, -(-(top + height) // seg_h))
        for col in range(left // seg_w, -(-(left + width) // seg_w))
    ]
    offsets = [page.dataoffsets[i] if i < len(page.dataoffsets) else 0 for i in indices]
    counts = [page.databytecounts[i] if i < len(page.databytecounts) else 0 for i in indices]
    out = np.full((height, width, page.samplesperpixel), fill, dtype=page.dtype)
    decode, fh = page.decode, page.parent.filehandle
    for data, index in fh.read_segments(offsets, counts, indices=indices, sort=True):
        segment, (sample, _, y, x, _), _ = decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        if segment is not None:
            _paste(out, segment[0], (y - top, x - left), sample)
    return out


def _paste(out: np.ndarray, segment: np.ndarray, offset: tuple[int, int], sample: int) -> None:
    """Copy the part of ``segment`` (l, w, c) placed at ``offset`` (row, col) of ``out`` that falls inside ``out``."""
    (dy, dx), (height, width) = offset, out.shape[:2]
    y0, x0 = max(dy, 0), max(dx, 0)
    y1, x1 = min(dy + segment.shape[0], height), min(dx + segment.shape[1], width)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1, sample : sample + segment.shape[2]] = segment[y0 - dy : y1 - dy, x0 - dx : x1 - dx]


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
            thumbnail[row // factor : row // factor + small.shape[0], col // factor : col // factor + small.shape[1]] = small
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
    rgb: np.ndarray,
    threshold: float | None = None,
    auto_range: tuple[float, float] = (0.02, 0.15),
    min_area: int = 16,
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
        counts, edges = np.histogram(saturation, bins=SATURATION_BINS, range=(0.0, 1.0))  # blockwise: no image-sized copies
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


# ----------------------------------------------------------------------------- tiling


def check_tiling(tile_size: int, overlap: int) -> None:
    """ValueError unless ``0 <= overlap < tile_size``."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"need 0 <= overlap < tile_size, got tile_size={tile_size}, overlap={overlap}")


def _origins(length: int, tile_size: int, stride: int) -> list[int]:
    """0, stride, 2 * stride, ... up to the first window that reaches ``length``."""
    return [k * stride for k in range(1 + max(0, -(-(length - tile_size) // stride)))]


def tile_window(origin: tuple[int, int], slide_shape: tuple[int, int], tile_size: int) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the tile at ``origin``, clipped to ``slide_shape`` (h, w); ends exclusive."""
    return origin[0], origin[1], min(origin[0] + tile_size, slide_shape[0]), min(origin[1] + tile_size, slide_shape[1])


def _core_span(start: int, length: int, tile_size: int, overlap: int) -> tuple[int, int]:
    margin = overlap // 2
    first = 0 if start == 0 else start + margin
    last = length if start + tile_size >= length else start + tile_size - overlap + margin
    return first, last


def tile_core(
    origin: tuple[int, int], slide_shape: tuple[int, int], tile_size: int, overlap: int
) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the core of the tile at ``origin``: the nuclei it owns have their centroid there.

    The window minus ``overlap // 2`` on an interior leading side and ``overlap - overlap // 2``
    on an interior trailing side, so that the cores of all :func:`tile_grid` origins
    (without a mask) partition the slide.
    """
    rows = _core_span(origin[0], slide_shape[0], tile_size, overlap)
    cols = _core_span(origin[1], slide_shape[1], tile_size, overlap)
    return rows[0], cols[0], rows[1], cols[1]


def tile_grid(
    slide_shape: tuple[int, int],
    tile_size: int,
    overlap: int,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float = 1.0,
) -> list[tuple[int, int]]:
    """(row, col) origins, row-major, of the ``tile_size`` windows (stride ``tile_size - overlap``)
    covering ``slide_shape`` (h, w) that touch tissue.

    ``slide_shape`` and the origins are in pixels of the level the tiles are read at (level 0
    by default); ``mask_downsample`` is that level's pixels per ``tissue_mask`` pixel. Without
    a mask every window is returned. Windows at the bottom and right edges are clipped
    (:func:`tile_window`).
    """
    check_tiling(tile_size, overlap)
    stride = tile_size - overlap
    rows, cols = _origins(slide_shape[0], tile_size, stride), _origins(slide_shape[1], tile_size, stride)
    origins = [(r, c) for r in rows for c in cols]
    if tissue_mask is None:
        return origins
    return [o for o in origins if mask_footprint(tissue_mask, tile_window(o, slide_shape, tile_size), mask_downsample).any()]


def mask_footprint(mask: np.ndarray, window: tuple[int, int, int, int], downsample: float) -> np.ndarray:
    """The pixels of a low-resolution ``mask`` that overlap ``window`` (row0, col0, row1, col1), at least one.

    ``window`` is in pixels of a level with ``downsample`` of those per mask pixel.
    """
    r0, c0, r1, c1 = window
    first_row, first_col = int(r0 // downsample), int(c0 // downsample)
    last_row, last_col = max(first_row + 1, math.ceil(r1 / downsample)), max(first_col + 1, math.ceil(c1 / downsample))
    return mask[first_row:last_row, first_col:last_col]


def owned_nuclei(
    instances: np.ndarray, window: tuple[int, int, int, int], core: tuple[int, int, int, int], slide_shape: tuple[int, int]
) -> np.ndarray:
    """(h, w) instance map of one window keeping only the nuclei the window owns (ids unchanged, others 0).

    Owned: not touching an interior edge of ``window`` (an edge not on the slide border),
    and centroid, in slide pixels, inside ``core`` (see the module docstring for why this
    keeps each nucleus once and whole). ``window``, ``core``: (row0, col0, row1, col1) in
    the pixels of ``slide_shape`` (h, w).

    The centroid test compares ``core_start * area <= sum of coordinates < core_end * area``
    on integer sums (exact in float64 below 2**53), so a centroid on a core border goes to
    exactly one window. scikit-image's ``clear_border`` is not used: it clears connected
    pieces rather than ids, and only the interior edges count here.
    """
    labels = as_label_map(instances)
    area = np.bincount(labels.ravel())
    owned = area > 0
    owned[_ids_on_interior_edges(labels, window, slide_shape)] = False
    for axis, (start, first, last) in enumerate(((window[0], core[0], core[2]), (window[1], core[1], core[3]))):
        coordinate = np.indices(labels.shape, sparse=True)[axis]
        total = np.bincount(labels.ravel(), weights=np.broadcast_to(coordinate, labels.shape).ravel(), minlength=area.size)
        total += start * area
        owned &= (first * area <= total) & (total < last * area)
    owned[0] = False
    return np.where(owned[labels], labels, 0).astype(np.int32)


def _ids_on_interior_edges(
    labels: np.ndarray, window: tuple[int, int, int, int], slide_shape: tuple[int, int]
) -> np.ndarray:
    """Ids on the edges of ``labels`` that are not on the slide border."""
    edges = []
    if window[0] > 0:
        edges.append(labels[0])
    if window[2] < slide_shape[0]:
        edges.append(labels[-1])
    if window[1] > 0:
        edges.append(labels[:, 0])
    if window[3] < slide_shape[1]:
        edges.append(labels[:, -1])
    return np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- outputs


def slide_output_paths(output_dir: str | os.PathLike, slide: str | os.PathLike) -> dict[str, Path]:
    """``{"geojson", "csv", "overview"}`` -> ``<stem>.geojson``, ``<stem>_nuclei.csv``, ``<stem>_overview.png``."""
    output_dir, stem = Path(output_dir), stem_of(slide)
    return {
        "geojson": output_dir / f"{stem}.geojson",
        "csv": output_dir / f"{stem}_nuclei.csv",
        "overview": output_dir / f"{stem}_overview.png",
    }


class SlideOutputs:
    """Streams one slide's nuclei to GeoJSON and CSV and marks them on an overview; use as a context manager.

    Both files are written to temporary names and renamed into place when the ``with``
    block ends without error (the overview PNG is written then too); an error leaves no
    partial file. Memory: the overview image plus one tile's records at a time.

    Args:
        paths: from :func:`slide_output_paths`.
        overview: (h, w, 3) uint8 thumbnail to mark nucleus centroids on (copied).
        overview_downsample: level-0 pixels per overview pixel.
        tolerance: outline simplification in pixels (see :func:`bundle.writers.instance_polygons`).
        color: RGB of the centroid marks and of the QuPath classification.
    """

    def __init__(
        self,
        paths: dict[str, Path],
        overview: np.ndarray,
        overview_downsample: float,
        tolerance: float = 0.5,
        color: Sequence[int] = NUCLEUS_RGB,
    ):
        self.paths, self.overview, self.overview_downsample = paths, overview.copy(), overview_downsample
        self.tolerance, self.color = tolerance, tuple(color)
        self.count = 0
        self._stack = ExitStack()

    def __enter__(self) -> "SlideOutputs":
        with ExitStack() as stack:
            geojson_tmp = stack.enter_context(atomic_path(self.paths["geojson"]))
            csv_tmp = stack.enter_context(atomic_path(self.paths["csv"]))
            self._geojson = stack.enter_context(open(geojson_tmp, "w", encoding="utf-8"))
            csv_file = stack.enter_context(open(csv_tmp, "w", newline="", encoding="utf-8"))
            self._csv = csv.DictWriter(csv_file, fieldnames=NUCLEUS_COLUMNS)
            self._geojson.write('{"type": "FeatureCollection", "features": [\n')
            self._csv.writeheader()
            self._stack = stack.pop_all()
        return self

    def add(self, rgb: np.ndarray, owned: np.ndarray, origin: tuple[int, int], downsample: float) -> int:
        """Record the nuclei of ``owned`` (h, w) ids, a window of (3, h, w) ``rgb`` at ``origin``
        (row, col) of a level with ``downsample``; returns how many. They get slide-wide ids."""
        ids = relabel_sequential(owned, offset=self.count + 1)[0] if owned.any() else owned
        geojson = nuclei_geojson(ids, offset=(origin[1], origin[0]), tolerance=self.tolerance, color=self.color)
        rows = nucleus_table(np.ascontiguousarray(rgb.transpose(1, 2, 0)), ids)
        for feature in geojson["features"]:
            _scale_feature(feature, downsample)
            self._geojson.write(("" if self.count == 0 else ",\n") + json.dumps(feature, allow_nan=False))
            self.count += 1
        for row in rows:
            self._csv.writerow(_row_in_slide_pixels(row, origin, downsample))
            self._mark(row)
        return len(rows)

    def _mark(self, row: dict) -> None:
        """Colour the overview pixel holding the nucleus centroid (level-0 pixel coordinates)."""
        y = round((row["centroid_y"] + HALF_PIXEL) / self.overview_downsample - HALF_PIXEL)
        x = round((row["centroid_x"] + HALF_PIXEL) / self.overview_downsample - HALF_PIXEL)
        self.overview[min(max(y, 0), self.overview.shape[0] - 1), min(max(x, 0), self.overview.shape[1] - 1)] = self.color

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._geojson.write("\n]}\n")
        finally:
            self._stack.__exit__(kind, error, traceback)
        if kind is None:
            write_image(self.paths["overview"], self.overview)


def _scale_feature(feature: dict, downsample: float) -> None:
    """Scale a QuPath feature's coordinates from level pixels to level-0 pixels (in place).

    QuPath coordinates have pixel edges at integers, so they scale by ``downsample`` alone.
    """
    if downsample != 1.0:
        geometry = feature["geometry"]
        geometry["coordinates"] = [[[x * downsample, y * downsample] for x, y in ring] for ring in geometry["coordinates"]]


def _row_in_slide_pixels(row: dict, origin: tuple[int, int], downsample: float) -> dict:
    """A :func:`bundle.writers.nucleus_table` row of a tile at ``origin`` (row, col) of a level with
    ``downsample`` -> level-0 pixels: centroid (pixel centres at integers), area (rounded), perimeter."""
    return {
        **row,
        "centroid_x": (row["centroid_x"] + origin[1] + HALF_PIXEL) * downsample - HALF_PIXEL,
        "centroid_y": (row["centroid_y"] + origin[0] + HALF_PIXEL) * downsample - HALF_PIXEL,
        "area": int(round(row["area"] * downsample * downsample)),
        "perimeter": row["perimeter"] * downsample,
    }


# ----------------------------------------------------------------------------- driver


PredictTile = Callable[[np.ndarray], np.ndarray]
"""(3, h, w) uint8 RGB tile -> (h, w) int instance ids (0 background): network and post-processing."""


def _tile_instances(predict_tile: PredictTile, rgb: np.ndarray, slide: str, origin: tuple[int, int]) -> np.ndarray:
    """``predict_tile(rgb)`` as an (h, w) label map matching the tile; ValueError naming the slide and tile otherwise."""
    where = f"{slide}: tile at (row {origin[0]}, col {origin[1]})"
    try:
        labels = as_label_map(predict_tile(rgb))
    except ValueError as error:
        raise ValueError(f"{where}: predict_tile returned an unusable map ({error})") from None
    if labels.shape != rgb.shape[1:]:
        raise ValueError(f"{where} is {rgb.shape[1:]} but predict_tile returned {labels.shape}")
    return labels


def segment_slide(
    path: str | os.PathLike,
    predict_tile: PredictTile,
    output_dir: str | os.PathLike,
    tile_size: int = 1024,
    overlap: int = 128,
    level: int = 0,
    backend: str = "tifffile",
    tissue_threshold: float | None = None,
    min_tissue_area: int = 16,
    overview_max_side: int = 2048,
    tolerance: float = 0.5,
) -> dict:
    """Segment every nucleus of a slide, tile by tile, and write its outputs to ``output_dir``.

    ``<stem>.geojson`` (QuPath detections, level-0 pixels), ``<stem>_nuclei.csv`` (one row per
    nucleus, centroid/area/perimeter in level-0 pixels) and ``<stem>_overview.png`` (the
    thumbnail with each nucleus centroid marked). Args:

    - predict_tile: (3, h, w) uint8 tile -> (h, w) instance ids, e.g. :class:`NetworkTilePredictor`.
    - tile_size, overlap: window side and overlap in pixels of ``level``; ``overlap`` must exceed
      the largest nucleus diameter + 2 px for each nucleus to come out once and whole (module docstring).
    - level: pyramid level the tiles are read and segmented at (0 = full resolution).
    - backend: see :func:`open_slide`.
    - tissue_threshold, min_tissue_area: see :func:`tissue_mask_from_rgb`; only windows touching tissue run.
    - overview_max_side: longest side of the thumbnail (tissue mask and overview), pixels.
    - tolerance: outline simplification in level pixels.

    Returns ``{"slide", "tiles", "tiles_total", "nuclei", **output paths}``.
    """
    check_tiling(tile_size, overlap)
    with opened_slide(path, backend) as (reader, wsi):
        shape, downsample = level_shape(reader, wsi, level), level_downsample(reader, wsi, level)
        thumbnail, thumb_downsample = slide_thumbnail(reader, wsi, max_side=overview_max_side)
        mask = tissue_mask_from_rgb(thumbnail, tissue_threshold, min_area=min_tissue_area)
        origins = tile_grid(shape, tile_size, overlap, mask, thumb_downsample / downsample)
        total = len(tile_grid(shape, tile_size, overlap))
        logger.info("%s: %d of %d tiles of %d px at level %d touch tissue", path, len(origins), total, tile_size, level)
        paths = slide_output_paths(output_dir, path)
        with SlideOutputs(paths, thumbnail, thumb_downsample, tolerance) as outputs:
            for origin in origins:
                window = tile_window(origin, shape, tile_size)
                rgb = read_region(reader, wsi, origin, (window[2] - window[0], window[3] - window[1]), level)
                instances = _tile_instances(predict_tile, rgb, str(path), origin)
                owned = owned_nuclei(instances, window, tile_core(origin, shape, tile_size, overlap), shape)
                outputs.add(rgb, owned, origin, downsample)
    logger.info("%s: %d nuclei -> %s", path, outputs.count, paths["geojson"])
    counts = {"slide": str(path), "tiles": len(origins), "tiles_total": total, "nuclei": outputs.count}
    return {**counts, **{name: str(output) for name, output in paths.items()}}


def segment_slides(
    slides: Iterable[str | os.PathLike], predict_tile: PredictTile, output_dir: str | os.PathLike, **options
) -> list[dict]:
    """:func:`segment_slide` for each slide (``options`` passed on); an unreadable slide is logged and skipped.

    Raises:
        SystemExit: after the other slides, listing the slides that could not be read.
    """
    summaries, failures = [], {}
    for slide in slides:
        try:
            summaries.append(segment_slide(slide, predict_tile, output_dir, **options))
        except DataFileError as error:
            failures[str(slide)] = str(error)
            logger.error("skipping slide: %s", error)
    if failures:
        listing = "\n".join(f"  {error}" for error in failures.values())
        raise SystemExit(f"{len(failures)} slide(s) could not be read and were skipped:\n{listing}")
    return summaries


# ----------------------------------------------------------------------------- network adapter


def load_network_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load ``path`` into ``network`` strictly and return it.

    Accepts a plain state dict or a MONAI ``CheckpointSaver`` file holding ``{"network": ...}``
    (as ``CheckpointLoader`` does, through ignite's ``Checkpoint.load_objects``).

    Raises:
        FileNotFoundError, ValueError: naming the file, when missing or not loadable into ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model weights file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        Checkpoint.load_objects(to_load={"network": network}, checkpoint=checkpoint, strict=True)
    except Exception as error:  # torch and ignite raise several types for corrupt or mismatched files
        raise ValueError(f"{path}: cannot load into the network ({type(error).__name__}: {error})") from None
    return network


class NetworkTilePredictor:
    """The ``predict_tile`` of :func:`segment_slide` for the bundle network.

    (3, h, w) uint8 RGB -> scaled to [0, 1] (as configs/inference.json does) -> ``inferer``
    (e.g. MONAI ``SlidingWindowInferer``) over ``network`` in eval mode, without gradients,
    under autocast when ``amp`` -> softmax over the 3 classes -> ``postprocess`` (e.g.
    :class:`bundle.postprocess.ClassMapToInstances`) -> (h, w) int32 instance ids.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable,
        postprocess: Callable,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ):
        self.network, self.inferer, self.postprocess = network, inferer, postprocess
        self.device, self.amp = torch.device(device), amp

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        image = torch.as_tensor(np.ascontiguousarray(rgb), device=self.device)[None].float().div_(255.0)
        self.network.eval()
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            logits = self.inferer(image, self.network)
            probabilities = torch.softmax(torch.as_tensor(logits).float(), dim=1)[0].cpu()
        return as_label_map(self.postprocess(probabilities)).astype(np.int32)


# ----------------------------------------------------------------------------- pretraining tiles


def tissue_tile_origins(
    mask: np.ndarray, mask_downsample: float, slide_shape: tuple[int, int], tile_size: int, min_tissue_fraction: float = 0.5
) -> list[tuple[int, int]]:
    """(row, col) origins of the non-overlapping ``tile_size`` tiles inside ``slide_shape`` (h, w)
    whose mask footprint is at least ``min_tissue_fraction`` tissue (0..1).

    Pixels of the tiles' level throughout; ``mask_downsample``: level pixels per mask pixel.
    """
    rows, cols = range(0, slide_shape[0] - tile_size + 1, tile_size), range(0, slide_shape[1] - tile_size + 1, tile_size)
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
                reader, wsi, tile_size, tiles_per_slide, level, rng, tissue_threshold, min_tissue_fraction, min_tissue_area
            )
            paths = cache_tiles(reader, wsi, origins, tile_size, level, Path(cache_dir) / f"level{level}_{tile_size}px")
        if not paths:
            fraction = f"{min_tissue_fraction:.0%}"
            logger.warning("%s: no %d px tile at level %d is %s tissue; slide skipped", slide, tile_size, level, fraction)
        items += [{"image": str(p)} for p in paths]
    if not items:
        raise FileNotFoundError(f"{slides}: no tile of {tile_size} px with {min_tissue_fraction:.0%} tissue in any slide")
    return items
