"""How many directions an encoder's feature maps span: the effective rank of every stage.

The effective rank (Roy & Vetterli 2007) of features X (N positions, C channels) is
exp(H(p)), p the eigenvalues of X's channel covariance divided by their sum, H the Shannon
entropy: C for features spread evenly over all channels, 1 for features on one line. An
encoder whose stages have collapsed onto a few directions hands a U-Net decoder's skip
connections less to work with (docs/results/cpu_ssl_transfer.md). ``scripts/visualize.py
ranks`` prints it for an encoder file.
"""

import copy
from collections.abc import Sequence

import numpy as np
import torch
from bundle.transforms import ScaleRGB
from torch import nn

#: Every stage map is computed on an image padded to a multiple of the encoder's stride (ResNet: 32).
ENCODER_STRIDE = 32


def effective_rank(covariance: torch.Tensor) -> float:
    """exp(entropy) of the normalised eigenvalues of a (C, C) covariance matrix."""
    eigenvalues = torch.linalg.eigvalsh(covariance.double()).clamp(min=0)
    share = eigenvalues[eigenvalues > 0] / eigenvalues.sum()
    return float(torch.exp(-(share * share.log()).sum()))


class ChannelCovariance:
    """Running channel covariance of feature maps (1, C, h, w), pooled over maps and positions.

    By hand rather than ``torch.cov`` on all positions at once: a 1000 px tile's stem map alone
    has 250,000 positions, so six tiles would hold ~0.8 GB of float64 features; the running
    sums hold (C, C).
    """

    def __init__(self):
        self.count, self.total, self.products = 0, None, None

    def add(self, features: torch.Tensor) -> None:
        flat = features[0].flatten(1).double()  # (C, h*w)
        total, products = flat.sum(dim=1), flat @ flat.T
        self.count += flat.shape[1]
        self.total = total if self.total is None else self.total + total
        self.products = products if self.products is None else self.products + products

    def covariance(self) -> torch.Tensor:
        mean = self.total / self.count
        return self.products / self.count - torch.outer(mean, mean)


@torch.no_grad()
def stage_effective_ranks(encoder: nn.Module, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Channels and effective rank of each stage map of ``encoder`` (``x -> list of maps``) over ``images``.

    Images are (3, H, W) uint8, each encoded whole (reflect-padded to a multiple of
    :data:`ENCODER_STRIDE`) with batch-norm statistics of that image (train mode, on a copy of
    the encoder, so its running statistics are untouched): a random encoder's running
    statistics describe no data, and the comparison between encoders should not hinge on them.
    """
    encoder = copy.deepcopy(encoder).train()
    scale, stages = ScaleRGB(), None
    for image in images:
        x = scale(image)[None]
        pad_rows, pad_cols = ((-side) % ENCODER_STRIDE for side in x.shape[-2:])
        x = nn.functional.pad(x, (0, pad_cols, 0, pad_rows), mode="reflect")
        maps = encoder(x)
        stages = stages or [ChannelCovariance() for _ in maps]
        for accumulator, features in zip(stages, maps):
            accumulator.add(features)
    return [
        {"channels": int(stage.total.numel()), "effective_rank": effective_rank(stage.covariance())} for stage in stages
    ]
