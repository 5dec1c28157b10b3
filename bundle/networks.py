"""Networks: the self-supervised triplet encoder and the fine-tuning U-Net share one encoder.

The encoder is built exactly as :class:`monai.networks.nets.FlexibleUNet` builds its own,
so ``TripletEncoderNet.encoder.state_dict()`` loads into ``FlexibleUNet(...).encoder`` with
strict keys and no renaming. The baseline proxies reuse it: :class:`PretextClassifierNet`
(RotNet, Jigsaw) and :func:`segmentation_unet` with one output channel (ColorMe).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from bundle.stain import REFERENCE_BUFFER
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.basic_unet import TwoConv
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


def trainable_parameters(network: nn.Module, frozen: Sequence[str] = ()) -> list[nn.Parameter]:
    """``network``'s parameters, less those whose names start with a prefix in ``frozen``.

    The frozen ones get ``requires_grad = False`` and keep their initial values (pretraining's
    ``frozen_layers``, e.g. ``["encoder.conv1.", "encoder.bn1."]``: a stem that stays random,
    so the proxy task has to be solved by the deeper stages); names are those of the network
    inside a ``DistributedDataParallel`` wrapper. A prefix that names no parameter
    raises ``ValueError``: a typo would otherwise freeze nothing, silently.
    """
    network = getattr(network, "module", network)  # DistributedDataParallel names its parameters module.*
    prefixes = tuple(frozen)
    unmatched = [
        prefix for prefix in prefixes if not any(name.startswith(prefix) for name, _ in network.named_parameters())
    ]
    if unmatched:
        raise ValueError(f"frozen_layers {unmatched} name no parameter of {type(network).__name__}")
    trainable = []
    for name, parameter in network.named_parameters():
        if prefixes and name.startswith(prefixes):
            parameter.requires_grad_(False)
        else:
            trainable.append(parameter)
    return trainable


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


class FullResolutionUNet(FlexibleUNet):
    """``FlexibleUNet`` whose last decoder block also sees the image at full resolution.

    FlexibleUNet's last block upsamples the 1/2-resolution features with no skip connection,
    so outlines 1-2 px wide are drawn from features computed at half resolution. Here a
    two-convolution stem of ``stem_channels`` on the input (N, C, H, W) is concatenated in that
    block, as the first level of the original U-Net. MONAI offers no such option. The encoder
    and its state-dict keys are FlexibleUNet's, so pretrained encoders load as before; the
    stem's keys start with ``full_resolution_stem.``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        backbone: str,
        stem_channels: int = 16,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        act: str | tuple = ("relu", {"inplace": True}),
        **kwargs,
    ):
        super().__init__(in_channels, out_channels, backbone, norm=norm, act=act, **kwargs)
        last = self.decoder.blocks[-1]
        upsampled = last.convs.conv_0.conv.in_channels
        decoded = last.convs.conv_1.conv.out_channels
        self.full_resolution_stem = TwoConv(self.spatial_dims, in_channels, stem_channels, act, norm, bias=False)
        last.convs = TwoConv(self.spatial_dims, stem_channels + upsampled, decoded, act, norm, bias=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = [self.full_resolution_stem(inputs)] + self.encoder(inputs)
        return self.segmentation_head(self.decoder(features, self.skip_connect + 1))


#: Buffer of a :class:`DownsampledInputUNet` holding its factor, so a checkpoint says at what scale it works.
DOWNSAMPLE_BUFFER = "input_downsample"


class DownsampledInputUNet(FlexibleUNet):
    """``FlexibleUNet`` that works on its input reduced by an integer ``factor`` (2: a 40x tile
    at 20x) and returns logits at the input's size.

    (N, C, H, W) -> area average over ``factor`` x ``factor`` blocks -> U-Net -> logits
    (N, out_channels, h, w) -> bilinear upsampling -> (N, out_channels, H, W). The network costs
    about ``factor ** 2`` times less per pixel and sees ``factor`` times more tissue per window,
    while the loss, thresholds and post-processing stay at the input's resolution (targets are
    not resampled). H and W should be multiples of ``32 * factor``. MONAI has no such wrapper, and
    a wrapper module would rename the state-dict keys; here they are FlexibleUNet's, plus
    :data:`DOWNSAMPLE_BUFFER`, so pretrained encoders load as before.
    """

    def __init__(self, in_channels: int, out_channels: int, backbone: str, factor: int = 2, **kwargs):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(
                f"input_downsample must be an integer >= 2 here (1: the plain FlexibleUNet), got {factor!r}"
            )
        super().__init__(in_channels, out_channels, backbone, **kwargs)
        self.factor = factor  # a Python int for the pooling; the buffer is what a checkpoint records
        self.register_buffer(DOWNSAMPLE_BUFFER, torch.tensor(factor))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        reduced = F.avg_pool2d(inputs, self.factor)
        logits = self.segmentation_head(self.decoder(self.encoder(reduced), self.skip_connect))
        return F.interpolate(logits, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_unet(
    backbone: str = "resnet101",
    in_channels: int = 3,
    out_channels: int = 3,
    full_resolution_skip: bool = False,
    stain_reference: Sequence[Sequence[float]] | None = None,
    input_downsample: int = 1,
    **kwargs,
) -> FlexibleUNet:
    """The fine-tuning network: ``FlexibleUNet`` with a random decoder (3 classes by default);
    with ``full_resolution_skip``, a :class:`FullResolutionUNet`; with ``input_downsample`` > 1,
    a :class:`DownsampledInputUNet` (the two exclude each other). A ``stain_reference``
    ((3, 3), :data:`bundle.stain.MACENKO_REFERENCE`) is kept as the buffer
    :data:`bundle.stain.REFERENCE_BUFFER`, so the weights say which stain their inputs had."""
    if full_resolution_skip and input_downsample != 1:
        raise ValueError(
            f"full_resolution_skip and input_downsample {input_downsample} exclude each other: "
            "the network would see no full-resolution image"
        )
    args = dict(in_channels=in_channels, out_channels=out_channels, backbone=backbone, pretrained=False, **kwargs)
    if input_downsample != 1:
        network = DownsampledInputUNet(factor=input_downsample, **args)
    else:
        network = (FullResolutionUNet if full_resolution_skip else FlexibleUNet)(**args)
    if stain_reference is not None:
        network.register_buffer(REFERENCE_BUFFER, torch.as_tensor(stain_reference, dtype=torch.float32))
    return network


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
