"""Instance-aware self-supervised losses (scale-wise triplet + pair-wise count ranking).

The network's output for a batch of B triplets is ``(z, count)`` with shapes (3B, E) and
(3B,), ordered anchors, positives, negatives (see :class:`bundle.networks.TripletEncoderNet`).
"""

import torch
from monai.utils import CommonKeys
from torch import nn


def squared_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean distance: (B, E), (B, E) -> (B,)."""
    return (x - y).pow(2).sum(dim=1)


def split_triplets(pred: tuple[torch.Tensor, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(z (3B, E), count (3B,)) -> ((za, zp, zn), (fa, fp, fn)), each (B, ...)."""
    z, count = pred
    if z.shape[0] % 3:
        raise ValueError(f"expected a batch of anchors, positives and negatives (3B rows), got {z.shape[0]}")
    return z.chunk(3), count.chunk(3)


class InstanceAwareLoss(nn.Module):
    """``w_st * L_ST + w_cr * L_CR``.

    - L_ST, scale-wise triplet: ``mean(max(0, d(za, zp) - d(za, zn) + margin_triplet))``,
      d = squared L2 (torch ``TripletMarginWithDistanceLoss``).
    - L_CR, count ranking: ``mean(max(0, f(zn) - f(zp) + margin_rank))``: the positive holds
      more nuclei than its zoomed-in negative (torch ``MarginRankingLoss`` with target 1).

    Setting a weight to 0 gives the paper's ablations (L_ST only, L_CR only).
    """

    def __init__(self, margin_triplet: float = 1.0, margin_rank: float = 1.0, w_st: float = 1.0, w_cr: float = 1.0):
        super().__init__()
        if w_st < 0 or w_cr < 0 or w_st + w_cr == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got w_st={w_st}, w_cr={w_cr}")
        self.w_st, self.w_cr = w_st, w_cr
        self.triplet = nn.TripletMarginWithDistanceLoss(distance_function=squared_l2, margin=margin_triplet)
        self.ranking = nn.MarginRankingLoss(margin=margin_rank)

    def terms(self, pred: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both loss terms and the weighted total, as 0-d tensors."""
        (za, zp, zn), (_, fp, fn) = split_triplets(pred)
        l_st = self.triplet(za, zp, zn)
        l_cr = self.ranking(fp, fn, torch.ones_like(fp))
        return {"loss": self.w_st * l_st + self.w_cr * l_cr, "l_st": l_st, "l_cr": l_cr}

    def forward(self, pred: tuple[torch.Tensor, torch.Tensor], target: object = None) -> torch.Tensor:
        """Total loss; ``target`` is unused (self-supervised) and kept for the engine's call signature."""
        return self.terms(pred)["loss"]

    def log_values(self, output: dict) -> dict[str, float]:
        """Scalars to log from an engine's iteration output: both terms, total, accuracies."""
        pred = output[CommonKeys.PRED]
        with torch.no_grad():
            values = {name: value.item() for name, value in self.terms(pred).items()}
        return {**values, **triplet_statistics(pred)}


def triplet_statistics(pred: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Share of triplets with d(za, zp) < d(za, zn), and of pairs with f(zp) > f(zn)."""
    (za, zp, zn), (_, fp, fn) = split_triplets(pred)
    with torch.no_grad():
        triplet_acc = (squared_l2(za, zp) < squared_l2(za, zn)).float().mean().item()
        rank_acc = (fp > fn).float().mean().item()
    return {"triplet_acc": triplet_acc, "rank_acc": rank_acc}
