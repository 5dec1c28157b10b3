"""Tile inference outputs: screening unreadable tiles and writing what a pathologist opens."""

import logging
import os
import shutil
from collections.abc import Hashable, Mapping
from pathlib import Path

from bundle.data import MAX_PIXELS, DataFileError, read_image, stem_of
from bundle.output_folder import PARTIAL_PREFIX, OutputFolder
from bundle.transforms import PATH_SUFFIX, ScaleRGB
from bundle.writers import (
    nuclei_geojson,
    nucleus_table,
    write_geojson,
    write_instance_tiff,
    write_nuclei_csv,
    write_overlay_png,
)
from bundle.wsi.cohort import process_rank, share_of_rank
from monai.config import KeysCollection
from monai.engines import SupervisedEvaluator
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

logger = logging.getLogger(__name__)


#: Memory of tile inference that does not grow with the tile: one window's network pass and
#: post-processing (about 0.5 GB with a ResNet-18 and 1024 px windows; docs/benchmarks.md).
INFERENCE_FIXED_BYTES = 2**30
#: Memory per tile pixel beyond that: the tile as read, its ids, the writers (tiles larger than
#: the window go through the slide grid); measured at about 23 bytes on 3000-6000 px tiles.
INFERENCE_BYTES_PER_PIXEL = 32


def tile_inference_bytes(height: int, width: int) -> int:
    """About how much memory inference of a ``height`` x ``width`` tile needs, in bytes."""
    return INFERENCE_FIXED_BYTES + height * width * INFERENCE_BYTES_PER_PIXEL


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable`` of /proc/meminfo; elsewhere the physical total)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class TileScreen:
    """Decode every tile once before inference; unreadable ones are reported and skipped.

    Decoding twice costs a few tens of milliseconds per tile, against seconds of network
    time, and keeps the data loader free of failure handling. A tile whose file stem
    repeats an earlier tile's, ignoring case (``a/x.tif`` and ``b/x.tif``, ``x.tif`` and
    ``x.png``, ``X.tif`` and ``x.TIF``) is skipped too: its outputs, named after the stem,
    would overwrite the other's. So is a tile whose inference would need more memory than
    ``memory_bytes`` (default: what the machine has available now) at
    :func:`tile_inference_bytes`. Call :meth:`exit_status` at the end of the run:
    non-zero when any tile failed.
    """

    def __init__(self, max_pixels: int = MAX_PIXELS, memory_bytes: int | None = None) -> None:
        self.max_pixels = max_pixels
        self.memory_bytes = memory_bytes if memory_bytes is not None else available_memory()
        self.failures: dict[str, str] = {}

    def readable(self, items: list[dict], key: str = "image", folder: OutputFolder | None = None) -> list[dict]:
        """The items of this process's share that are readable and, with ``folder``, not finished there.

        Under ``torch.distributed`` each rank takes its share of the tiles (tiles with the same
        stem go to the same rank, so a clash is still found) and decodes only those.
        """
        rank, world_size = process_rank()
        share = share_of_rank(items, rank, world_size, key=lambda item: stem_of(str(item[key])).casefold())
        good, stems, finished = [], {}, 0
        for item in share:
            path = str(item[key])
            stem = stem_of(path).casefold()  # Z.tif and z.TIF collide on case-insensitive file systems
            try:
                if stem in stems:
                    raise DataFileError(
                        path, f"same file stem as {stems[stem]}: their outputs would overwrite each other"
                    )
                if folder is not None and folder.finished(stem_of(path)):
                    stems[stem], finished = path, finished + 1
                    continue
                height, width = read_image(path, self.max_pixels).shape[:2]
                needed = tile_inference_bytes(height, width)
                if needed > self.memory_bytes:
                    raise DataFileError(
                        path,
                        f"{height}x{width} pixels need about {needed / 2**30:.1f} GiB for tile inference, "
                        f"{self.memory_bytes / 2**30:.1f} GiB available; run configs/inference.json + "
                        "configs/inference_wsi.json on it (it works through a large image tile by tile)",
                    )
                good.append(item)
                stems[stem] = path
            except (DataFileError, OSError, ValueError) as error:
                message = str(error) if str(error).startswith(path) else f"{path}: {error}"
                self.failures[path] = message
                logger.error("skipping tile: %s", message)
        if finished:
            logger.info("%d tile(s) already done by this model in %s: skipped (--overwrite True redoes them)",
                        finished, folder.path)  # fmt: skip
        if world_size > 1:
            logger.info("rank %d of %d: %d of %d tile(s)", rank, world_size, len(share), len(items))
        return good

    def exit_status(self) -> None:
        """Raise ``SystemExit(1)`` listing the failed tiles, if any; otherwise do nothing."""
        if self.failures:
            listing = "\n".join(f"  {message}" for message in self.failures.values())
            raise SystemExit(
                f"{len(self.failures)} tile(s) could not be read, processed or written (or would overwrite another tile's "
                f"outputs) and were skipped:\n{listing}"
            )


class SaveNucleiOutputsd(MapTransform):
    """Write the four outputs of one tile into ``output_dir``, named after the source tile's stem.

    ``<stem>_instances.tif`` (instance ids), ``<stem>_overlay.png`` (contours on the tile),
    ``<stem>.geojson`` (one QuPath detection per nucleus) and ``<stem>_nuclei.csv`` (one row
    per nucleus). Only the file name of the source is used, so outputs never leave
    ``output_dir``. The four are written into a hidden ``.partial-<stem>-<pid>/`` folder and
    then moved into place, so a failure while writing leaves none of them (a kill leaves the
    hidden folder, which :class:`bundle.output_folder.OutputFolder` removes on the next run).
    With ``folder``, the tile is recorded in its manifest. The GeoJSON carries each nucleus's
    measurements (:func:`bundle.writers.qupath_measurements`), in µm when ``mpp`` (microns
    per pixel) is given, which also sets the instance TIFF's resolution. Expects ``d[image_key]``
    (3, H, W) uint8 RGB as read (or the float network input in [0, 1]) and ``d[key]`` (1, H, W) instance ids.
    """

    def __init__(
        self,
        keys: KeysCollection = "instances",
        output_dir: str | Path = "outputs",
        image_key: str = "image",
        folder: OutputFolder | None = None,
        mpp: float | None = None,
    ):
        super().__init__(keys)
        self.output_dir, self.image_key, self.folder, self.mpp = Path(output_dir), image_key, folder, mpp

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        stem = stem_of(str(d[f"{self.image_key}{PATH_SUFFIX}"]))
        rgb = ScaleRGB.inverse(d[self.image_key])
        for key in self.key_iterator(d):
            instances = convert_to_numpy(d[key])[0]
            partial = self.output_dir / f"{PARTIAL_PREFIX}{stem}-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                rows = nucleus_table(rgb, instances)
                write_instance_tiff(partial / f"{stem}_instances.tif", instances, self.mpp)
                write_overlay_png(partial / f"{stem}_overlay.png", rgb, instances)
                write_geojson(partial / f"{stem}.geojson", nuclei_geojson(instances, rows=rows, mpp=self.mpp))
                write_nuclei_csv(partial / f"{stem}_nuclei.csv", rows)
                names = sorted(p.name for p in partial.iterdir())
                for name in names:
                    os.replace(partial / name, self.output_dir / name)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            if self.folder is not None:
                self.folder.record(stem, names)
            logger.info("%s: %d nuclei -> %s", stem, int(instances.max()), self.output_dir / f"{stem}_overlay.png")
        return d


class TileEvaluator(SupervisedEvaluator):
    """MONAI ``SupervisedEvaluator`` for tile inference in which one tile's failure (in the network
    pass, post-processing or writers; ``MemoryError`` included) is reported to ``screen`` and
    skipped, and the run goes on with the next tile; the run then ends with exit status 1
    (:meth:`TileScreen.exit_status`). Other arguments: those of ``SupervisedEvaluator``."""

    def __init__(self, *args, screen: TileScreen, image_key: str = "image", **kwargs):
        super().__init__(*args, **kwargs)
        self.screen, self.image_key = screen, image_key

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        try:
            return super()._iteration(engine, batchdata)
        except Exception as error:  # one bad tile must not cost the others (MemoryError is an Exception)
            while error.__cause__ is not None:  # MONAI wraps a failing transform's error in "applying transform ..."
                error = error.__cause__
            for path in batchdata.get(f"{self.image_key}{PATH_SUFFIX}", ["tile"]):
                message = (
                    f"{path}: failed during inference ({type(error).__name__}: {str(error)[:300]}); no output written"
                )
                self.screen.failures[str(path)] = message
                logger.error("skipping tile: %s", message)
            engine.state.output = {}
            return {}
