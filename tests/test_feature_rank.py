import numpy as np
import pytest
import torch
from bundle.feature_rank import ChannelCovariance, effective_rank, stage_effective_ranks
from bundle.networks import build_encoder


def test_effective_rank_counts_the_directions_used():
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert effective_rank(torch.diag(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2.0)


def test_running_covariance_equals_torch_cov_over_all_positions():
    maps = [torch.randn(1, 4, 5, 6), torch.randn(1, 4, 3, 3) + 2.0]
    running = ChannelCovariance()
    for features in maps:
        running.add(features)
    pooled = torch.cat([features[0].flatten(1) for features in maps], dim=1).double()
    torch.testing.assert_close(running.covariance(), torch.cov(pooled, correction=0))


def test_stage_ranks_of_an_encoder_leave_its_statistics_alone():
    torch.manual_seed(0)
    encoder = build_encoder("resnet10").eval()
    before = encoder.bn1.running_mean.clone()
    images = [np.random.default_rng(k).integers(0, 256, (3, 70, 90), dtype=np.uint8) for k in range(2)]
    stages = stage_effective_ranks(encoder, images)
    assert [stage["channels"] for stage in stages] == [64, 64, 128, 256, 512]
    assert all(1.0 <= stage["effective_rank"] <= stage["channels"] for stage in stages)
    assert torch.equal(encoder.bn1.running_mean, before) and not encoder.training
