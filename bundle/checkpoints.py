"""Checkpoint files read as untrusted data: every problem is reported with the file's name,
and loading is always tensor-only (``weights_only=True``), never the unsafe fallback."""

import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from bundle.networks import DOWNSAMPLE_BUFFER
from bundle.stain import REFERENCE_BUFFER
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader

PICKLED_OBJECTS = (
    "holds Python objects other than tensors and plain containers; refused, since unpickling them could run code"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(path, problem)
        self.path, self.problem = Path(path), problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _first_line(error: Exception) -> str:
    """The first line of ``error``'s message: PyTorch appends advice to load unsafely after it."""
    return (str(error).strip().splitlines() or [""])[0][:200]


def archive_problem(path: str | Path) -> str | None:
    """What makes ``path`` not an intact ``torch.save`` archive (missing, empty, not a zip,
    a damaged member by its CRC-32, no ``data.pkl``), or None. Reads the file, loads nothing."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        return "not a zip archive: truncated or corrupt"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # CRC-32 of every member: catches bytes flipped inside a valid zip
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"damaged zip archive ({_first_line(error)})"
    if damaged is not None:
        return f"damaged: member {damaged} fails its CRC-32 check"
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "a zip archive but not a PyTorch checkpoint (no data.pkl)"
    return None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", required_keys: Sequence[str] = (), mmap: bool = False
) -> dict:
    """The dict in checkpoint ``path``, loaded tensor-only; ``CheckpointError`` naming the file otherwise.

    ``required_keys``: top-level keys the dict must hold (e.g. ``"network"``).
    """
    problem = archive_problem(path)
    if problem:
        raise CheckpointError(path, problem)
    try:
        content = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise CheckpointError(path, PICKLED_OBJECTS) from None
    except Exception as error:  # torch raises several types for files it cannot read
        raise CheckpointError(path, f"cannot be read ({type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(content, dict):
        raise CheckpointError(path, f"holds a {type(content).__name__}, not a dict of weights")
    missing = [key for key in required_keys if key not in content]
    if missing:
        raise CheckpointError(path, f"not a checkpoint of this workflow (no {', '.join(missing)} in it)")
    return content


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` whose errors name the file and the problem.

    The file is checked with :func:`load_checkpoint` first (memory-mapped, so the check costs
    little), then loaded by MONAI; a checkpoint that does not fit ``load_dict`` (another
    network, missing objects) is reported with its path instead of a bare key or shape error.
    """

    def __call__(self, engine) -> None:
        if not Path(self.load_path).exists():
            raise missing_model(self.load_path)
        content = load_checkpoint(self.load_path, mmap=True)
        try:
            super().__call__(engine)
        except Exception as error:
            raise does_not_fit(self.load_path, self.load_dict, error, content) from None


def missing_model(path: str | Path) -> CheckpointError:
    """The error for a model file that is not there, saying how to get one."""
    return CheckpointError(
        path,
        "file not found; train a model first (configs/train.json writes models/model.pt "
        "under --bundle_root) or point --model_path at one",
    )


def does_not_fit(path: str | Path, objects: Sequence[str], error: Exception, content: dict) -> CheckpointError:
    """The error for a readable checkpoint that does not load into ``objects`` (names), with a backbone hint."""
    return CheckpointError(
        path,
        f"does not fit this workflow's {', '.join(objects)} ({type(error).__name__}: "
        f"{_first_line(error)}){_backbone_hint(content)}",
    )


def _backbone_hint(content: dict) -> str:
    """``"; it holds a resnet18 network: rerun with --backbone resnet18"`` when the file's encoder is a known ResNet, else ""."""
    from bundle.initialization import describe_architecture  # bundle.initialization loads through this module

    network = content.get("network", content)
    encoder = (
        {key.removeprefix("encoder."): value for key, value in network.items() if key.startswith("encoder.")}
        if isinstance(network, dict)
        else {}
    )
    name = describe_architecture(encoder) if encoder else ""
    return f"; it holds a {name} network: rerun with --backbone {name}" if name.startswith("resnet") else ""


def load_network_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load ``path`` into ``network`` strictly and return it (whole-slide inference, tools).

    Accepts a plain state dict or a MONAI ``CheckpointSaver`` file holding ``{"network": ...}``
    (as ``CheckpointLoader`` does, through ignite's ``Checkpoint.load_objects``); its errors
    are those of :class:`CheckedCheckpointLoader`.

    Raises:
        CheckpointError: naming the file, when missing, unreadable or not loadable into ``network``.
    """
    if not Path(path).is_file():
        raise missing_model(path)
    content = load_checkpoint(path, map_location)
    try:
        Checkpoint.load_objects(to_load={"network": network}, checkpoint=content, strict=True)
    except Exception as error:  # ignite and torch raise several types for mismatched weights
        raise does_not_fit(path, ("network",), error, content) from None
    return network


def _network_state(path: str | Path) -> dict | None:
    """The network's state dict in checkpoint ``path``, None when the file is missing or
    unreadable (the loader then reports the problem with the file's name)."""
    if not Path(path).is_file() or archive_problem(path):
        return None
    content = load_checkpoint(path, mmap=True)
    network = content.get("network", content)
    return network if isinstance(network, dict) else None


def network_output_channels(path: str | Path, default: int = 3) -> int:
    """Output channels of the segmentation network in checkpoint ``path`` (its head's weight):
    3 for the class map, 5 with a HoVer map; ``default`` when the file is missing or holds no
    such head."""
    head = (_network_state(path) or {}).get("segmentation_head.0.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) else default


def network_has_full_resolution_skip(path: str | Path) -> bool:
    """Whether checkpoint ``path`` holds a :class:`bundle.networks.FullResolutionUNet` (its stem's
    weights); False when the file is missing."""
    return any(key.startswith("full_resolution_stem.") for key in _network_state(path) or {})


def network_input_downsample(path: str | Path) -> int:
    """The factor by which the model in checkpoint ``path`` reduces its input
    (:class:`bundle.networks.DownsampledInputUNet`); 1 for a model at the input's scale or when
    the file is missing."""
    factor = (_network_state(path) or {}).get(DOWNSAMPLE_BUFFER)
    return int(factor) if isinstance(factor, torch.Tensor) else 1


def network_stain_reference(path: str | Path) -> list[list[float]] | None:
    """The stain reference a model in checkpoint ``path`` was trained on ((3, 3), see
    :class:`bundle.stain.StainNormalize`); None when it was trained without stain
    normalisation or the file is missing."""
    reference = (_network_state(path) or {}).get(REFERENCE_BUFFER)
    return reference.tolist() if isinstance(reference, torch.Tensor) else None
