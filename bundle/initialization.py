"""Encoder initialisation of the fine-tuning U-Net: scratch, self-supervised, or ImageNet.

Every load is strict: a file whose tensors do not match the encoder is an error that names
the file and both architectures, never a silent partial load.
"""

import logging
import re
from collections import Counter
from pathlib import Path

import torch
from bundle.checkpoints import CheckpointError, load_checkpoint
from monai.networks.nets import FlexibleUNet

logger = logging.getLogger(__name__)

INIT_MODES = ("scratch", "ssl", "imagenet")
# Blocks per ResNet stage, as MONAI's ResNet builds them (same as torchvision's).
RESNET_STAGE_BLOCKS = {
    (1, 1, 1, 1): "resnet10",
    (2, 2, 2, 2): "resnet18",
    (3, 4, 6, 3): "resnet34",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
    (3, 24, 36, 3): "resnet200",
}
STAGE_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: tensors only (``weights_only=True``), on the CPU.

    Raises ``FileNotFoundError`` or :class:`bundle.checkpoints.CheckpointError` (a ``ValueError``) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    state = load_checkpoint(path)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected a state dict of tensors")
    return state


def describe_architecture(state: dict[str, torch.Tensor]) -> str:
    """A short name for the ResNet a state dict comes from (by blocks per stage), else a key count."""
    blocks = Counter()
    for key in state:
        if match := STAGE_BLOCK_KEY.match(key):
            blocks[int(match.group(1))] = max(blocks[int(match.group(1))], int(match.group(2)) + 1)
    stages = tuple(blocks[stage] for stage in (1, 2, 3, 4))
    name = RESNET_STAGE_BLOCKS.get(stages, f"an encoder with {len(state)} tensors")
    # resnet50 has resnet34's stage depths, with bottleneck blocks (a third conv per block)
    return "resnet50" if name == "resnet34" and "layer1.0.conv3.weight" in state else name


def load_encoder_weights(network: FlexibleUNet, path: str | Path, drop_prefixes: tuple[str, ...] = ()) -> int:
    """Load ``path`` into ``network.encoder`` strictly; keys starting with ``drop_prefixes`` are ignored.

    Returns the number of tensors loaded. Raises ``ValueError`` naming the file, the
    backbone it was made for and the network's backbone when keys or shapes differ.
    """
    state = {k: v for k, v in load_weights(path).items() if not k.startswith(drop_prefixes)}
    expected = network.encoder.state_dict()
    shapes_differ = [k for k in state.keys() & expected.keys() if state[k].shape != expected[k].shape]
    if state.keys() != expected.keys() or shapes_differ:
        missing, unexpected = len(expected.keys() - state.keys()), len(state.keys() - expected.keys())
        raise ValueError(
            f"{path}: weights of {describe_architecture(state)} do not fit the '{network.backbone}' encoder "
            f"({missing} tensors missing, {unexpected} unexpected, {len(shapes_differ)} of another shape)"
        )
    network.encoder.load_state_dict(state, strict=True)
    return len(state)


def initialize_encoder(network: FlexibleUNet, init: str = "ssl", weights: str | Path | None = None) -> FlexibleUNet:
    """Start ``network``'s encoder from ``init`` (in place) and return the network; the decoder is left as it is.

    - ``scratch``: the encoder stays as built, random (``weights`` must be None);
    - ``ssl``: an encoder file written by ``configs/pretrain.json`` (``models/pretrained_encoder.pt``);
    - ``imagenet``: a torchvision ResNet state-dict file the user provides (its ``fc.*``
      classifier is dropped; MONAI's ResNet has torchvision's key names). Nothing is downloaded.

    ``configs/train.json`` runs it as the first step of ``run``, so ``network_def`` is the
    architecture only and evaluation or inference configs never need an encoder file.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    if init == "scratch":
        if weights is not None:
            raise ValueError(f"init='scratch' takes no weights file, got {weights}")
        logger.info("encoder '%s' initialised at random (scratch)", network.backbone)
        return network
    if weights is None:
        raise ValueError(f"init='{init}' needs a weights file")
    loaded = load_encoder_weights(network, weights, drop_prefixes=("fc.",) if init == "imagenet" else ())
    logger.info(
        "encoder '%s' initialised from %s weights %s: %d tensors matched", network.backbone, init, weights, loaded
    )
    return network
