"""Training targets: nucleus instance label maps -> 3-class maps (background, body, boundary).

The segmentation network predicts, per pixel, one of

- ``BACKGROUND`` (0): no nucleus;
- ``BODY`` (1): inside a nucleus, away from its edge;
- ``BOUNDARY`` (2): the inner rim of a nucleus, ``boundary_width`` pixels wide.

Where two nuclei touch, both sides of the contact are boundary, so the bodies of
different nuclei never touch (not even diagonally): connected components of the body
class are the nucleus seeds that :mod:`bundle.postprocess` grows back into instances.
"""

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import ComputeHoVerMaps, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from scipy import ndimage
from skimage.segmentation import find_boundaries

#: Class indices of the 3-class map, also the channel order of the predicted probabilities.
BACKGROUND, BODY, BOUNDARY = 0, 1, 2

N_CLASSES = 3
#: Channels of the horizontal and vertical maps in a 5-channel network output (after the classes).
HOVER_CHANNELS = (3, 4)


def as_label_map(label: NdarrayOrTensor) -> np.ndarray:
    """(1, H, W) or (H, W) instance ids, numpy or torch -> (H, W) non-negative integer numpy array.

    Float maps (as MONAI loaders return) are accepted when every value is a whole number;
    boolean masks are read as ids 0 and 1.

    Raises:
        ValueError: another shape, non-integer or non-finite values, or negative ids.
    """
    array = convert_to_numpy(label)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"instance label map must be (1, H, W) or (H, W), got shape {tuple(array.shape)}")
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise ValueError("instance label map has non-integer (or non-finite) float values")
        array = array.astype(np.int64)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind not in "iu":
        raise ValueError(f"instance label map must hold integer ids, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"instance label map has negative ids (min {array.min()})")
    return array


def instance_boundaries(label: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: nucleus pixels within city-block distance ``width`` of a pixel with another id.

    "Another id" is background or a different nucleus; the first layer is
    ``find_boundaries(mode="inner")`` (4-neighbourhood), each further layer one 4-neighbour
    dilation that only spreads through foreground pixels. The image border does not count as another id:
    a nucleus cut by the tile edge gets no boundary along that edge.
    """
    foreground = label > 0
    rim = find_boundaries(label, connectivity=1, mode="inner", background=0)
    if width > 1:
        rim = ndimage.binary_dilation(rim, iterations=width - 1, mask=foreground)
    return rim


class InstanceToClassMap(Transform):
    """Instance label map -> 3-class target map (0 background, 1 body, 2 boundary).

    Args:
        boundary_width: width in pixels (>= 1) of the boundary rim drawn inside every nucleus,
            measured as city-block distance to the nearest pixel with another id.
            Nuclei thinner than ``2 * boundary_width + 1`` pixels are boundary only.

    Input: (1, H, W) or (H, W) integer ids (0 background; ids need not be contiguous),
    numpy or torch. Output: (1, H, W) uint8 class map of the input's array type.
    Vectorised over all nuclei (no loop per nucleus).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, boundary_width: int = 2):
        if boundary_width < 1:
            raise ValueError(f"boundary_width must be >= 1 (0 would let touching nuclei merge), got {boundary_width}")
        self.boundary_width = boundary_width

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        ids = as_label_map(label)
        classes = np.where(ids > 0, BODY, BACKGROUND).astype(np.uint8)
        classes[instance_boundaries(ids, self.boundary_width)] = BOUNDARY
        return convert_to_dst_type(classes[None], label, dtype=np.uint8)[0]


class InstanceToClassMapd(MapTransform):
    """Dictionary version of :class:`InstanceToClassMap`: replaces each ``d[key]`` by its class map."""

    backend = InstanceToClassMap.backend

    def __init__(self, keys: KeysCollection, boundary_width: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.converter = InstanceToClassMap(boundary_width)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ClassAndHoVerTargetd(MapTransform):
    """``d[key]`` (1, H, W) class map + ``d[instances_key]`` (1, H, W) ids -> ``d[key]`` (3, H, W)
    float32 torch: the class index, the horizontal map, the vertical map; ``instances_key`` is removed.

    Run it after the spatial augmentation (the maps are offsets along the image axes, so a
    flip or rotation of the ids before this is a flip or rotation of the maps' geometry).
    """

    def __init__(self, keys: KeysCollection = "label", instances_key: str = "instances"):
        super().__init__(keys)
        self.instances_key = instances_key
        self.hover_maps = ComputeHoVerMaps()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ids = as_label_map(d.pop(self.instances_key))
        hover = torch.as_tensor(np.asarray(self.hover_maps(ids[None].astype(np.int32))), dtype=torch.float32)
        for key in self.key_iterator(d):
            classes = torch.as_tensor(convert_to_numpy(d[key]), dtype=torch.float32).reshape(1, *ids.shape)
            d[key] = torch.cat([classes, hover])
        return d
