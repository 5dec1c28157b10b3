"""Figures of a pretrained encoder: the count head's density maps (the paper's Fig. 3), and
which cue the head ranks by (:mod:`bundle.proxy_cues`).

    python scripts/visualize.py density --checkpoint models/pretrain --image TILE.tif \
        [--image OTHER.tif] [--backbone resnet18] [--crop_size 768 --negative_size 256 \
        --seed 0 --out docs/results/density.png]
    python scripts/visualize.py cues --checkpoint models/pretrain --image TILE.tif \
        [--image OTHER.tif] [--crop_size 128 --negative_sizes "[96,64,48,32]" --crops_per_image 24]

The computation is :mod:`bundle.density`. For each image, a positive crop and its negative (a sub-crop of the positive resized up to
the crop size, as in pretraining) go through the count head at every location of the deepest
feature map (``TripletEncoderNet.count_map``); the map's mean is the count ``f(z)``. The PNG
shows each crop beside its map (bilinearly upsampled to the crop size, one colour scale for
every map of the figure). A network that learned the ranking gives ``f(positive) > f(negative)``:
the negative holds fewer, larger nuclei.
"""

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import matplotlib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

matplotlib.use("Agg")  # files only, no display

from bundle.atomic import atomic_path  # noqa: E402
from bundle.data import read_image  # noqa: E402
from bundle.density import DensityPair, density_pair, load_network  # noqa: E402
from bundle.feature_rank import stage_effective_ranks  # noqa: E402
from bundle.initialization import initialize_encoder  # noqa: E402
from bundle.networks import segmentation_unet  # noqa: E402
from bundle.proxy_cues import proxy_cues  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

PANEL_INCHES = 3.2  # side of one crop or map panel
COLOUR_BAR_INCHES = 0.9
TITLE_INCHES = 0.4
DPI = 100
HEAT_MAP = "magma"
NEGATIVE_BOX_COLOUR = "cyan"


# ----------------------------------------------------------------------------- drawing


def figure_inches(n_images: int) -> tuple[float, float]:
    """(width, height) in inches of the figure for ``n_images`` row pairs; pixels = inches * DPI."""
    return 2 * PANEL_INCHES + COLOUR_BAR_INCHES, 2 * n_images * PANEL_INCHES + TITLE_INCHES


def shared_norm(pairs: Sequence[DensityPair]) -> Normalize:
    """One colour scale spanning every map of the figure."""
    values = np.concatenate([np.ravel(m) for pair in pairs for m in (pair.map_pos, pair.map_neg)])
    low, high = float(values.min()), float(values.max())
    return Normalize(vmin=low, vmax=high if high > low else low + 1e-6)


def draw_pair(axes: np.ndarray, pair: DensityPair, norm: Normalize) -> object:
    """Draw one image's 2x2 panels on ``axes`` (2, 2): crops left, maps right; returns a map image."""
    size = pair.positive.shape[-1]
    row, col, side = pair.negative_box
    axes[0, 0].imshow(pair.positive.transpose(1, 2, 0))
    axes[0, 0].add_patch(
        Rectangle(
            (col - 0.5, row - 0.5), side, side, fill=False, edgecolor=NEGATIVE_BOX_COLOUR, linestyle="--", linewidth=1.2
        )
    )
    axes[0, 0].set_title(f"{pair.name}\npositive: {size} px crop", fontsize=9)
    axes[1, 0].imshow(pair.negative.transpose(1, 2, 0))
    axes[1, 0].set_title(f"negative: {side} px box, resized to {size} px", fontsize=9)
    mapped = axes[0, 1].imshow(pair.map_pos, cmap=HEAT_MAP, norm=norm)
    axes[0, 1].set_title(f"positive density: f(z) = {pair.f_pos:.3f}", fontsize=9)
    axes[1, 1].imshow(pair.map_neg, cmap=HEAT_MAP, norm=norm)
    axes[1, 1].set_title(f"negative density: f(z) = {pair.f_neg:.3f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    return mapped


def draw_density_figure(pairs: Sequence[DensityPair], out: str | Path) -> None:
    """Write the PNG at ``out`` (atomically): two rows per image, one shared colour bar."""
    figure = Figure(figsize=figure_inches(len(pairs)), dpi=DPI, layout="constrained")
    axes = figure.subplots(2 * len(pairs), 2, squeeze=False)
    norm = shared_norm(pairs)
    mapped = [draw_pair(axes[2 * i : 2 * i + 2], pair, norm) for i, pair in enumerate(pairs)]
    figure.colorbar(mapped[0], ax=axes.ravel().tolist(), shrink=0.6, label="count head per location (mean = f(z))")
    figure.suptitle("Count-head density maps: f(positive) > f(negative) when the ranking is learned", fontsize=10)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


# ----------------------------------------------------------------------------- command line


def image_paths(image: str | Sequence[str] | None) -> list[Path]:
    """``--image`` as fire hands it (one path, a list, or the string ``"[a.tif,b.tif]"``) -> paths."""
    if image is None or (isinstance(image, (list, tuple)) and not image):
        raise ValueError("give at least one --image (repeat --image, or pass a list)")
    if isinstance(image, (list, tuple)):
        return [Path(str(item)) for item in image]
    text = str(image).strip()
    if text.startswith("[") and text.endswith("]"):
        return [Path(item.strip().strip("'\"")) for item in text[1:-1].split(",") if item.strip()]
    return [Path(text)]


def merge_repeated_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``--flag a --flag b`` (or ``--flag=a``) -> one ``--flag=["a", "b"]``; fire keeps only the last.

    One occurrence is left as it was, so fire's own parsing of a list literal still applies.
    """
    name = f"--{flag}"
    values, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith(name + "="):
            values.append(argv[i][len(name) + 1 :])
        else:
            rest.append(argv[i])
        i += 1
    if len(values) < 2:
        return list(argv)
    return [*rest, f"{name}={json.dumps(values)}"]


def density(
    checkpoint: str = "models/pretrain",
    image: str | Sequence[str] | None = None,
    backbone: str | None = None,
    crop_size: int = 768,
    negative_size: int = 256,
    seed: int = 0,
    out: str = "docs/results/density.png",
) -> None:
    """Draw count-head density maps of a positive crop and its negative for each ``--image``.

    Args:
        checkpoint: a pretraining checkpoint file, or the folder of them (newest is used).
        image: one tile or several (repeat ``--image``); each must be at least crop_size px.
        backbone: the encoder's ResNet; inferred from the checkpoint when omitted.
        crop_size: side S of the positive crop, in pixels.
        negative_size: side of the negative's sub-crop, resized to S (0 < side < S).
        seed: image i (0-based, in the order given) takes its crop positions from seed + i.
        out: the PNG to write.
    """
    paths = image_paths(image)
    if Path(out).suffix.lower() != ".png":
        raise ValueError(f"{out}: the figure is written as PNG; give an --out ending in .png")
    net = load_network(checkpoint, backbone)
    pairs = [density_pair(net, path, crop_size, negative_size, seed + index) for index, path in enumerate(paths)]
    for pair in pairs:
        print(
            f"{pair.name}: f(positive) = {pair.f_pos:.4f}, f(negative) = {pair.f_neg:.4f}, "
            f"f(positive) > f(negative): {pair.f_pos > pair.f_neg}"
        )
    draw_density_figure(pairs, out)
    print(f"wrote {out}")


def cues(
    checkpoint: str = "models/pretrain",
    image: str | Sequence[str] | None = None,
    backbone: str | None = None,
    crop_size: int = 128,
    negative_sizes: Sequence[int] = (96, 64, 48, 32),
    crops_per_image: int = 24,
    seed: int = 0,
) -> None:
    """Print how the count head ranks the proxy's negative, a blurred copy of the positive, and the two.

    Args:
        checkpoint: a pretraining checkpoint file, or the folder of them (newest is used).
        image: one tile or several (repeat ``--image``), each larger than crop_size px.
        backbone: the encoder's ResNet; inferred from the checkpoint when omitted.
        crop_size: side S of the positive crop, in pixels (the pretraining's crop_size).
        negative_sizes: sides of the negatives' sub-crops (the pretraining's negative_sizes).
        crops_per_image: positive crops drawn from each image.
        seed: the crop positions' seed.
    """
    net = load_network(checkpoint, backbone)
    images = []
    for path in image_paths(image):
        array = read_image(path)  # names the file when it cannot be read
        if min(array.shape[:2]) <= crop_size:
            raise ValueError(f"{path}: {array.shape[0]}x{array.shape[1]} px is not larger than --crop_size {crop_size}")
        images.append(np.ascontiguousarray(array.transpose(2, 0, 1)))
    figures = proxy_cues(net, images, crop_size, tuple(negative_sizes), crops_per_image, seed)
    print(json.dumps(figures, indent=1))


def ranks(
    encoder: str = "models/pretrained_encoder.pt",
    image: str | Sequence[str] | None = None,
    backbone: str = "resnet18",
    seed: int = 0,
) -> None:
    """Print the effective rank of each stage of an encoder's feature maps over whole tiles.

    Args:
        encoder: an encoder weights file (``models/pretrained_encoder.pt``), or ``random``.
        image: one tile or several (repeat ``--image``).
        backbone: the encoder's ResNet.
        seed: the random encoder's seed.
    """
    torch.manual_seed(seed)
    network = segmentation_unet(backbone)
    if encoder == "random":
        initialize_encoder(network, "scratch")
    else:
        initialize_encoder(network, "ssl", encoder)
    images = [np.ascontiguousarray(read_image(path).transpose(2, 0, 1)) for path in image_paths(image)]
    print(json.dumps(stage_effective_ranks(network.encoder, images), indent=1))


if __name__ == "__main__":
    sys.argv[1:] = merge_repeated_flag(sys.argv[1:], "image")
    fire.Fire({"density": density, "cues": cues, "ranks": ranks})
