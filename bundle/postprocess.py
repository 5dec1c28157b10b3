"""Post-processing: 3-class softmax maps (background, body, boundary) -> nucleus instance maps.

Seeds are the confident nucleus bodies; a marker-controlled watershed grows them back over
the boundary rim (see :mod:`bundle.targets` for how the rim is defined in the targets):

1. markers: connected components of ``P(body) > body_threshold``, those smaller than
   ``min_marker_area`` pixels dropped; with a horizontal/vertical (HoVer) map, pixels whose
   contact energy (below) exceeds ``contact_threshold`` are taken out of the seeds first;
2. mask: ``P(body) + P(boundary) > foreground_threshold``, plus the markers themselves, with
   holes (background pockets fully enclosed by foreground) filled when ``fill_holes``;
3. watershed of the elevation ``-P(body)`` (plus the contact energy, with a HoVer map) from
   the markers inside the mask: flooding goes
   from the most confident body pixels outwards, so each rim pixel joins the seed whose
   flood reaches it first; on flat stretches (e.g. a one-hot map) the flood advances
   breadth-first, so a rim pixel goes to the geodesically nearest seed. Foreground without
   a marker stays background, and filled holes go to the nucleus around them;
4. nuclei smaller than ``min_nucleus_area`` pixels removed, ids relabelled 1..N.

Maps with 5 channels carry, after the 3 class probabilities, HoVer-Net's horizontal and
vertical maps (each nucleus pixel's offset from its nucleus's centre, -1..1; see
:data:`bundle.targets.HOVER_CHANNELS`). Between two touching nuclei the horizontal map falls
from +1 to -1 left to right (the vertical map top to bottom), inside one it rises: the
**contact energy** is the steepest such fall, ``max(-dh/dx, -dv/dy)`` (5x5 Sobel, MONAI
``SobelGradients``, per pixel), clipped to [0, 1]. HoVer-Net min-max normalises its Sobel maps
per image (MONAI ``GenerateInstanceBorder``), which makes a threshold depend on the tile; this
fixed scale does not, so a threshold chosen on validation tiles carries to slides.

MONAI's ``Watershed`` transform is a thin wrapper that expects (1, H, W) arrays and would
flood a 3-D volume; ``skimage.segmentation.watershed`` is called on the 2-D planes directly.
"""

import json
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from bundle.data import DataFileError
from bundle.targets import BODY, BOUNDARY, HOVER_CHANNELS, N_CLASSES
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, SobelGradients, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential, watershed

#: How far outside [0, 1] a probability may stray (rounding, float16) before the map is refused.
PROBABILITY_TOLERANCE = 1e-3


def as_probability_map(prob: NdarrayOrTensor) -> np.ndarray:
    """(3, H, W) softmax probabilities, or (5, H, W) with a HoVer map after them, numpy or torch
    -> float numpy array, checked.

    Raises:
        ValueError: neither (3, H, W) nor (5, H, W), not floating point, or class values outside
            [0, 1] (logits instead of probabilities).
    """
    array = convert_to_numpy(prob)
    if array.ndim != 3 or array.shape[0] not in (N_CLASSES, N_CLASSES + len(HOVER_CHANNELS)):
        raise ValueError(
            f"expected a ({N_CLASSES}, H, W) softmax map (background, body, boundary), or ({N_CLASSES + 2}, H, W) "
            f"with a horizontal/vertical map after it, got shape {tuple(array.shape)}"
        )
    if array.dtype.kind != "f":
        raise ValueError(f"expected float probabilities, got dtype {array.dtype} (class-index maps are not accepted)")
    classes = array[:N_CLASSES]
    low, high = float(classes.min(initial=0.0)), float(classes.max(initial=0.0))
    if not (low >= -PROBABILITY_TOLERANCE and high <= 1.0 + PROBABILITY_TOLERANCE):
        raise ValueError(f"probabilities must lie in [0, 1], got values in [{low}, {high}]; apply softmax to logits")
    return array


def contact_energy(hover: np.ndarray) -> np.ndarray:
    """(2, H, W) horizontal and vertical maps -> (H, W) float32 contact energy in [0, 1].

    ``max(-d(horizontal)/dx, -d(vertical)/dy)``, clipped: high where the maps fall, i.e. on the
    contact between two nuclei (see the module docstring)."""
    maps = torch.as_tensor(np.ascontiguousarray(hover, dtype=np.float32))
    falls_x = -SobelGradients(kernel_size=5, spatial_axes=1)(maps[:1]).as_tensor()[0]
    falls_y = -SobelGradients(kernel_size=5, spatial_axes=0)(maps[1:]).as_tensor()[0]
    return torch.maximum(falls_x, falls_y).clamp(0.0, 1.0).numpy()


def energy_of(probabilities: np.ndarray) -> np.ndarray | None:
    """The contact energy of a checked 5-channel map; None for a 3-channel map (no HoVer map)."""
    return contact_energy(probabilities[list(HOVER_CHANNELS)]) if probabilities.shape[0] > N_CLASSES else None


def remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """(H, W) integer labels with every id covering fewer than ``min_area`` pixels set to 0 (in place)."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    labels[small[labels]] = 0
    return labels


class ClassMapToInstances(Transform):
    """3-class softmax map -> nucleus instance map by marker-controlled watershed.

    Args:
        body_threshold: a pixel seeds a nucleus where ``P(body)`` exceeds this (0..1).
        foreground_threshold: a pixel can belong to a nucleus where ``P(body) + P(boundary)``
            exceeds this (0..1).
        min_marker_area: seeds (connected body components) smaller than this, in pixels, are
            dropped, so specks of body probability do not split or create nuclei.
        min_nucleus_area: nuclei smaller than this, in pixels, after the watershed are removed.
        fill_holes: fill background pockets enclosed by foreground before the watershed.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours), for the seeds' connected
            components and for the watershed flood.
        contact_threshold: with a HoVer map, seed pixels whose contact energy exceeds this
            (0..1] are removed, splitting seeds where two nuclei touch; 1 keeps every seed.
            Ignored for 3-channel maps.

    Input: (3, H, W) float softmax probabilities (channels background, body, boundary), or
    (5, H, W) with the horizontal and vertical maps after them, numpy or torch; class-index
    maps are refused (one-hot encode them first).
    Output: (1, H, W) int32 instance map of the input's array type, 0 background, ids 1..N.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        body_threshold: float = 0.5,
        foreground_threshold: float = 0.5,
        min_marker_area: int = 10,
        min_nucleus_area: int = 30,
        fill_holes: bool = True,
        connectivity: int = 1,
        contact_threshold: float = 1.0,
    ):
        if not 0.0 < contact_threshold <= 1.0:
            raise ValueError(f"contact_threshold must be in (0, 1], got {contact_threshold}")
        for name, value in (("body_threshold", body_threshold), ("foreground_threshold", foreground_threshold)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name, value in (("min_marker_area", min_marker_area), ("min_nucleus_area", min_nucleus_area)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 pixels, got {value}")
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}")
        self.body_threshold, self.foreground_threshold = body_threshold, foreground_threshold
        self.min_marker_area, self.min_nucleus_area = min_marker_area, min_nucleus_area
        self.fill_holes, self.connectivity = fill_holes, connectivity
        self.contact_threshold = contact_threshold

    def markers(self, body: np.ndarray, energy: np.ndarray | None = None) -> np.ndarray:
        """(H, W) body probability (and contact energy) -> (H, W) int32 seed labels (0 = no seed)."""
        seeds = body > self.body_threshold
        if energy is not None:
            seeds &= energy <= self.contact_threshold
        seeds = connected_components(seeds, connectivity=self.connectivity).astype(np.int32)
        return remove_small_labels(seeds, self.min_marker_area)

    def mask(self, prob: np.ndarray, markers: np.ndarray) -> np.ndarray:
        """(H, W) bool: where nuclei may grow (foreground, seeds, and filled holes when asked)."""
        foreground = (prob[BODY] + prob[BOUNDARY] > self.foreground_threshold) | (markers > 0)
        return ndimage.binary_fill_holes(foreground) if self.fill_holes else foreground

    def __call__(self, prob: NdarrayOrTensor) -> NdarrayOrTensor:
        probabilities = as_probability_map(prob)
        instances = self.from_maps(probabilities, energy_of(probabilities))
        return convert_to_dst_type(instances[None], prob, dtype=np.int32)[0]

    def from_maps(self, probabilities: np.ndarray, energy: np.ndarray | None) -> np.ndarray:
        """Checked (3 or 5, H, W) maps and their contact energy (None without a HoVer map)
        -> (H, W) int32 ids; threshold tuning computes the energy once per tile this way."""
        markers = self.markers(probabilities[BODY], energy)
        mask = self.mask(probabilities, markers)
        elevation = -probabilities[BODY].astype(np.float32)
        if energy is not None:
            elevation += energy
        instances = watershed(elevation, markers, mask=mask, connectivity=self.connectivity)
        instances = remove_small_labels(instances.astype(np.int32), self.min_nucleus_area)
        return relabel_sequential(instances)[0].astype(np.int32)


class ClassMapToInstancesd(MapTransform):
    """Dictionary version of :class:`ClassMapToInstances`.

    Args:
        keys: keys of the (3, H, W) softmax maps.
        output_key: where to store the (1, H, W) instance map; None replaces ``d[key]``.
            Needs exactly one key when given.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
        Remaining arguments: see :class:`ClassMapToInstances`.
    """

    backend = ClassMapToInstances.backend

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str | None = None,
        body_threshold: float = 0.5,
        foreground_threshold: float = 0.5,
        min_marker_area: int = 10,
        min_nucleus_area: int = 30,
        fill_holes: bool = True,
        connectivity: int = 1,
        contact_threshold: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError(f"output_key {output_key!r} needs exactly one input key, got {list(self.keys)}")
        self.output_key = output_key
        self.converter = ClassMapToInstances(
            body_threshold,
            foreground_threshold,
            min_marker_area,
            min_nucleus_area,
            fill_holes,
            connectivity,
            contact_threshold,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key if self.output_key is None else self.output_key] = self.converter(d[key])
        return d


THRESHOLD_KEYS = ("body_threshold", "foreground_threshold")
AREA_KEYS = ("min_marker_area", "min_nucleus_area")
CONTACT_KEY = "contact_threshold"


def stored_settings(path: str | Path) -> dict:
    """Post-processing settings stored with a model (``models/model.postprocess.json``); {} when absent.

    The file is written by :class:`bundle.tuning.ThresholdTuner`. Only the keys of
    :class:`ClassMapToInstances` (thresholds, areas) are returned; anything else in the file
    (how they were chosen) is left out.

    Raises:
        DataFileError: the file is not JSON, not an object, or holds a value out of range.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(path, f"not a readable JSON file of post-processing settings ({error})") from None
    if not isinstance(content, dict):
        raise DataFileError(path, f"expected a JSON object of post-processing settings, got {type(content).__name__}")
    ranges = {
        **{key: (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)") for key in THRESHOLD_KEYS},
        **{key: (lambda v: v >= 0, "a number of pixels >= 0") for key in AREA_KEYS},
        CONTACT_KEY: (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    }
    settings = {key: content[key] for key in ranges if key in content}
    for key, value in settings.items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        in_range, expected = ranges[key]
        if not is_number or not in_range(value):
            raise DataFileError(path, f"{key} must be {expected}, got {value!r}")
    return settings
