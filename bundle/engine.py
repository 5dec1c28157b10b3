"""Engine pieces for MONAI's ``SupervisedTrainer``: batch preparation for triplets, bfloat16 on CPUs."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer, SimpleInferer


class PrepareTripletBatch(PrepareBatch):
    """Batch of triplets -> ONE network input (3B, C, H, W): anchors, positives, negatives.

    Concatenating lets the shared-weight encoder embed all three in a single forward pass
    (batch norm statistics over all 3B crops). There is no target: the loss is self-supervised.
    """

    def __init__(self, keys: Sequence[str] = ("anchor", "positive", "negative")):
        self.keys = tuple(keys)

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        inputs = torch.cat([torch.as_tensor(batchdata[key]) for key in self.keys])
        return inputs.to(device=device, non_blocking=non_blocking, **kwargs), None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return outputs.float()
