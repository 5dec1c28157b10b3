"""Engine pieces for MONAI's ``SupervisedTrainer``: batch preparation for triplets."""

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch


class PrepareTripletBatch(PrepareBatch):
    """Batch of triplets -> ONE network input (3B, C, H, W): anchors, positives, negatives.

    Concatenating lets the shared-weight encoder embed all three in a single forward pass
    (batch norm statistics over all 3B crops). There is no target: the loss is self-supervised.
    """

    def __init__(self, keys: Sequence[str] = ("anchor", "positive", "negative")):
        self.keys = tuple(keys)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        inputs = torch.cat([torch.as_tensor(batchdata[key]) for key in self.keys])
        return inputs.to(device=device, non_blocking=non_blocking, **kwargs), None
