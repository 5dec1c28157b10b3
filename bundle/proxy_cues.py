"""Which cue a pretrained count head ranks by: nuclei, or the negative's resampling blur.

The proxy's negative is a sub-crop of the positive resized up to the crop size, so it differs
from the positive in nucleus size and count *and* in sharpness. To tell them apart, each
positive crop P (S px, native) gets two companions: N, its sub-crop of side s resized to S
(the proxy's negative), and B, P itself resized to s and back to S (the same nuclei, as blurred
as N). A head that counts nuclei gives f(B) ~ f(P) and f(B) > f(N); one that reads blur gives
f(P) > f(B) and f(B) ~ f(N). ``scripts/visualize.py cues`` prints the figures for a checkpoint.
"""

from collections.abc import Sequence

import numpy as np
import torch
from bundle.transforms import ScaleRGB, resize_square
from torch import nn


def cue_crops(
    image: np.ndarray, crop_size: int, negative_sizes: Sequence[int], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` triples (P, N, B) from one (3, H, W) uint8 image: three (count, 3, S, S) uint8 arrays."""
    if min(image.shape[-2:]) <= crop_size:
        raise ValueError(f"image of {image.shape[-2]}x{image.shape[-1]} px is not larger than crop_size={crop_size}")
    positives, negatives, blurred = [], [], []
    for _ in range(count):
        row, col = (int(rng.integers(0, limit - crop_size)) for limit in image.shape[-2:])
        positive = image[:, row : row + crop_size, col : col + crop_size]
        side = int(rng.choice(negative_sizes))
        sub_row, sub_col = (int(value) for value in rng.integers(0, crop_size - side + 1, size=2))
        sub_crop = positive[:, sub_row : sub_row + side, sub_col : sub_col + side]
        positives.append(positive)
        negatives.append(resize_square(sub_crop, crop_size, "bilinear"))
        blurred.append(resize_square(resize_square(positive, side, "bilinear"), crop_size, "bilinear"))
    return np.stack(positives), np.stack(negatives), np.stack(blurred)


@torch.no_grad()
def proxy_cues(
    net: nn.Module,
    images: Sequence[np.ndarray],
    crop_size: int = 128,
    negative_sizes: Sequence[int] = (96, 64, 48, 32),
    crops_per_image: int = 24,
    seed: int = 0,
) -> dict[str, float]:
    """Ranking rates of ``net``'s count head (``net(x) -> (z, f)``) over crops of ``images`` ((3, H, W) uint8).

    - ``proxy``: P(f(P) > f(N)), the pretraining task;
    - ``blur_only``: P(f(P) > f(B)), the same nuclei, only blur differs (0.5 if blur is ignored);
    - ``equal_blur``: P(f(B) > f(N)), equally blurred, B holds more, smaller nuclei;
    - ``blur_share``: mean (f(P) - f(B)) / mean (f(P) - f(N)), the part of the proxy's gap that blur alone makes;
    - ``embedding_blur_share``: median d(P, B) / d(P, N), the same for the embedding (squared L2).
    """
    rng = np.random.default_rng(seed)
    triples = [cue_crops(image, crop_size, negative_sizes, crops_per_image, rng) for image in images]
    scale, net = ScaleRGB(), net.eval()
    (z_p, f_p), (z_n, f_n), (z_b, f_b) = (
        net(scale(np.concatenate([triple[k] for triple in triples]))) for k in range(3)
    )
    distance = lambda a, b: ((a - b) ** 2).sum(dim=1)  # noqa: E731
    return {
        "proxy": float((f_p > f_n).float().mean()),
        "blur_only": float((f_p > f_b).float().mean()),
        "equal_blur": float((f_b > f_n).float().mean()),
        "blur_share": float((f_p - f_b).mean() / (f_p - f_n).mean()),
        "embedding_blur_share": float((distance(z_p, z_b) / distance(z_p, z_n)).median()),
    }
