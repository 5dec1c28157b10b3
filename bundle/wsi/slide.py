"""Whole-slide images: open a slide, its pyramid geometry (levels, mpp), and read regions.

Conventions: see :mod:`bundle.wsi`. Memory: a region is read alone, and for TIFF only the
TIFF tiles or strips it covers are decoded (:func:`read_tiff_region`).
"""

import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from bundle.data import DataFileError, suffix_of
from monai.data import WSIReader
from monai.utils import convert_to_numpy

#: Slide files :func:`slide_paths` picks from a folder (all readable by the tifffile backend).
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs")

BACKENDS = ("tifffile", "openslide", "cucim")
#: Tried in this order by ``backend="auto"``: cuCIM (GPU-accelerated decoding), then OpenSlide
#: (the widest range of vendor formats); tifffile, always installed, when neither is.
AUTO_BACKEND_ORDER = ("cucim", "openslide")

#: Fill for TIFF tiles a slide leaves out (empty segments): white, as bare glass.
GLASS_VALUE = 255


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
        raise ValueError(
            f"whole-slide backend {name!r} is not installed (pip install {name}); or use 'tifffile' or 'auto'"
        )
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
        raise DataFileError(
            path, f"region {h}x{w} at (row {row}, col {col}) lies outside level {level} ({height}x{width})"
        )
    try:
        if _is_tifffile(reader):
            rgb = read_tiff_region(_tiff_levels(wsi)[level], origin, size)[..., :3].transpose(2, 0, 1)
        else:
            scale = level_downsample(reader, wsi, level)
            location = (round(row * scale), round(col * scale))
            rgb, _ = reader.get_data(wsi, location=location, size=size, level=level)
    except Exception as error:  # codec and backend errors of many types
        problem = (
            f"cannot read region {h}x{w} at (row {row}, col {col}) of level {level} ({type(error).__name__}: {error})"
        )
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
