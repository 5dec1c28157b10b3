"""Macenko H&E stain normalisation of whole tiles, stored with the model that was trained on it.

A model trained with ``stain_normalization`` carries its stain reference in its weights (the
buffer :data:`REFERENCE_BUFFER`, see :func:`bundle.networks.segmentation_unet`); evaluation,
tuning and inference read it back (:func:`bundle.checkpoints.network_stain_reference`) and
normalise every image to it before the network sees it.
"""

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from bundle.transforms import PATH_SUFFIX
from monai.apps.pathology.transforms import ExtractHEStains
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

logger = logging.getLogger(__name__)

#: State-dict key of the stain reference in a fine-tuned network.
REFERENCE_BUFFER = "stain_reference"

#: Macenko et al.'s reference, as (3, 3): columns 0-1 the haematoxylin and eosin optical-density
#: vectors (rows R, G, B), column 2 their 99th-percentile concentrations (H, E, then 0). These
#: are MONAI's ``NormalizeHEStains`` defaults.
MACENKO_REFERENCE = ((0.5626, 0.2159, 1.9705), (0.7201, 0.8012, 1.0308), (0.4062, 0.5581, 0.0))

#: Fewer stained pixels than this and a tile is left as it is: Macenko's angles and
#: percentiles are not estimable from a few hundred pixels (background, pen, blank tiles).
MIN_STAINED_PIXELS = 2_500


def training_reference(enabled: bool) -> list[list[float]] | None:
    """:data:`MACENKO_REFERENCE` as lists when ``enabled`` (train.json's ``stain_normalization``), else None."""
    return [list(row) for row in MACENKO_REFERENCE] if enabled else None


def haematoxylin_first(stains: np.ndarray) -> np.ndarray:
    """(3, 2) optical-density stain vectors in either order -> (haematoxylin, eosin) columns.

    Haematoxylin absorbs red more than blue (red/blue absorbance ratio above eosin's: 1.38
    against 0.39 in the reference). MONAI's ``ExtractHEStains`` orders its columns by that
    ratio the other way round in recent releases (MONAI PR 8551; eosin first in MONAI 1.6.1,
    against its own default target), so the order is decided here, whatever MONAI returns.
    """
    ratio = stains[0] / np.maximum(stains[2], np.finfo(np.float32).eps)
    return stains[:, np.argsort(-ratio)]


class StainNormalize(Transform):
    """(3, H, W) uint8 RGB -> the same tissue in the reference stain, (3, H, W) uint8.

    Macenko's method: MONAI's ``ExtractHEStains`` estimates the tile's two stain vectors,
    each pixel's optical density is split into haematoxylin and eosin concentrations, those
    are scaled so their 99th percentiles match the reference's, and recomposed with the
    reference vectors. The composition is written here because MONAI's ``NormalizeHEStains``
    takes the stain order from the extractor, which swaps H and E (:func:`haematoxylin_first`).
    A tile with fewer than :data:`MIN_STAINED_PIXELS` stained pixels is returned unchanged,
    with a warning naming it (``name``: its file, when known).

    Args:
        reference: (3, 3) as :data:`MACENKO_REFERENCE`.
        tli: transmitted light intensity (the brightest background), 0-255.
        beta: optical density below which a pixel counts as unstained.
    """

    def __init__(
        self,
        reference: Sequence[Sequence[float]] | np.ndarray = MACENKO_REFERENCE,
        tli: float = 240.0,
        beta: float = 0.15,
    ):
        reference = np.asarray(reference, dtype=np.float32)
        if reference.shape != (3, 3):
            raise ValueError(
                f"a stain reference is (3, 3): two stain vectors and their concentrations, got {reference.shape}"
            )
        self.target_stains, self.target_max = reference[:, :2], reference[:2, 2]
        self.tli, self.beta = tli, beta
        self.extractor = ExtractHEStains(tli=tli, beta=beta)

    def optical_density(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3) uint8 -> (N, 3) float32 optical density, as MONAI's extractor computes it."""
        return -np.log((pixels.astype(np.float32) + 1.0).clip(max=self.tli) / self.tli)

    def __call__(self, image: np.ndarray, name: str = "an image") -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8:
            raise ValueError(f"stain normalisation takes (3, H, W) uint8 RGB, got {image.shape} {image.dtype}")
        pixels = np.moveaxis(image, 0, -1).reshape(-1, 3)
        density = self.optical_density(pixels)
        stained = np.count_nonzero(np.all(density > self.beta, axis=1))
        if stained < MIN_STAINED_PIXELS:
            logger.warning(f"{name}: left unnormalised, {stained} stained pixels (fewer than {MIN_STAINED_PIXELS})")
            return image
        stains = haematoxylin_first(self.extractor(pixels))
        concentrations = np.linalg.lstsq(stains, density.T, rcond=None)[0]
        current_max = np.percentile(concentrations, 99, axis=1).astype(np.float32)
        concentrations *= (self.target_max / np.maximum(current_max, np.finfo(np.float32).eps))[:, None]
        # density below 0 (brighter than the light source) comes from pixels the two stains do not fit
        normalised = self.tli * np.exp(-np.maximum(self.target_stains @ concentrations, 0.0))
        normalised = normalised.clip(0, 255).round().astype(np.uint8)
        return normalised.reshape(3, *image.shape[1:])


class StainNormalized(MapTransform):
    """Dictionary version of :class:`StainNormalize`; an error names the image's file."""

    def __init__(
        self,
        keys: KeysCollection,
        reference: Sequence[Sequence[float]] | np.ndarray = MACENKO_REFERENCE,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.normalize = StainNormalize(reference)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            name = str(d.get(key + PATH_SUFFIX, key))
            try:
                d[key] = self.normalize(d[key], name)
            except (ValueError, np.linalg.LinAlgError) as error:
                raise ValueError(f"{name}: stain normalisation failed ({error})") from None
        return d
