from collections import Counter

import pytest
import torch
from bundle.samplers import DistinctTileSampler


def batches(sampler: DistinctTileSampler) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_every_batch_holds_distinct_tiles_when_there_are_enough():
    torch.manual_seed(0)
    sampler = DistinctTileSampler(n_items=24, batch_size=8, batches=200)
    drawn = batches(sampler)
    assert len(drawn) == 200 and len(list(sampler)) == len(sampler) == 1600
    assert all(len(set(batch)) == 8 for batch in drawn)
    # every tile is drawn, about equally often (1600 / 24 = 66.7 each)
    counts = Counter(index for batch in drawn for index in batch)
    assert set(counts) == set(range(24)) and min(counts.values()) > 40


@pytest.mark.parametrize("n_items, batch_size", [(2, 8), (3, 8), (5, 8), (1, 4)])
def test_with_fewer_tiles_than_the_batch_every_tile_appears_evenly(n_items, batch_size):
    torch.manual_seed(1)
    for batch in batches(DistinctTileSampler(n_items, batch_size, batches=20)):
        counts = Counter(batch)
        assert set(counts) == set(range(n_items))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_the_draw_follows_torch_global_seed():
    sampler = DistinctTileSampler(10, 4, 5)
    torch.manual_seed(3)
    first = list(sampler)
    torch.manual_seed(3)
    assert list(sampler) == first
    assert list(sampler) != first  # the next iteration draws anew


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 0, "batch_size": 2, "batches": 1},
        {"n_items": 3, "batch_size": 0, "batches": 1},
        {"n_items": 3, "batch_size": 2, "batches": 0},
    ],
)
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(ValueError, match=">= 1"):
        DistinctTileSampler(**kwargs)
