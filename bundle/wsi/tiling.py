"""Tiling whole slides into overlapping windows, and stitching the nuclei segmented in them.

Conventions: see :mod:`bundle.wsi`.

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
"""

import math
from collections.abc import Callable

import numpy as np
from bundle.targets import as_label_map
from skimage.segmentation import relabel_sequential

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
    return [
        o for o in origins if mask_footprint(tissue_mask, tile_window(o, slide_shape, tile_size), mask_downsample).any()
    ]


def mask_footprint(mask: np.ndarray, window: tuple[int, int, int, int], downsample: float) -> np.ndarray:
    """The pixels of a low-resolution ``mask`` that overlap ``window`` (row0, col0, row1, col1), at least one.

    ``window`` is in pixels of a level with ``downsample`` of those per mask pixel.
    """
    r0, c0, r1, c1 = window
    first_row, first_col = int(r0 // downsample), int(c0 // downsample)
    last_row, last_col = max(first_row + 1, math.ceil(r1 / downsample)), max(first_col + 1, math.ceil(c1 / downsample))
    return mask[first_row:last_row, first_col:last_col]


def owned_nuclei(
    instances: np.ndarray,
    window: tuple[int, int, int, int],
    core: tuple[int, int, int, int],
    slide_shape: tuple[int, int],
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
        total = np.bincount(
            labels.ravel(), weights=np.broadcast_to(coordinate, labels.shape).ravel(), minlength=area.size
        )
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


# ----------------------------------------------------------------------------- stitching in memory


def instances_by_grid(
    predict_window: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile_size: int, overlap: int
) -> np.ndarray:
    """(C, H, W) image -> (H, W) int32 nucleus ids, segmented window by window and stitched.

    ``predict_window`` maps a (C, h, w) window to (h, w) ids. The windows are those of
    :func:`tile_grid`; each nucleus comes from the window that owns it (:func:`owned_nuclei`),
    ids 1..N in the order found. Where owned nuclei of two windows overlap (their segmentations
    differ a little), the pixel keeps the first. Memory: the ids map plus one window's work.
    """
    shape = tuple(image.shape[-2:])
    ids, count = np.zeros(shape, np.int32), 0
    for origin in tile_grid(shape, tile_size, overlap):
        window = r0, c0, r1, c1 = tile_window(origin, shape, tile_size)
        owned = owned_nuclei(
            predict_window(image[:, r0:r1, c0:c1]), window, tile_core(origin, shape, tile_size, overlap), shape
        )
        if owned.any():
            owned = relabel_sequential(owned, offset=count + 1)[0]
            count = int(owned.max())
            region = ids[r0:r1, c0:c1]
            free = (owned > 0) & (region == 0)
            region[free] = owned[free]
    if (np.bincount(ids.ravel(), minlength=count + 1)[1:] == 0).any():  # a nucleus lost every pixel to a neighbour
        ids = relabel_sequential(ids)[0].astype(np.int32)
    return ids
