"""Whole-slide nucleus segmentation: tile by tile, stitched, streamed to GeoJSON, CSV and an overview.

Conventions: see :mod:`bundle.wsi`; the stitching rule: :mod:`bundle.wsi.tiling`.

Memory: a slide is never held whole. The tissue mask and the overview come from a
thumbnail of at most ``overview_max_side`` px a side, read block by block; tiles are read
one at a time (for TIFF only the TIFF tiles or strips they cover, see
:func:`bundle.wsi.slide.read_region`); nucleus outlines and table rows are streamed to temporary files
renamed into place at the end (:func:`bundle.atomic.atomic_path`).
"""

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from bundle.atomic import atomic_path
from bundle.data import DataFileError, stem_of, write_image
from bundle.targets import as_label_map
from bundle.writers import NUCLEUS_COLUMNS, NUCLEUS_RGB, density_overlay, nuclei_geojson, nucleus_table
from bundle.wsi.cohort import process_rank, share_of_rank, write_cohort_summary
from bundle.wsi.slide import level_downsample, level_mpp, level_shape, opened_slide, read_region
from bundle.wsi.tiling import check_tiling, owned_nuclei, tile_core, tile_grid, tile_window
from bundle.wsi.tissue import slide_thumbnail, tissue_mask_from_rgb
from skimage.segmentation import relabel_sequential

logger = logging.getLogger(__name__)

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
    """Streams one slide's nuclei to GeoJSON and CSV and counts them on an overview; use as a context manager.

    Both files are written to temporary names and renamed into place when the ``with``
    block ends without error (the overview PNG is written then too: the thumbnail tinted by
    nucleus density, :func:`bundle.writers.density_overlay`); an error leaves no partial file.
    Coordinates and measurements are in level-0 pixels, QuPath's convention (pixel (0, 0)
    spans [0, 1) x [0, 1)); the GeoJSON measurements are in µm when ``mpp`` is known.
    Memory: the overview image plus one tile's records at a time.

    Args:
        paths: from :func:`slide_output_paths`.
        overview: (h, w, 3) uint8 thumbnail (copied).
        overview_downsample: level-0 pixels per overview pixel.
        tolerance: outline simplification in pixels (see :func:`bundle.writers.instance_polygons`).
        color: RGB of the density tint and of the QuPath classification.
        mpp: microns per level-0 pixel, or None (measurements in pixels).
    """

    def __init__(
        self,
        paths: dict[str, Path],
        overview: np.ndarray,
        overview_downsample: float,
        tolerance: float = 0.5,
        color: Sequence[int] = NUCLEUS_RGB,
        mpp: float | None = None,
    ):
        self.paths, self.overview, self.overview_downsample = paths, overview.copy(), overview_downsample
        self.tolerance, self.color, self.mpp = tolerance, tuple(color), mpp
        self.density = np.zeros(overview.shape[:2], np.int64)
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
        rows = [
            _row_in_slide_pixels(row, origin, downsample)
            for row in nucleus_table(np.ascontiguousarray(rgb.transpose(1, 2, 0)), ids)
        ]
        # measurements from the level-0 rows; the outlines are scaled to level 0 below
        geojson = nuclei_geojson(
            ids, offset=(origin[1], origin[0]), tolerance=self.tolerance, color=self.color, rows=rows, mpp=self.mpp
        )
        for feature in geojson["features"]:
            _scale_feature(feature, downsample)
            self._geojson.write(("" if self.count == 0 else ",\n") + json.dumps(feature, allow_nan=False))
            self.count += 1
        for row in rows:
            self._csv.writerow(row)
        self._count_on_overview(rows)
        return len(rows)

    def _count_on_overview(self, rows: Sequence[dict]) -> None:
        """Add each nucleus to the overview pixel holding its centroid (level-0 pixels, QuPath convention)."""
        if rows:
            height, width = self.density.shape
            y = np.array([row["centroid_y"] for row in rows]) / self.overview_downsample
            x = np.array([row["centroid_x"] for row in rows]) / self.overview_downsample
            np.add.at(self.density, (np.clip(y.astype(int), 0, height - 1), np.clip(x.astype(int), 0, width - 1)), 1)

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._geojson.write("\n]}\n")
        finally:
            self._stack.__exit__(kind, error, traceback)
        if kind is None:
            write_image(self.paths["overview"], density_overlay(self.overview, self.density, self.color))


def _scale_feature(feature: dict, downsample: float) -> None:
    """Scale a QuPath feature's coordinates from level pixels to level-0 pixels (in place).

    QuPath coordinates have pixel edges at integers, so they scale by ``downsample`` alone.
    """
    if downsample != 1.0:
        geometry = feature["geometry"]
        geometry["coordinates"] = [
            [[x * downsample, y * downsample] for x, y in ring] for ring in geometry["coordinates"]
        ]


def _row_in_slide_pixels(row: dict, origin: tuple[int, int], downsample: float) -> dict:
    """A :func:`bundle.writers.nucleus_table` row of a tile at ``origin`` (row, col) of a level with
    ``downsample`` -> level-0 pixels: centroid (pixel edges at integers, so it scales by
    ``downsample`` alone), area (rounded), perimeter."""
    return {
        **row,
        "centroid_x": (row["centroid_x"] + origin[1]) * downsample,
        "centroid_y": (row["centroid_y"] + origin[0]) * downsample,
        "area": int(round(row["area"] * downsample * downsample)),
        "perimeter": row["perimeter"] * downsample,
    }


# ----------------------------------------------------------------------------- driver


#: (3, h, w) uint8 RGB tile -> (h, w) int instance ids (0 background): network and post-processing.
PredictTile = Callable[[np.ndarray], np.ndarray]


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
    mpp: float | None = None,
) -> dict:
    """Segment every nucleus of a slide, tile by tile, and write its outputs to ``output_dir``.

    ``<stem>.geojson`` (QuPath detections in level-0 pixels, with measurements),
    ``<stem>_nuclei.csv`` (one row per nucleus, centroid/area/perimeter in level-0 pixels) and
    ``<stem>_overview.png`` (the thumbnail tinted by nucleus density). Args:

    - predict_tile: (3, h, w) uint8 tile -> (h, w) instance ids, e.g. :class:`bundle.predictor.NucleiPredictor`.
    - tile_size, overlap: window side and overlap in pixels of ``level``; ``overlap`` must exceed
      the largest nucleus diameter + 2 px for each nucleus to come out once and whole (module docstring).
    - level: pyramid level the tiles are read and segmented at (0 = full resolution).
    - backend: see :func:`open_slide`.
    - tissue_threshold, min_tissue_area: see :func:`tissue_mask_from_rgb`; only windows touching tissue run.
    - overview_max_side: longest side of the thumbnail (tissue mask and overview), pixels.
    - tolerance: outline simplification in level pixels.
    - mpp: microns per level-0 pixel for the GeoJSON measurements; None: read from the slide,
      and measurements stay in pixels when the slide does not say.

    Returns ``{"slide", "tiles", "tiles_total", "nuclei", "tissue_area_px", "tissue_area_mm2"
    (None without mpp), **output paths}``.
    """
    check_tiling(tile_size, overlap)
    with opened_slide(path, backend) as (reader, wsi):
        shape, downsample = level_shape(reader, wsi, level), level_downsample(reader, wsi, level)
        thumbnail, thumb_downsample = slide_thumbnail(reader, wsi, max_side=overview_max_side)
        mask = tissue_mask_from_rgb(thumbnail, tissue_threshold, min_area=min_tissue_area)
        origins = tile_grid(shape, tile_size, overlap, mask, thumb_downsample / downsample)
        total = len(tile_grid(shape, tile_size, overlap))
        logger.info("%s: %d of %d tiles of %d px at level %d touch tissue", path, len(origins), total, tile_size, level)
        mpp = mpp if mpp is not None else _slide_mpp(reader, wsi)
        paths = slide_output_paths(output_dir, path)
        with SlideOutputs(paths, thumbnail, thumb_downsample, tolerance, mpp=mpp) as outputs:
            for origin in origins:
                window = tile_window(origin, shape, tile_size)
                rgb = read_region(reader, wsi, origin, (window[2] - window[0], window[3] - window[1]), level)
                instances = _tile_instances(predict_tile, rgb, str(path), origin)
                owned = owned_nuclei(instances, window, tile_core(origin, shape, tile_size, overlap), shape)
                outputs.add(rgb, owned, origin, downsample)
    logger.info("%s: %d nuclei -> %s", path, outputs.count, paths["geojson"])
    tissue_px = float(mask.sum()) * thumb_downsample**2  # level-0 pixels
    counts = {
        "slide": str(path),
        "tiles": len(origins),
        "tiles_total": total,
        "nuclei": outputs.count,
        "tissue_area_px": tissue_px,
        "tissue_area_mm2": None if mpp is None else tissue_px * (mpp / 1000.0) ** 2,
    }
    return {**counts, **{name: str(output) for name, output in paths.items()}}


def _slide_mpp(reader, wsi) -> float | None:
    """Microns per level-0 pixel from the slide's metadata, or None (logged) when it has none."""
    try:
        return level_mpp(reader, wsi, 0)
    except DataFileError as error:
        logger.info("%s; measurements in pixels (set mpp to give them in µm)", error)
        return None


def segment_slides(
    slides: Iterable[str | os.PathLike],
    predict_tile: PredictTile,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    **options,
) -> list[dict]:
    """:func:`segment_slide` for this process's share of ``slides`` (``options`` passed on).

    Under ``torch.distributed`` (e.g. ``torchrun`` with ``configs/multi_gpu_inference.json``)
    rank ``r`` of ``n`` takes slides ``r, r + n, ...`` of the sorted list; alone, all of them.
    A slide whose three outputs are all there is skipped unless ``overwrite`` (outputs appear
    only when complete, so a killed run is finished by running it again). An unreadable slide
    is logged and skipped. Rank 0 writes ``cohort_summary.json`` (:mod:`bundle.wsi.cohort`).

    Raises:
        SystemExit: after the other slides, listing this process's slides that could not be read.
    """
    slides = sorted(map(Path, slides))
    stems: dict[str, Path] = {}
    clashes = {}
    for slide in slides:
        stem = stem_of(slide).casefold()  # outputs are named after the stem, on file systems that may ignore case
        if stem in stems:
            clashes[slide] = DataFileError(
                slide, f"same file stem as {stems[stem]}: their outputs would overwrite each other"
            )
        else:
            stems[stem] = slide
    rank, world_size = process_rank()
    records, failures = [], {}
    for slide in share_of_rank(slides, rank, world_size):
        started = time.perf_counter()
        try:
            if slide in clashes:
                raise clashes[slide]
            if not overwrite and is_finished(output_dir, slide):
                logger.info("%s: outputs already there, skipped (overwrite=True redoes it)", slide)
                records.append({"slide": str(slide), "status": "skipped", "rank": rank})
                continue
            summary = segment_slide(slide, predict_tile, output_dir, **options)
            records.append({**summary, "status": "done", "rank": rank, "seconds": time.perf_counter() - started})
        except DataFileError as error:
            failures[str(slide)] = str(error)
            records.append({"slide": str(slide), "status": "failed", "rank": rank, "error": str(error)})
            logger.error("skipping slide: %s", error)
    write_cohort_summary(output_dir, records, rank, world_size)
    if failures:
        listing = "\n".join(f"  {error}" for error in failures.values())
        raise SystemExit(f"{len(failures)} slide(s) could not be read and were skipped:\n{listing}")
    return [record for record in records if record["status"] == "done"]


def is_finished(output_dir: str | os.PathLike, slide: str | os.PathLike) -> bool:
    """Whether every output of ``slide`` is in ``output_dir`` (each appears only once complete)."""
    return all(path.is_file() for path in slide_output_paths(output_dir, slide).values())
