"""Self-supervised losses: instance-aware (scale-wise triplet + pair-wise count ranking) and the proxies'.

The network's output for a batch of B triplets is ``(z, count)`` with shapes (3B, E) and
(3B,), ordered anchors, positives, negatives (see :class:`bundle.networks.TripletEncoderNet`).
The baseline proxies (:mod:`bundle.pretext`) use :class:`PretextClassificationLoss` (RotNet,
Jigsaw) and :class:`ColorRegressionLoss` (ColorMe). Fine-tuning with a HoVer map uses
:class:`ClassAndHoVerLoss`.
"""

import torch
from bundle.targets import HOVER_CHANNELS, N_CLASSES
from monai.transforms import SobelGradients
from monai.utils import CommonKeys
from torch import nn


def squared_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean distance: (B, E), (B, E) -> (B,)."""
    return (x - y).pow(2).sum(dim=1)


def split_triplets(
    pred: tuple[torch.Tensor, torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
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


def class_indices(target: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Proxy class labels (N,) or (N, 1) -> (N,) int64; raises when N differs from the logits' ``n_rows``."""
    target = torch.as_tensor(target).reshape(-1).long()
    if target.shape[0] != n_rows:
        raise ValueError(f"expected one class label per prediction ({n_rows}), got {target.shape[0]} labels")
    return target


class PretextClassificationLoss(nn.Module):
    """Cross-entropy of the classification proxies (RotNet: 4 rotations, Jigsaw: permutation index).

    pred: logits (N, K); target: class indices (N,) or (N, 1). Computed in float32 (AMP-safe).
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(pred.float(), class_indices(target, pred.shape[0]))

    def log_values(self, output: dict) -> dict[str, float]:
        """Scalars to log from an engine's iteration output: the loss and the top-1 accuracy."""
        pred, target = output[CommonKeys.PRED], output[CommonKeys.LABEL]
        with torch.no_grad():
            target = class_indices(target, pred.shape[0])
            accuracy = (pred.argmax(dim=1) == target).float().mean().item()
            return {"loss": self(pred, target).item(), "accuracy": accuracy}


class ColorRegressionLoss(nn.Module):
    """ColorMe regression: ``distance(sigmoid(pred), target)``.

    pred: raw network output (N, 1, H, W) of ``segmentation_unet(out_channels=1)``; target: the
    red channel in [0, 1], same shape. The sigmoid lives here, not in the network, so the
    network stays a plain FlexibleUNet while predictions are bounded to the target's range.
    ``distance``: "l1" (torch ``L1Loss``, default: robust to the stain outliers of H&E) or "mse".
    """

    DISTANCES = {"l1": nn.L1Loss, "mse": nn.MSELoss}

    def __init__(self, distance: str = "l1"):
        super().__init__()
        if distance not in self.DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {sorted(self.DISTANCES)}")
        self.distance = self.DISTANCES[distance]()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and red-channel target {tuple(target.shape)} differ in shape"
            )
        return self.distance(torch.sigmoid(pred.float()), target.float())

    def log_values(self, output: dict) -> dict[str, float]:
        """Scalars to log from an engine's iteration output: the loss and the mean absolute error in [0, 1] units."""
        pred, target = output[CommonKeys.PRED], output[CommonKeys.LABEL]
        with torch.no_grad():
            mae = (torch.sigmoid(pred.float()) - target.float()).abs().mean().item()
            return {"loss": self(pred, target).item(), "mae": mae}


class ClassAndHoVerLoss(nn.Module):
    """``class_loss(logits, classes) + hover_weight * (MSE(hv) + MSE(gradients of hv) on nuclei)``.

    pred: (N, 5, H, W), 3 class logits then the horizontal and vertical maps
    (:data:`bundle.targets.HOVER_CHANNELS`); target: (N, 3, H, W) from
    :class:`bundle.targets.ClassAndHoVerTargetd` (class index, horizontal, vertical).
    ``class_loss`` gets the logits and the (N, 1, H, W) class index, e.g. MONAI ``DiceCELoss``.
    The HoVer terms are HoVer-Net's (Graham et al. 2019; MONAI ``HoVerNetLoss``, which ties
    them to its own nucleus branch loss and dictionary outputs): the MSE of the maps over all
    pixels, and the MSE of their 5x5 Sobel derivatives (horizontal map along x, vertical along
    y) over nucleus pixels.
    """

    def __init__(self, class_loss: nn.Module, hover_weight: float = 1.0):
        super().__init__()
        if hover_weight <= 0:
            raise ValueError(f"hover_weight must be > 0 (use the class loss alone for none), got {hover_weight}")
        self.class_loss, self.hover_weight = class_loss, hover_weight
        self.along_x = SobelGradients(kernel_size=5, spatial_axes=1)
        self.along_y = SobelGradients(kernel_size=5, spatial_axes=0)

    def derivatives(self, hover: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) maps -> (N, 2, H, W): d(horizontal)/dx, d(vertical)/dy (the batch as channels)."""
        return torch.stack([self.along_x(hover[:, 0]).as_tensor(), self.along_y(hover[:, 1]).as_tensor()], dim=1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_out = N_CLASSES + len(HOVER_CHANNELS)
        if pred.shape[1] != n_out or target.shape[1] != 1 + len(HOVER_CHANNELS):
            raise ValueError(
                f"expected (N, {n_out}, H, W) outputs and (N, 3, H, W) targets (class, horizontal, vertical), "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        classes, hover_true = target[:, :1], target[:, 1:].float()
        hover_pred = pred[:, list(HOVER_CHANNELS)].float()
        on_nuclei = (classes > 0).float().expand_as(hover_true)
        mse = nn.functional.mse_loss(hover_pred, hover_true)
        gradient_error = (self.derivatives(hover_pred) - self.derivatives(hover_true)).pow(2)
        msge = (gradient_error * on_nuclei).sum() / (on_nuclei.sum() + 1e-8)
        return self.class_loss(pred[:, :N_CLASSES], classes) + self.hover_weight * (mse + msge)


def segmentation_loss(class_loss: nn.Module, hover_weight: float = 0.0) -> nn.Module:
    """The fine-tuning loss: ``class_loss`` alone, or :class:`ClassAndHoVerLoss` when ``hover_weight`` > 0."""
    if hover_weight < 0:
        raise ValueError(f"hover_weight must be >= 0, got {hover_weight}")
    return ClassAndHoVerLoss(class_loss, hover_weight) if hover_weight > 0 else class_loss
