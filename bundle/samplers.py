"""Training sampler: every batch from as many distinct tiles as the data holds."""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class DistinctTileSampler(Sampler[int]):
    """Indices for ``batches`` batches of ``batch_size``, each batch from distinct tiles.

    Each batch is a fresh random permutation of the ``n_items`` tiles, truncated to
    ``batch_size`` (and, when there are fewer tiles than ``batch_size``, followed by further
    fresh permutations): with ``n_items >= batch_size`` a batch never repeats a tile, so it
    mixes that many stains; with fewer, every tile appears ``batch_size // n_items`` or one
    more times. An epoch is ``batches`` optimiser steps whatever the number of tiles, so label
    fractions differ only in data. Use with ``DataLoader(batch_size=batch_size, shuffle=False)``.

    The permutations come from a generator seeded from torch's global generator when the
    iteration starts (as ``torch.utils.data.RandomSampler`` does), so a run reseeded at each
    epoch draws the same batches whether it went straight through or was resumed.
    PyTorch's samplers draw with replacement or shuffle the whole set, which lets one batch
    repeat a tile while others go unseen: hence this one.
    """

    def __init__(self, n_items: int, batch_size: int, batches: int):
        for name, value in (("n_items", n_items), ("batch_size", batch_size), ("batches", batches)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.n_items, self.batch_size, self.batches = int(n_items), int(batch_size), int(batches)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def batch(self, generator: torch.Generator) -> list[int]:
        """One batch of ``batch_size`` tile indices, distinct when there are enough tiles."""
        repeats = -(-self.batch_size // self.n_items)
        indices = torch.cat([torch.randperm(self.n_items, generator=generator) for _ in range(repeats)])
        return indices[: self.batch_size].tolist()

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        for _ in range(self.batches):
            yield from self.batch(generator)
