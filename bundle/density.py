"""Count-head density maps of a pretrained encoder (the paper's Fig. 3), and loading the encoder.

For an image, a positive crop and its negative (a sub-crop of the positive resized up to the
crop size, as in pretraining) go through the count head at every location of the deepest
feature map (``TripletEncoderNet.count_map``); the map's mean is the count ``f(z)``. A network
that learned the ranking gives ``f(positive) > f(negative)``: the negative holds fewer, larger
nuclei. ``scripts/visualize.py`` draws them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bundle.checkpoints import load_checkpoint
from bundle.data import read_image
from bundle.handlers import latest_checkpoint
from bundle.initialization import describe_architecture
from bundle.networks import TripletEncoderNet
from bundle.transforms import ScaleRGB, TripletCrop
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

# ----------------------------------------------------------------------------- checkpoint


def checkpoint_file(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself when a file; for a folder, its newest ``checkpoint_epoch=N.pt``."""
    path = Path(checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoint_epoch=N.pt in this folder")
        return Path(found)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checkpoint not found (give a checkpoint_epoch=N.pt file or the folder holding them)"
        )
    return path


def network_state(path: Path) -> dict[str, torch.Tensor]:
    """The TripletEncoderNet state dict under the key ``"network"`` of a pretraining checkpoint."""
    checkpoint = load_checkpoint(path)
    if "network" not in checkpoint:
        raise ValueError(
            f"{path}: no 'network' entry (found {sorted(map(str, checkpoint))}); "
            "expected a checkpoint saved by configs/pretrain.json"
        )
    state = checkpoint["network"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'network' is not a state dict of tensors")
    return state


def encoder_backbone(path: Path, state: dict[str, torch.Tensor], backbone: str | None) -> str:
    """``backbone`` when given, else the ResNet the ``encoder.*`` tensors of ``state`` come from."""
    if backbone is not None:
        return backbone
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    found = describe_architecture(encoder)
    if found not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(f"{path}: cannot infer the backbone (the encoder is {found}); pass --backbone")
    return found


def load_network(checkpoint: str | Path, backbone: str | None = None) -> TripletEncoderNet:
    """The pretrained TripletEncoderNet of ``checkpoint`` (file or folder), on the CPU, in eval mode.

    The backbone is inferred from the encoder's tensors unless given; the embedding size is
    read from the projection's weight (embedding_dim, F).
    """
    path = checkpoint_file(checkpoint)
    state = network_state(path)
    backbone = encoder_backbone(path, state, backbone)
    if "projection.weight" not in state:
        raise ValueError(f"{path}: 'network' has no projection.weight; not a TripletEncoderNet state dict")
    try:
        net = TripletEncoderNet(backbone, embedding_dim=state["projection.weight"].shape[0])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        found = describe_architecture(
            {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        )
        first_lines = " ".join(str(error).splitlines()[:2])[:300]
        raise ValueError(
            f"{path}: holds a {found} encoder that does not load into a {backbone} TripletEncoderNet ({first_lines})"
        ) from None
    return net.eval()


# ----------------------------------------------------------------------------- computation


def density_maps(
    net: TripletEncoderNet, positive: np.ndarray | torch.Tensor, negative: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Count-head density maps of a positive crop and its negative.

    Args:
        net: the pretrained network; evaluated in eval mode (batch-norm running statistics),
            its training flag is restored afterwards.
        positive, negative: (3, S, S) uint8 RGB crops of the same size.

    Returns:
        map_pos, map_neg: (S, S) float32, ``net.count_map`` bilinearly upsampled from the
            deepest map's (h, w) to the crop size (count-head units per location).
        f_pos, f_neg: the counts ``f(z)``, i.e. the means of the maps before upsampling
            (equal to the count of ``net.forward``).
    """
    if np.shape(positive) != np.shape(negative) or len(np.shape(positive)) != 3 or np.shape(positive)[0] != 3:
        raise ValueError(
            f"positive and negative must be (3, S, S) crops of one size, got {np.shape(positive)} and {np.shape(negative)}"
        )
    batch = ScaleRGB()(np.stack([np.asarray(positive), np.asarray(negative)]))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            maps = net.count_map(batch.to(next(net.parameters()).device)).cpu()
    finally:
        net.train(was_training)
    counts = maps.mean(dim=(1, 2))
    upsampled = torch.nn.functional.interpolate(
        maps[:, None], size=batch.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    map_pos, map_neg = upsampled.numpy()
    return map_pos, map_neg, float(counts[0]), float(counts[1])


@dataclass
class DensityPair:
    """One image's row pair: crops (3, S, S) uint8, maps (S, S), counts, and the negative's
    box ``(row, col, side)`` in pixels of the positive crop."""

    name: str
    positive: np.ndarray
    negative: np.ndarray
    map_pos: np.ndarray
    map_neg: np.ndarray
    f_pos: float
    f_neg: float
    negative_box: tuple[int, int, int]


def positive_and_negative(
    path: Path, crop_size: int, negative_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """A positive crop of the image at ``path`` and its negative, both (3, S, S) uint8, with the
    negative's box (row, col, side) inside the positive; ``seed`` fixes the crop positions."""
    image = np.ascontiguousarray(read_image(path).transpose(2, 0, 1))
    cropper = TripletCrop(crop_size, max_shift=0, negative_sizes=(negative_size,), mode="bilinear")
    cropper.set_random_state(seed)
    try:
        _, positive, negative = cropper(image)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    pos_row, pos_col, _ = cropper.boxes["positive"]
    neg_row, neg_col, side = cropper.boxes["negative"]
    return positive, negative, (neg_row - pos_row, neg_col - pos_col, side)


def density_pair(net: TripletEncoderNet, path: Path, crop_size: int, negative_size: int, seed: int) -> DensityPair:
    """Crops and density maps of one image (see :func:`positive_and_negative`, :func:`density_maps`)."""
    positive, negative, box = positive_and_negative(path, crop_size, negative_size, seed)
    map_pos, map_neg, f_pos, f_neg = density_maps(net, positive, negative)
    return DensityPair(path.name, positive, negative, map_pos, map_neg, f_pos, f_neg, box)
