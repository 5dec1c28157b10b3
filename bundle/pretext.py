"""Baseline proxy tasks for self-supervised pretraining: RotNet, Jigsaw and ColorMe.

Each task is a MONAI transform (array and dictionary versions) that turns one H&E tile
(C, H, W) into a network input ``image`` and a target ``label``. All three therefore
pretrain the same encoder (:func:`bundle.networks.build_encoder`, exported as
``FlexibleUNet.encoder``) with the same engine, MONAI's ``SupervisedTrainer`` and its default
image/label batch preparation. The override configs ``configs/pretext_rotnet.json``,
``configs/pretext_jigsaw.json`` and ``configs/pretext_colorme.json`` select them on top of
``configs/pretrain.json``.

- RotNet (Gidaris et al. 2018): a crop rotated by k * 90 degrees; label k in 0..3.
- Jigsaw (Noroozi & Favaro 2016): a crop cut into 3x3 tiles, shuffled by one of a fixed set
  of permutations with a large minimum Hamming distance; label = the permutation's index.
- ColorMe: a crop with its red channel set to zero; label = that red channel in [0, 1].

Inputs are numpy arrays or torch tensors (MetaTensors after MONAI's flips); outputs are plain
torch tensors of the input dtype (uint8 tiles stay uint8 until the shared to-float steps,
except ColorMe's label, which is float32 in [0, 1] already). Outputs never share memory with
the input, so tiles cached by ``CacheDataset`` stay intact.

Geometric augmentation has to run on the source tile BEFORE these transforms: a flip or
rotation after the label is made would change which rotation or permutation the image shows.
RotNet must moreover do without 90-degree rotations (the tile would already be at a uniformly
random rotation, so k could not be told from the image) and without flips on both axes (a
vertical flip after a horizontal one is a 180-degree rotation, so k and k + 2 would look alike).
"""

import itertools
import math
from collections.abc import Hashable, Mapping
from functools import lru_cache

import numpy as np
import torch
from bundle.transforms import PATH_SUFFIX, RGB_MAX
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_tensor

#: RotNet classes: rotations by 0, 90, 180 and 270 degrees.
N_ROTATIONS = 4

#: The jigsaw puzzle is JIGSAW_GRID x JIGSAW_GRID tiles.
JIGSAW_GRID = 3

JIGSAW_CELLS = JIGSAW_GRID * JIGSAW_GRID

#: Row of the identity in :func:`all_permutations` (``itertools.permutations`` starts with it).
IDENTITY_INDEX = 0


def plain_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any array (C, H, W) -> a plain ``torch.Tensor`` (no MetaTensor), sharing memory where possible."""
    return convert_to_tensor(image, track_meta=False)


def random_corner(rng: np.random.RandomState, shape: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left corner (row, col) of a uniformly placed ``size`` x ``size`` crop of an (H, W) image."""
    height, width = int(shape[0]), int(shape[1])
    if height < size or width < size:
        raise ValueError(f"image of {height}x{width} px is smaller than crop_size={size}")
    return int(rng.randint(0, height - size + 1)), int(rng.randint(0, width - size + 1))


def crop_square(image: torch.Tensor, corner: tuple[int, int], size: int) -> torch.Tensor:
    """(C, H, W) -> the (C, size, size) view at ``corner``."""
    row, col = corner
    return image[:, row : row + size, col : col + size]


def check_crop_size(crop_size: int, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``crop_size`` is an integer >= ``minimum``."""
    if int(crop_size) != crop_size or crop_size < minimum:
        raise ValueError(f"crop_size must be an integer >= {minimum}, got {crop_size}")


class RandRotationPretext(Randomizable, Transform):
    """RotNet: (C, H, W) -> (a random ``crop_size`` crop rotated by k * 90 degrees (C, S, S), k).

    k is uniform in 0..3; the rotation is ``torch.rot90(crop, k, dims=(1, 2))`` (counter-clockwise
    as displayed), so ``torch.rot90(image, -k, dims=(1, 2))`` recovers the crop exactly.
    """

    def __init__(self, crop_size: int = 768):
        check_crop_size(crop_size)
        self.crop_size = int(crop_size)
        self.corner, self.k = (0, 0), 0

    def randomize(self, shape: tuple[int, int]) -> None:
        self.corner = random_corner(self.R, shape, self.crop_size)
        self.k = int(self.R.randint(N_ROTATIONS))

    def __call__(self, image: np.ndarray | torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, int]:
        image = plain_tensor(image)
        if randomize:
            self.randomize(image.shape[-2:])
        return torch.rot90(crop_square(image, self.corner, self.crop_size), self.k, dims=(1, 2)), self.k


@lru_cache(maxsize=1)
def all_permutations() -> np.ndarray:
    """Every permutation of the 9 jigsaw cells, identity first: (9!, 9) int8 (read-only)."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(JIGSAW_CELLS)))
    count = math.factorial(JIGSAW_CELLS) * JIGSAW_CELLS
    table = np.fromiter(flat, dtype=np.int8, count=count).reshape(-1, JIGSAW_CELLS)
    table.flags.writeable = False
    return table


def hamming_to(table: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Hamming distance (number of differing cells) of each row of ``table`` (P, 9) to ``permutation`` (9,): (P,)."""
    return (table != permutation).sum(axis=1)


def maximal_hamming_permutations(n_permutations: int = 30, seed: int = 0, include_identity: bool = True) -> np.ndarray:
    """A fixed set of 3x3 jigsaw permutations, far apart in Hamming distance: (n_permutations, 9) int64.

    Greedy farthest-point selection over all 9! permutations (as Noroozi & Favaro 2016, Alg. 1,
    which maximises the mean distance; here the minimum, so the set's minimum pairwise
    distance is what grows): each step adds a permutation whose smallest distance to those
    already chosen is largest, ties broken by ``np.random.RandomState(seed)``, so a seed always
    gives the same set. ``include_identity``: the identity (the unshuffled crop) is class 0;
    otherwise it is left out and every puzzle is shuffled.
    """
    table = all_permutations()
    if not 1 <= n_permutations <= len(table) - (not include_identity):
        raise ValueError(f"n_permutations must be in [1, {len(table) - (not include_identity)}], got {n_permutations}")
    rng = np.random.RandomState(seed)
    nearest = np.full(len(table), JIGSAW_CELLS + 1)  # distance to the nearest chosen permutation
    nearest[IDENTITY_INDEX] = -1
    chosen = []
    if include_identity:
        chosen.append(IDENTITY_INDEX)
        nearest = np.minimum(nearest, hamming_to(table, table[IDENTITY_INDEX]))
    while len(chosen) < n_permutations:
        pick = int(rng.choice(np.flatnonzero(nearest == nearest.max())))
        chosen.append(pick)
        nearest = np.minimum(nearest, hamming_to(table, table[pick]))
    return table[chosen].astype(np.int64)


def split_tiles(crop: torch.Tensor) -> torch.Tensor:
    """(C, 3t, 3t) -> (9, C, t, t), tiles in row-major order."""
    channels, side = crop.shape[0], crop.shape[-1]
    tile = side // JIGSAW_GRID
    grid = crop.reshape(channels, JIGSAW_GRID, tile, JIGSAW_GRID, tile)
    return grid.permute(1, 3, 0, 2, 4).reshape(JIGSAW_CELLS, channels, tile, tile)


def assemble_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """(9, C, t, t), row-major -> one image (C, 3t, 3t); inverse of :func:`split_tiles`."""
    _, channels, tile, _ = tiles.shape
    grid = tiles.reshape(JIGSAW_GRID, JIGSAW_GRID, channels, tile, tile).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, JIGSAW_GRID * tile, JIGSAW_GRID * tile)


def gap_tiles(tiles: torch.Tensor, offsets: np.ndarray, gap: int, fill_value: float) -> torch.Tensor:
    """Shrink each tile to a (t - gap) window at its ``offsets`` row (row, col), centred on a ``fill_value`` frame.

    tiles (9, C, t, t), offsets (9, 2) in [0, gap] -> (9, C, t, t). The frame keeps tiles
    ``gap`` pixels apart and the random windows misalign them, so edge continuity and
    straight lines across tile borders cannot give the permutation away.
    """
    inner = tiles.shape[-1] - gap
    framed = torch.full_like(tiles, fill_value)
    start = gap // 2
    for cell, (row, col) in enumerate(offsets):
        framed[cell, :, start : start + inner, start : start + inner] = tiles[
            cell, :, row : row + inner, col : col + inner
        ]
    return framed


class JigsawPretext(Randomizable, Transform):
    """Jigsaw: (C, H, W) -> (puzzle (C, S', S'), index of its permutation).

    A random crop of side S' = ``crop_size`` rounded down to a multiple of 3 is cut into 3x3
    tiles (row-major), each optionally shrunk by ``tile_gap`` pixels (:func:`gap_tiles`), and
    reassembled so that cell i shows tile ``permutations[index][i]``; the index is uniform over
    the ``n_permutations`` permutations of :func:`maximal_hamming_permutations` (fixed by
    ``permutation_seed``, independent of the sampling random state).

    The tiles are reassembled into ONE image, encoded in one pass, rather than fed as nine
    siamese inputs with a concatenating head as in Noroozi & Favaro: this keeps the proxy on
    the same encoder, batch preparation and engine as the other pretraining tasks (a classifier
    on the pooled encoder features), so its encoder is exported and compared like theirs.
    """

    def __init__(
        self,
        crop_size: int = 768,
        n_permutations: int = 30,
        tile_gap: int = 8,
        permutation_seed: int = 0,
        include_identity: bool = True,
        fill_value: float = 0,
    ):
        check_crop_size(crop_size, minimum=JIGSAW_GRID)
        self.crop_size = int(crop_size) - int(crop_size) % JIGSAW_GRID
        tile = self.crop_size // JIGSAW_GRID
        if not 0 <= tile_gap < tile:
            raise ValueError(
                f"tile_gap must be in [0, {tile}) for {tile}-pixel tiles (crop_size={crop_size}), got {tile_gap}"
            )
        self.tile_gap, self.fill_value = int(tile_gap), fill_value
        self.permutations = maximal_hamming_permutations(n_permutations, permutation_seed, include_identity)
        self.corner, self.index = (0, 0), 0
        self.offsets = np.zeros((JIGSAW_CELLS, 2), dtype=np.int64)

    def randomize(self, shape: tuple[int, int]) -> None:
        self.corner = random_corner(self.R, shape, self.crop_size)
        self.index = int(self.R.randint(len(self.permutations)))
        self.offsets = self.R.randint(0, self.tile_gap + 1, size=(JIGSAW_CELLS, 2))

    def __call__(self, image: np.ndarray | torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, int]:
        image = plain_tensor(image)
        if randomize:
            self.randomize(image.shape[-2:])
        tiles = split_tiles(crop_square(image, self.corner, self.crop_size))
        if self.tile_gap:
            tiles = gap_tiles(tiles, self.offsets, self.tile_gap, self.fill_value)
        order = torch.as_tensor(self.permutations[self.index])
        return assemble_tiles(tiles[order]).contiguous(), self.index


class ColorMePretext(Randomizable, Transform):
    """ColorMe: (C, H, W) -> (crop with channel ``channel`` zeroed (C, S, S), that channel / max_value (1, S, S) float32).

    The input keeps all C channels (red = 0) so the encoder has the same input layer as for
    fine-tuning; the target is the red channel scaled to [0, 1] (``max_value`` 255 for uint8).
    """

    def __init__(self, crop_size: int = 768, channel: int = 0, max_value: float = RGB_MAX):
        check_crop_size(crop_size)
        if max_value <= 0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.crop_size, self.channel, self.max_value = int(crop_size), channel, max_value
        self.corner = (0, 0)

    def randomize(self, shape: tuple[int, int]) -> None:
        self.corner = random_corner(self.R, shape, self.crop_size)

    def __call__(self, image: np.ndarray | torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        image = plain_tensor(image)
        if not 0 <= self.channel < image.shape[0]:
            raise ValueError(
                f"ColorMe channel {self.channel} is out of range for an image with {image.shape[0]} channels"
            )
        if randomize:
            self.randomize(image.shape[-2:])
        crop = crop_square(image, self.corner, self.crop_size)
        label = crop[self.channel : self.channel + 1].to(torch.float32) / self.max_value
        inputs = crop.clone()
        inputs[self.channel] = 0
        return inputs, label


class PretextDictionary(Randomizable, MapTransform):
    """Dictionary version of a proxy transform: ``d[key]`` (C, H, W) -> ``d[key]`` input, ``d[label_key]`` target.

    One source key. A tile smaller than the crop raises ``ValueError`` naming the file
    recorded by :class:`bundle.transforms.LoadTiled`.
    """

    def __init__(self, keys: KeysCollection, transform: Randomizable, label_key: str = "label"):
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one source key, got {self.keys}")
        self.transform, self.label_key = transform, label_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> "PretextDictionary":
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        self.transform.randomize(data)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        image = plain_tensor(d[key])
        try:
            self.randomize(image.shape[-2:])
        except ValueError as error:
            raise ValueError(f"{d.get(key + PATH_SUFFIX, key)}: {error}") from None
        d[key], d[self.label_key] = self.transform(image, randomize=False)
        return d


class RandRotationPretextd(PretextDictionary):
    """Dictionary version of :class:`RandRotationPretext`: ``d[label_key]`` is k (int)."""

    def __init__(self, keys: KeysCollection = "image", crop_size: int = 768, label_key: str = "label"):
        super().__init__(keys, RandRotationPretext(crop_size), label_key)


class JigsawPretextd(PretextDictionary):
    """Dictionary version of :class:`JigsawPretext`: ``d[label_key]`` is the permutation index (int)."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        crop_size: int = 768,
        n_permutations: int = 30,
        tile_gap: int = 8,
        permutation_seed: int = 0,
        include_identity: bool = True,
        fill_value: float = 0,
        label_key: str = "label",
    ):
        transform = JigsawPretext(crop_size, n_permutations, tile_gap, permutation_seed, include_identity, fill_value)
        super().__init__(keys, transform, label_key)


class ColorMePretextd(PretextDictionary):
    """Dictionary version of :class:`ColorMePretext`: ``d[label_key]`` is the (1, S, S) float target."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        crop_size: int = 768,
        channel: int = 0,
        max_value: float = RGB_MAX,
        label_key: str = "label",
    ):
        super().__init__(keys, ColorMePretext(crop_size, channel, max_value), label_key)
