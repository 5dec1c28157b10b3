"""Inferers wrapping MONAI's: bfloat16 autocast on CPUs, and flip test-time augmentation."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from bundle.targets import HOVER_CHANNELS, N_CLASSES
from monai.inferers import Inferer, SimpleInferer

#: Identity, vertical, horizontal and both flips of a (N, C, H, W) batch.
FLIPS = ((), (2,), (3,), (2, 3))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AVX512-BF16 or AMX tiles.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on every
    AVX-512 core, where bfloat16 is emulated and a fine-tuning step takes 1.9x the float32
    step (docs/benchmarks.md), so the instruction sets are asked for directly.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


class CpuBf16Inferer(Inferer):
    """Runs ``inferer`` under ``torch.autocast("cpu", bfloat16)`` for inputs on the CPU; float32 out.

    MONAI's engines autocast on CUDA only (``amp``). On CPUs with native bfloat16 a
    training step of the U-Net takes about half the time (docs/benchmarks.md); weights,
    optimiser state and the loss stay float32. ``enabled="auto"`` turns it on where the CPU
    has native bfloat16 (elsewhere emulated bfloat16 is slower than float32); True forces it,
    False never. CUDA inputs pass through unchanged.
    """

    def __init__(self, inferer: Inferer | None = None, enabled: bool | str = "auto"):
        if enabled not in (True, False, "auto"):
            raise ValueError(f"enabled must be True, False or 'auto', got {enabled!r}")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.enabled = cpu_has_native_bf16() if enabled == "auto" else enabled

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return outputs.float()


class FlipTTAInferer(Inferer):
    """Flip test-time augmentation: the mean of ``inferer``'s logits over flipped copies of the input.

    Each flip of the (N, C, H, W) input is predicted and flipped back before averaging, so
    the output is aligned with the input and, for an input that all ``flips`` leave
    unchanged, equals the plain pass. Logits are averaged (softmax follows in the
    post-processing). A 5-channel output carries a HoVer map after the classes: flipping the
    image along x negates the horizontal map, along y the vertical map, so those channels
    change sign as they are flipped back. ``enabled=False`` is the plain pass, at no extra cost. MONAI's
    ``TestTimeAugmentation`` works on dictionaries of random invertible transforms; these
    four fixed flips need only this.
    """

    def __init__(self, inferer: Inferer | None = None, enabled: bool = True, flips: Sequence[Sequence[int]] = FLIPS):
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.enabled, self.flips = bool(enabled), [tuple(dims) for dims in flips]
        if self.enabled and not self.flips:
            raise ValueError("flips must name at least one flip (the identity is ())")

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        total = None
        for dims in self.flips:
            flipped = torch.flip(inputs, dims) if dims else inputs
            logits = self.inferer(flipped, network, *args, **kwargs)
            logits = unflip(logits, dims) if dims else logits
            total = logits if total is None else total + logits
        return total / len(self.flips)


def unflip(outputs: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) outputs of a flipped input, flipped back along ``dims``; with a HoVer map
    (C = 5), the horizontal map negated for a flip of x (dim 3), the vertical for y (dim 2)."""
    outputs = torch.flip(outputs, dims)
    if outputs.shape[1] != N_CLASSES + len(HOVER_CHANNELS):
        return outputs
    horizontal, vertical = HOVER_CHANNELS
    signs = torch.ones(outputs.shape[1], dtype=outputs.dtype, device=outputs.device)
    signs[horizontal] = -1.0 if 3 in dims else 1.0
    signs[vertical] = -1.0 if 2 in dims else 1.0
    return outputs * signs[None, :, None, None]
