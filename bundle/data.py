"""Readers and writers for H&E tiles and nucleus instance label maps.

Every reader returns plain numpy arrays in one convention, whatever the file format:

- images: ``(H, W, 3)`` uint8 RGB;
- instance label maps: ``(H, W)`` int32 (int64 when an id reaches 2**31), 0 = background,
  each nucleus one positive id; ids need not be contiguous.

Every failure to read a file raises :class:`DataFileError`, whose message names the file
and the problem. Writers go through :func:`bundle.atomic.atomic_path`, so an interrupted
write never leaves half a file.
"""

import gzip
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as SafeElementTree
import nibabel
import numpy as np
import tifffile
from bundle.atomic import atomic_path
from nibabel.filebasedimages import ImageFileError
from PIL import Image
from skimage.draw import polygon

#: Default limit on the pixels (H * W) of an image, or the values of a label map, that the readers
#: accept; checked on the file header, before anything is decoded or allocated. 2**28 admits a
#: 16384 x 16384 tile (0.8 GB as RGB uint8) and refuses a header claiming 100000 x 100000.
MAX_PIXELS = 2**28

#: XML coordinate of the centre of pixel 0 (row or column) in Aperio ImageScope annotations.
#:
#: The MoNuSeg organisers rasterise the XML with MATLAB's ``poly2mask``, whose first pixel
#: centre is at coordinate 1. Filling with that origin reproduces the instance masks in
#: ``../shared/data/monuseg/train/masks`` (foreground IoU 0.98-0.995 on the 13 tiles with XML);
#: origin 0 shifts every nucleus by one pixel down and right (IoU 0.84-0.91).
APERIO_XML_ORIGIN = 1.0

#: Largest |X| or |Y| of an Aperio XML vertex that is used (no slide is 10**9 px across).
#:
#: Beyond about 9.2e18 scikit-image's ``polygon`` overflows and silently fills nothing, so a
#: region reaching further is skipped, with the warning of unusable regions.
MAX_XML_COORDINATE = 1e9
# Regions filling more than this share of the tile AND this many pixels are not nuclei
# (the largest nucleus of the 30 MoNuSeg 2018 training masks covers 5,147 px; a tile has 10^6).
MAX_NUCLEUS_FRACTION, MAX_NUCLEUS_PIXELS = 0.01, 10_000

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".nii", ".nii.gz", ".npy")

_PIL_COLOUR_MODES = ("P", "PA", "CMYK", "YCbCr")
_DECODER_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    LookupError,
    EOFError,
    SyntaxError,
    struct.error,
    zlib.error,
    ImageFileError,
    Image.DecompressionBombError,
)

T = TypeVar("T")


class DataFileError(ValueError):
    """A data file that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(str(path), problem)
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case file suffix, with ``.nii.gz`` kept whole: ``"a/B.NII.GZ"`` -> ``".nii.gz"``."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | os.PathLike) -> str:
    """File name without its suffix (``.nii.gz`` removed whole)."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))]


# ----------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an RGB tile as ``(H, W, 3)`` uint8.

    TIFF is read with tifffile (first page), PNG/JPEG with Pillow. Normalisation:
    an alpha channel is dropped; uint16 is rescaled by ``round(v / 257)`` (full range
    0..65535 -> 0..255, exact for 8-bit data stored as ``v * 257``); float in [0, 1] is
    scaled by 255 and rounded; palette/CMYK/YCbCr images are converted to RGB.
    Images whose header claims more than ``max_pixels`` pixels are refused before decoding.

    Raises:
        DataFileError: empty, truncated or undecodable file, grayscale or other
            non-RGB layout, unsupported dtype, or too many pixels.
    """
    path = Path(path)
    _require_nonempty(path)
    suffix = suffix_of(path)
    if suffix in TIFF_SUFFIXES:
        array = _decoded(path, lambda: _read_tiff_image(path, max_pixels))
    elif suffix in IMAGE_SUFFIXES:
        array = _decoded(path, lambda: _read_pil_image(path, max_pixels))
    else:
        raise DataFileError(path, f"unsupported image suffix {suffix!r} (expected one of {IMAGE_SUFFIXES})")
    return _as_rgb_uint8(path, array)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB array atomically: TIFF (zlib) or PNG, by suffix."""
    path = Path(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataFileError(path, f"expected an (H, W, 3) uint8 image to write, got {rgb.shape} {rgb.dtype}")
    suffix = suffix_of(path)
    if suffix not in (*TIFF_SUFFIXES, ".png"):
        raise DataFileError(path, f"cannot write an image as {suffix!r} (use .tif or .png)")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            Image.fromarray(rgb).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, rgb, photometric="rgb", compression="zlib")


def _read_tiff_image(path: Path, max_pixels: int) -> np.ndarray:
    """First TIFF page as stored: ``(H, W)``, ``(H, W, S)`` or, planar, ``(S, H, W)`` -> ``(H, W, S)``."""
    with tifffile.TiffFile(path) as tif:
        page = _first_tiff_page(path, tif)
        _check_pixel_count(path, page.imagelength, page.imagewidth, max_pixels)
        array = page.asarray()
        return np.moveaxis(array, 0, -1) if page.axes.startswith("S") else array


def _first_tiff_page(path: Path, tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The first page; a TIFF cut before its first IFD has none (tifffile then returns empty arrays)."""
    if not tif.pages:
        raise DataFileError(path, "TIFF holds no image (truncated?)")
    return tif.pages[0]


def _read_pil_image(path: Path, max_pixels: int) -> np.ndarray:
    """Pillow decode; palette and non-RGB colour modes converted to RGB."""
    with Image.open(path) as image:
        width, height = image.size
        _check_pixel_count(path, height, width, max_pixels)
        image.load()
        if image.mode in _PIL_COLOUR_MODES:
            return np.asarray(image.convert("RGB"))
        return np.asarray(image)


def _check_pixel_count(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataFileError(path, f"header claims {height}x{width} pixels, more than the limit of {max_pixels}")


def _as_rgb_uint8(path: Path, array: np.ndarray) -> np.ndarray:
    """``(H, W, 3|4)`` of uint8/uint16/float[0,1] -> ``(H, W, 3)`` uint8."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        raise DataFileError(path, f"grayscale image (shape {array.shape}); an RGB H&E tile is expected")
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataFileError(path, f"expected H x W x 3 (RGB) or x 4 (RGBA), got shape {array.shape}")
    rgb = array[..., :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.dtype == np.uint16:
        return ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if rgb.dtype.kind == "f":
        if not np.isfinite(rgb).all():
            raise DataFileError(
                path, f"float image with {np.count_nonzero(~np.isfinite(rgb))} NaN or infinite value(s)"
            )
        if rgb.min() < 0 or rgb.max() > 1:
            raise DataFileError(path, "float image with values outside [0, 1]")
        return np.round(rgb * 255).astype(np.uint8)
    raise DataFileError(path, f"unsupported image dtype {rgb.dtype} (expected uint8, uint16 or float in [0, 1])")


# ------------------------------------------------------------------ Aperio XML labels


def read_aperio_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an Aperio ImageScope XML into an ``(H, W)`` int32 instance label map.

    Each ``Region`` (``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with float
    X, Y pixel attributes) is filled with ``skimage.draw.polygon`` as a pixel-centre
    inside test, with XML coordinate :data:`APERIO_XML_ORIGIN` at the centre of pixel 0;
    parts outside ``shape`` are clipped. Valid regions get ids 1..N in document order.
    Overlaps: the FIRST region keeps the shared pixels (as the MoNuSeg organisers' MATLAB
    code does), so a region wholly covered by earlier ones leaves no pixel and its id is
    absent. Regions with fewer than 3 vertices or with missing, non-numeric, non-finite
    or out-of-range (beyond :data:`MAX_XML_COORDINATE`) coordinates are skipped, and so are
    regions filling more than :data:`MAX_NUCLEUS_FRACTION` of the tile and
    :data:`MAX_NUCLEUS_PIXELS`; regions wholly outside the tile are counted. One
    ``UserWarning`` names the file and each count (and says when no nucleus is left).
    The XML is parsed with defusedxml (entity expansion and external entities refused).

    Raises:
        DataFileError: empty, unreadable, malformed (message gives line and column)
            or forbidden XML.
    """
    path = Path(path)
    root = _parse_xml(path)
    nuclei = []
    for region in root.iter("Region"):
        vertices = _region_vertices(region)
        nuclei.append(None if vertices is None else [(vertices - APERIO_XML_ORIGIN, [])])
    return rasterise_nuclei(path, nuclei, shape)


#: ``(2, V)`` float array: X (row 0) and Y (row 1) of a polygon's vertices, with pixel centres at whole numbers.
Ring = np.ndarray


def usable_ring(xy) -> Ring | None:
    """``xy`` (V x 2 numbers) as a :data:`Ring`, or None when it has fewer than 3 vertices or
    missing, non-numeric, non-finite or out-of-range (beyond :data:`MAX_XML_COORDINATE`) values."""
    try:
        ring = np.array(xy, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if (
        ring.ndim != 2
        or ring.shape[1] != 2
        or len(ring) < 3
        or not np.isfinite(ring).all()
        or np.abs(ring).max() > MAX_XML_COORDINATE
    ):
        return None
    return ring.T


def _polygon_pixels(exterior: Ring, holes: list[Ring], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixel centres inside ``exterior`` and outside every hole, clipped to ``shape``."""
    rows, cols = polygon(exterior[1], exterior[0], shape=shape)
    if not holes or len(rows) == 0:
        return rows, cols
    top, left = rows.min(), cols.min()
    inside = np.zeros((rows.max() - top + 1, cols.max() - left + 1), bool)
    inside[rows - top, cols - left] = True
    for hole in holes:
        hole_rows, hole_cols = polygon(hole[1] - top, hole[0] - left, shape=inside.shape)
        inside[hole_rows, hole_cols] = False
    rows, cols = np.nonzero(inside)
    return rows + top, cols + left


def rasterise_nuclei(
    path: Path, nuclei: list[list[tuple[Ring, list[Ring]]] | None], shape: tuple[int, int]
) -> np.ndarray:
    """``(H, W)`` int32 instance map of ``nuclei`` (each a list of polygons ``(exterior, holes)``, or
    None when unusable), read from ``path``; the rules of :func:`read_aperio_xml` (ids in order,
    the first nucleus keeps shared pixels, unusable and oversized ones skipped, one warning)."""
    label = np.zeros(shape, dtype=np.int32)
    largest = max(MAX_NUCLEUS_FRACTION * label.size, MAX_NUCLEUS_PIXELS)
    next_id, skipped, oversized, outside = 1, 0, 0, 0
    for parts in nuclei:
        if parts is None:
            skipped += 1
            continue
        pixels = [_polygon_pixels(exterior, holes, shape) for exterior, holes in parts]
        rows, cols = np.concatenate([r for r, _ in pixels]), np.concatenate([c for _, c in pixels])
        if len(rows) > largest:  # no nucleus is that large: a stray vertex, which would swallow real nuclei
            oversized += 1
            continue
        outside += len(rows) == 0
        free = label[rows, cols] == 0
        label[rows[free], cols[free]] = next_id
        next_id += 1
    problems = [
        f"skipped {skipped} region(s) with fewer than 3 vertices or non-numeric/non-finite/out-of-range coordinates"
    ] * bool(skipped)
    problems += [
        f"skipped {oversized} region(s) covering more than {largest:.0f} px (no nucleus is that large)"
    ] * bool(oversized)
    problems += [f"{outside} region(s) lie wholly outside the {shape[0]}x{shape[1]} tile"] * bool(outside)
    if problems and not label.any():
        problems.append("no nucleus is left in the label")
    if problems:
        warnings.warn(f"{path}: " + "; ".join(problems), stacklevel=3)
    return label


def _parse_xml(path: Path) -> Element:
    """Root element of ``path``, parsed safely; every failure as DataFileError."""
    _require_nonempty(path)
    try:
        return SafeElementTree.parse(path).getroot()
    except SafeElementTree.ParseError as err:
        line, column = err.position
        raise DataFileError(path, f"malformed XML at line {line}, column {column}: {err}") from err
    except defusedxml.DefusedXmlException as err:
        raise DataFileError(path, f"forbidden XML construct: {err!r}") from err
    except OSError as err:
        raise DataFileError(path, f"cannot read: {err}") from err


def _region_vertices(region: Element) -> Ring | None:
    """The vertices of an XML region as a :data:`Ring` (XML coordinates), or None for an unusable region."""
    try:
        xy = [(float(v.get("X")), float(v.get("Y"))) for v in region.iterfind("Vertices/Vertex")]
    except (TypeError, ValueError):
        return None
    return usable_ring(xy)


# ------------------------------------------------------------------- label map files


def read_label(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an instance label map as ``(H, W)`` int32, or int64 when an id is >= 2**31.

    Formats by suffix: PNG (Pillow), TIFF (tifffile, first page), NIfTI ``.nii`` /
    ``.nii.gz`` (nibabel) and ``.npy``. Singleton axes are squeezed away. Any integer
    (or bool) dtype is accepted, and float arrays holding only whole numbers.
    NIfTI orientation follows MONAI: the stored array is ``(x, y)`` = (column, row),
    as MONAI's LoadImage returns 2-D PNG/TIFF files, so it is transposed to ``(H, W)``
    here and back in :func:`write_label`; a NIfTI and a PNG of one label map load
    identically through MONAI. A file whose header claims more than ``max_pixels`` values
    is refused before its data are read.

    Raises:
        DataFileError: unreadable file, unsupported suffix, too many values, not 2-D after
            squeezing, float values that are not whole numbers, or negative ids.
    """
    path = Path(path)
    _require_nonempty(path)
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise DataFileError(path, f"unsupported label suffix {suffix!r} (expected one of {LABEL_SUFFIXES})")
    array = _decoded(path, lambda: _LABEL_READERS[suffix](path, max_pixels))
    if array.ndim > 2:
        array = array.squeeze()
    if suffix in (".nii", ".nii.gz") and array.ndim == 2:
        array = array.T
    return _checked_label(path, array)


def write_label(path: str | os.PathLike, label: np.ndarray, mpp: float | None = None) -> None:
    """Write an ``(H, W)`` integer label map atomically as uint16 (max id < 65536) or uint32.

    Formats by suffix: TIFF (zlib), PNG (uint16 only), NIfTI ``.nii`` / ``.nii.gz``
    (stored transposed, see :func:`read_label`) and ``.npy``. ``mpp`` (microns per pixel),
    when given, becomes a TIFF's resolution tags (pixels per centimetre), as slide viewers read them.

    Raises:
        DataFileError: not a 2-D non-negative integer map, an id >= 2**32, uint32 ids
            for PNG, or an unsupported suffix.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise DataFileError(path, f"cannot write a label map as {suffix!r} (expected one of {LABEL_SUFFIXES})")
    stored = _storage_label(path, _checked_label(path, np.asarray(label)))
    if suffix == ".png" and stored.dtype != np.uint16:
        raise DataFileError(path, f"PNG holds ids up to 65535, this map reaches {stored.max()}; use .tif")
    with atomic_path(path) as tmp:
        if mpp is not None and suffix in TIFF_SUFFIXES:
            tifffile.imwrite(
                tmp, stored, compression="zlib", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER"
            )
        else:
            _LABEL_WRITERS[suffix](tmp, stored)


def check_same_size(
    image_path: str | os.PathLike, image: np.ndarray, label_path: str | os.PathLike, label: np.ndarray
) -> None:
    """Raise DataFileError naming both files when ``image`` ``(H, W, C)`` and ``label`` ``(H, W)`` differ in H, W."""
    if image.shape[:2] != label.shape[:2]:
        image_size, label_size = "x".join(map(str, image.shape[:2])), "x".join(map(str, label.shape[:2]))
        raise DataFileError(image_path, f"image is {image_size} but its label {label_path} is {label_size}")


def _checked_label(path: Path, array: np.ndarray) -> np.ndarray:
    """Validate a label map and return it as int32 (int64 when max >= 2**31)."""
    if array.ndim != 2 or 0 in array.shape:
        raise DataFileError(path, f"label map must be 2-D and non-empty after squeezing, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DataFileError(path, "float label map with non-integer values")
    elif array.dtype.kind not in "biu":
        raise DataFileError(path, f"label map has non-numeric dtype {array.dtype}")
    if array.min() < 0:
        raise DataFileError(path, f"negative ids in label map (min {array.min()})")
    top = array.max()
    if top >= 2**63:
        raise DataFileError(path, f"label id {top} does not fit in int64")
    return array.astype(np.int32 if top < 2**31 else np.int64)


def _storage_label(path: Path, label: np.ndarray) -> np.ndarray:
    """``label`` as uint16 when max < 2**16, uint32 when max < 2**32."""
    top = int(label.max())
    if top < 2**16:
        return label.astype(np.uint16)
    if top < 2**32:
        return label.astype(np.uint32)
    raise DataFileError(path, f"label id {top} does not fit in uint32")


def _check_value_count(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    if math.prod(shape) > max_pixels:
        raise DataFileError(
            path, f"header claims a {'x'.join(map(str, shape))} label map, more than the limit of {max_pixels} values"
        )


def _read_tiff_label(path: Path, max_pixels: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = _first_tiff_page(path, tif)
        _check_value_count(path, page.shape, max_pixels)
        return page.asarray()


def _read_nifti(path: Path, max_pixels: int) -> np.ndarray:
    image = nibabel.load(path)
    _check_value_count(path, image.header.get_data_shape(), max_pixels)
    return np.asanyarray(image.dataobj)


def _read_npy(path: Path, max_pixels: int) -> np.ndarray:
    """Memory-mapped first: the header's shape is checked, and a file shorter than it claims fails, without allocating."""
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_value_count(path, mapped.shape, max_pixels)
    return np.array(mapped)


def _read_png_label(path: Path, max_pixels: int) -> np.ndarray:
    with Image.open(path) as image:
        _check_value_count(path, (image.size[1], image.size[0], len(image.getbands())), max_pixels)
        return np.asarray(image)


def _write_nifti(tmp: Path, stored: np.ndarray, compress: bool) -> None:
    data = nibabel.Nifti1Image(np.ascontiguousarray(stored.T), affine=np.eye(4)).to_bytes()
    tmp.write_bytes(gzip.compress(data, compresslevel=6) if compress else data)


def _write_npy(tmp: Path, stored: np.ndarray) -> None:
    with open(tmp, "wb") as file:
        np.save(file, stored, allow_pickle=False)


_LABEL_READERS: dict[str, Callable[[Path, int], np.ndarray]] = {
    ".png": _read_png_label,
    ".tif": _read_tiff_label,
    ".tiff": _read_tiff_label,
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
    ".npy": _read_npy,
}
_LABEL_WRITERS: dict[str, Callable[[Path, np.ndarray], None]] = {
    ".png": lambda tmp, stored: Image.fromarray(stored).save(tmp, format="PNG"),
    ".tif": lambda tmp, stored: tifffile.imwrite(tmp, stored, compression="zlib"),
    ".tiff": lambda tmp, stored: tifffile.imwrite(tmp, stored, compression="zlib"),
    ".nii": lambda tmp, stored: _write_nifti(tmp, stored, compress=False),
    ".nii.gz": lambda tmp, stored: _write_nifti(tmp, stored, compress=True),
    ".npy": _write_npy,
}


# --------------------------------------------------------------------------- helpers


def _require_nonempty(path: Path) -> None:
    """DataFileError when ``path`` is missing, unreadable or zero bytes long."""
    try:
        size = path.stat().st_size
    except OSError as err:
        if path.is_symlink():
            raise DataFileError(path, "symbolic link that does not resolve (a link loop or a missing target)") from err
        raise DataFileError(path, f"cannot read: {err}") from err
    if size == 0:
        raise DataFileError(path, "empty file (0 bytes)")


def _decoded(path: Path, decode: Callable[[], T]) -> T:
    """Run ``decode()``; any decoder failure becomes a DataFileError naming ``path``."""
    try:
        return decode()
    except DataFileError:
        raise
    except _DECODER_ERRORS as err:
        raise DataFileError(path, f"cannot decode ({type(err).__name__}: {err})") from err
