"""Networks: the self-supervised triplet encoder and the fine-tuning U-Net share one encoder.

The encoder is built exactly as :class:`monai.networks.nets.FlexibleUNet` builds its own,
so ``TripletEncoderNet.encoder.state_dict()`` loads into ``FlexibleUNet(...).encoder`` with
strict keys and no renaming. The baseline proxies reuse it: :class:`PretextClassifierNet`
(RotNet, Jigsaw) and :func:`segmentation_unet` with one output channel (ColorMe).
"""

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn


def build_encoder(backbone: str = "resnet101", in_channels: int = 3, spatial_dims: int = 2) -> nn.Module:
    """The encoder of ``FlexibleUNet(in_channels, ..., backbone)``: returns a list of feature maps."""
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(
            f"unknown backbone {backbone!r}; FlexibleUNet offers {sorted(FLEXUNET_BACKBONE.register_dict)}"
        )
    entry = FLEXUNET_BACKBONE.register_dict[backbone]
    params = {**entry["parameter"], "spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": False}
    return entry["type"](**params)


def encoder_feature_channels(backbone: str) -> int:
    """Channels of the deepest feature map of ``backbone`` (e.g. 2048 for resnet101)."""
    return FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-1]


class TripletEncoderNet(nn.Module):
    """Shared-weight encoder for instance-aware pretraining.

    x (N, C, H, W) -> encoder -> deepest map (N, F, h, w) -> global average pool (N, F)
    -> linear projection ``z`` (N, embedding_dim), not normalised -> count head ``f(z)`` (N,).

    Anchor, positive and negative go through ONE forward pass: the caller concatenates them
    on the batch axis (so batch norm sees all three), and :meth:`forward` returns
    ``(z, count)`` for the whole batch.
    """

    def __init__(
        self, backbone: str = "resnet101", in_channels: int = 3, embedding_dim: int = 128, spatial_dims: int = 2
    ):
        super().__init__()
        self.backbone = backbone
        self.encoder = build_encoder(backbone, in_channels, spatial_dims)
        self.projection = nn.Linear(encoder_feature_channels(backbone), embedding_dim)
        self.count_head = nn.Linear(embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)[-1]
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        z = self.projection(pooled)
        return z, self.count_head(z).squeeze(1)

    def count_map(self, x: torch.Tensor) -> torch.Tensor:
        """Count head at every location of the deepest map: (N, h, w); its mean is ``f(z)``.

        Projection and head are linear, so they commute with the average pool.
        """
        features = self.encoder(x)[-1]
        z_map = torch.einsum("nfhw,ef->nehw", features, self.projection.weight) + self.projection.bias[:, None, None]
        return torch.einsum("nehw,oe->nohw", z_map, self.count_head.weight)[:, 0] + self.count_head.bias


def segmentation_unet(
    backbone: str = "resnet101", in_channels: int = 3, out_channels: int = 3, **kwargs
) -> FlexibleUNet:
    """The fine-tuning network: ``FlexibleUNet`` with a random decoder (3 classes by default)."""
    return FlexibleUNet(
        in_channels=in_channels, out_channels=out_channels, backbone=backbone, pretrained=False, **kwargs
    )


class PretextClassifierNet(nn.Module):
    """Encoder + classifier for the classification proxies (RotNet, Jigsaw).

    x (N, C, H, W) -> encoder -> deepest map (N, F, h, w) -> global average pool (N, F)
    -> linear -> logits (N, n_classes). ``encoder`` is built by :func:`build_encoder`, so its
    state dict loads into ``FlexibleUNet(...).encoder`` with strict keys.
    """

    def __init__(self, backbone: str = "resnet101", n_classes: int = 4, in_channels: int = 3, spatial_dims: int = 2):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classification proxy needs n_classes >= 2, got {n_classes}")
        self.backbone = backbone
        self.encoder = build_encoder(backbone, in_channels, spatial_dims)
        self.classifier = nn.Linear(encoder_feature_channels(backbone), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
