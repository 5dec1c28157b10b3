"""MONAI transforms of the bundle: loading, triplet crops for pretraining, H&E colour jitter.

Images travel channel-first as uint8 (C, H, W) until the late conversion to float, so
cached tiles stay small and crops are views, not copies.
"""

from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from bundle.data import MAX_PIXELS, read_image, read_label
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

PATH_SUFFIX = "_path"

#: The image contract of every network in the bundle: (3, H, W) RGB, channel-first, uint8 values
#: divided by this into float32 [0, 1]. :class:`ScaleRGB` and :class:`ScaleRGBd` apply it;
#: nothing else scales images.
RGB_MAX = 255.0


class _LoadPathd(MapTransform):
    """Replace ``d[key]`` (a path) by the array :meth:`read` makes of it; keep the path in ``d[key + "_path"]``.

    Files whose header claims more than ``max_pixels`` pixels are refused before decoding.
    """

    def __init__(self, keys: KeysCollection, max_pixels: int = MAX_PIXELS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.max_pixels = max_pixels

    @abstractmethod
    def read(self, path: str) -> np.ndarray:
        """The array stored at ``path``."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{PATH_SUFFIX}"] = str(d[key])
            d[key] = self.read(d[key])
        return d


class LoadTiled(_LoadPathd):
    """Read H&E tiles: ``d[key]`` path -> (3, H, W) uint8 RGB (see :class:`_LoadPathd`)."""

    def read(self, path: str) -> np.ndarray:
        return np.ascontiguousarray(read_image(path, self.max_pixels).transpose(2, 0, 1))


class LoadLabeld(_LoadPathd):
    """Read instance label maps: ``d[key]`` path -> (1, H, W) integer ids, 0 = background (see :class:`_LoadPathd`)."""

    def read(self, path: str) -> np.ndarray:
        return read_label(path, self.max_pixels)[None]


class ScaleRGB(Transform):
    """(..., 3, H, W) uint8 RGB (array or tensor) -> float32 tensor in [0, 1]: the network input (:data:`RGB_MAX`)."""

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float() / RGB_MAX

    @staticmethod
    def inverse(image: np.ndarray | torch.Tensor) -> np.ndarray:
        """(3, H, W) float in [0, 1], or uint8 RGB as read -> (H, W, 3) uint8 RGB, the tile as it was read (for writers)."""
        values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if values.dtype == np.uint8:
            return values.transpose(1, 2, 0)
        return np.clip(np.rint(values * RGB_MAX), 0, RGB_MAX).astype(np.uint8).transpose(1, 2, 0)


class ScaleRGBd(MapTransform):
    """Dictionary version of :class:`ScaleRGB` (MONAI metadata is dropped: the images are plain tensors)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.scale = ScaleRGB()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key])
        return d


def resize_square(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(C, h, w) uint8 -> (C, size, size) uint8 with torch interpolation (``mode``: nearest, bilinear, bicubic, area)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None].float()
    align = {} if mode in ("nearest", "area") else {"align_corners": False}
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode=mode, **align)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8).numpy()


class TripletCrop(Randomizable, Transform):
    """Scale-wise triplet from one image (C, H, W): anchor, positive and negative, each (C, S, S).

    - anchor: a random ``crop_size`` (S) crop;
    - positive: an S crop whose corner is shifted from the anchor's by at most ``max_shift``
      pixels per axis (drawn uniformly), kept inside the image: same tissue, next to it;
    - negative: a square sub-crop of the positive, side drawn from ``negative_sizes``, resized
      to S with ``mode``: it shows fewer, larger nuclei than the positive.

    Paper values (1000x1000 tiles at 40x): S = 768, negative sides {512, 256, 128, 64}.

    ``view_size`` V (default S, the paper's triplet) zooms every view out: anchor and positive
    are V crops resized down to S, the negative a sub-crop of the positive's V region. With
    V > S and every negative side >= S, no view is ever enlarged, so the negative is not
    blurrier than the positive (with ``mode`` "area", all three are antialiased reductions):
    resampling blur, which the paper's negative carries and its positive does not, no longer
    tells them apart, only nucleus size and count do (docs/results/cpu_ssl_transfer.md).

    An image smaller than V raises ``ValueError``: a silent rescale would change nucleus size,
    the very cue the method learns from. Boxes of the last call are in :attr:`boxes` as
    ``{"anchor"|"positive"|"negative": (row, col, side)}`` (negative relative to the image).
    """

    def __init__(
        self,
        crop_size: int = 768,
        max_shift: int = 232,
        negative_sizes: Sequence[int] = (512, 256, 128, 64),
        mode: str = "bilinear",
        view_size: int | None = None,
    ):
        view_size = crop_size if view_size is None else view_size
        if view_size < crop_size:
            raise ValueError(f"view_size must be >= crop_size={crop_size}, got {view_size}")
        if any(not 0 < side < view_size for side in negative_sizes) or not negative_sizes:
            raise ValueError(
                f"negative_sizes {list(negative_sizes)} must be non-empty and each in (0, view_size={view_size})"
            )
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.crop_size, self.view_size, self.max_shift, self.mode = crop_size, view_size, max_shift, mode
        self.negative_sizes = tuple(negative_sizes)
        self.boxes: dict[str, tuple[int, int, int]] = {}

    def _shifted(self, corner: int, limit: int) -> int:
        low, high = max(0, corner - self.max_shift), min(limit, corner + self.max_shift)
        return int(self.R.randint(low, high + 1))

    def randomize(self, shape: tuple[int, int]) -> None:
        size = self.view_size
        if shape[0] < size or shape[1] < size:
            name = "crop_size" if size == self.crop_size else "view_size"
            raise ValueError(f"image of {shape[0]}x{shape[1]} px is smaller than {name}={size}")
        row_limit, col_limit = shape[0] - size, shape[1] - size
        row, col = int(self.R.randint(0, row_limit + 1)), int(self.R.randint(0, col_limit + 1))
        pos_row, pos_col = self._shifted(row, row_limit), self._shifted(col, col_limit)
        side = int(self.R.choice(self.negative_sizes))
        neg_row = pos_row + int(self.R.randint(0, size - side + 1))
        neg_col = pos_col + int(self.R.randint(0, size - side + 1))
        self.boxes = {
            "anchor": (row, col, size),
            "positive": (pos_row, pos_col, size),
            "negative": (neg_row, neg_col, side),
        }

    def __call__(self, image: np.ndarray, randomize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if randomize:
            self.randomize(image.shape[-2:])
        views = (image[:, r : r + s, c : c + s] for r, c, s in self.boxes.values())
        size = self.crop_size
        return tuple(view if view.shape[-1] == size else resize_square(view, size, self.mode) for view in views)


class TripletCropd(Randomizable, MapTransform):
    """Dictionary version of :class:`TripletCrop`: ``d[key]`` -> ``d["anchor"|"positive"|"negative"]``.

    The source image is dropped from the output (``keep_source=False``) so batches carry only
    the three crops. Errors name the file recorded by :class:`LoadTiled`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        crop_size: int = 768,
        max_shift: int = 232,
        negative_sizes: Sequence[int] = (512, 256, 128, 64),
        mode: str = "bilinear",
        output_keys: Sequence[str] = ("anchor", "positive", "negative"),
        keep_source: bool = False,
        view_size: int | None = None,
    ):
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"TripletCropd takes one source key, got {self.keys}")
        self.cropper = TripletCrop(crop_size, max_shift, negative_sizes, mode, view_size)
        self.output_keys, self.keep_source = tuple(output_keys), keep_source

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "TripletCropd":
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        self.cropper.randomize(data)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        image = d[key] if self.keep_source else d.pop(key)
        try:
            self.randomize(image.shape[-2:])
        except ValueError as error:
            raise ValueError(f"{d.get(key + PATH_SUFFIX, key)}: {error}") from None
        d.update(zip(self.output_keys, self.cropper(image, randomize=False)))
        return d


class RandHEDJitter(RandomizableTransform):
    """H&E colour augmentation (Tellez et al. 2018) on float RGB in [0, 1], shape (C=3, ...).

    Optical density is split into haematoxylin, eosin and DAB concentrations
    (scikit-image's Ruifrok matrices); each is scaled by U(1 - sigma_scale, 1 + sigma_scale)
    and shifted by U(-sigma_shift, sigma_shift), then mapped back to RGB. Written here
    because MONAI and scikit-image offer the colour deconvolution but no jitter.
    """

    def __init__(self, prob: float = 0.5, sigma_scale: float = 0.05, sigma_shift: float = 0.05):
        super().__init__(prob)
        self.sigma_scale, self.sigma_shift = sigma_scale, sigma_shift
        self.scale = np.ones(3)
        self.shift = np.zeros(3)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.scale = self.R.uniform(1 - self.sigma_scale, 1 + self.sigma_scale, 3)
        self.shift = self.R.uniform(-self.sigma_shift, self.sigma_shift, 3)

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        image = torch.as_tensor(image)
        # OD' = (OD @ hed_from_rgb * scale + shift) @ rgb_from_hed, folded into one 3x3 map and
        # one offset, applied channel-first as (3, 3) @ (3, H*W): a single small matmul per crop.
        mixing = hed_from_rgb @ np.diag(self.scale) @ rgb_from_hed
        offset = self.shift @ rgb_from_hed
        optical_density = torch.log(image.float().clamp(min=1.0 / 255)).neg_().reshape(3, -1)
        jittered = torch.as_tensor(mixing.T, dtype=torch.float32) @ optical_density
        jittered += torch.as_tensor(offset, dtype=torch.float32)[:, None]
        return jittered.neg_().exp_().clamp_(0, 1).reshape(image.shape).to(image.dtype)


class RandHEDJitterd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandHEDJitter`: one draw per sample, applied to every key."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, sigma_scale: float = 0.05, sigma_shift: float = 0.05):
        super().__init__(keys)
        self.jitter = RandHEDJitter(prob, sigma_scale, sigma_shift)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandHEDJitterd":
        super().set_random_state(seed, state)
        self.jitter.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        self.jitter.randomize()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d
