"""One predictor for every path that turns an H&E image into nuclei: tiles, slides, and their tools.

:class:`NucleiPredictor` holds the chain once: the image contract
(:class:`bundle.transforms.ScaleRGB`) -> ``inferer`` over ``network`` (sliding windows, flip
TTA) -> softmax over the 3 classes -> ``instances`` (:class:`bundle.postprocess.ClassMapToInstances`
with the thresholds stored beside the model). Tile inference (``configs/inference.json``,
through :class:`InstancesInferer` in its evaluator) and whole-slide inference
(``configs/inference_wsi.json``, calling the predictor per slide tile) share one instance of
it, so the two cannot disagree; a tile larger than ``grid_tile_size`` goes through the same
grid as a slide. Validation, evaluation and threshold tuning (``configs/train.json``:
``validate#predictor``, through :class:`ProbabilityInferer` and :class:`PredictedInstancesd`)
run the same chain with validation's windows; the tuner takes its probabilities.
"""

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from bundle.stain import StainNormalize
from bundle.targets import N_CLASSES, as_label_map
from bundle.transforms import ScaleRGB
from bundle.wsi.tiling import check_tiling, instances_by_grid
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform


class NucleiPredictor:
    """(3, H, W) uint8 RGB -> (H, W) int32 nucleus ids (0 background).

    Args:
        network: the segmentation network (3-class logits); run in eval mode, without gradients.
        inferer: e.g. MONAI ``SlidingWindowInferer`` or :class:`bundle.inferers.FlipTTAInferer`.
        instances: probabilities (3 or 5, H, W) -> ids, e.g. :class:`bundle.postprocess.ClassMapToInstances`.
        device: where the network runs.
        amp: autocast on ``device`` (float16 on CUDA).
        grid_tile_size, grid_overlap: an image with a side longer than ``grid_tile_size`` px
            goes through the slide grid (:func:`bundle.wsi.tiling.instances_by_grid`: windows
            of that size overlapping by ``grid_overlap`` px, nuclei stitched), so that its memory
            grows with its pixels by the ids map only, not by probabilities and post-processing maps.
            None: every image in one pass.
        stain_reference: the stain the network was trained on ((3, 3), see
            :class:`bundle.stain.StainNormalize`): every image is normalised to it first, whole,
            or window by window when it goes through the grid (as slide tiles are). None:
            images go in as they are.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable,
        instances: Callable,
        device: str | torch.device = "cpu",
        amp: bool = False,
        grid_tile_size: int | None = None,
        grid_overlap: int = 128,
        stain_reference: Sequence[Sequence[float]] | None = None,
    ):
        self.network, self.inferer, self.instances = network, inferer, instances
        self.device, self.amp = torch.device(device), amp
        if grid_tile_size is not None:
            check_tiling(grid_tile_size, grid_overlap)
        self.grid_tile_size, self.grid_overlap = grid_tile_size, grid_overlap
        self.scale = ScaleRGB()
        self.normalize_stain = StainNormalize(stain_reference) if stain_reference is not None else None

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float network inputs in [0, 1] -> (N, 3, H, W) float32 class probabilities;
        (N, 5, H, W) for a network with a HoVer map: softmax over the classes, the maps as regressed."""
        self.network.eval()
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            logits = self.inferer(torch.as_tensor(images).to(self.device), self.network)
        logits = torch.as_tensor(logits).float()
        classes = torch.softmax(logits[:, :N_CLASSES], dim=1)
        return torch.cat([classes, logits[:, N_CLASSES:]], dim=1) if logits.shape[1] > N_CLASSES else classes

    def instances_of(self, probabilities: torch.Tensor) -> np.ndarray:
        """(3, H, W) probabilities (5 with a HoVer map) -> (H, W) int32 nucleus ids."""
        return as_label_map(self.instances(probabilities.cpu())).astype(np.int32)

    def __call__(self, rgb: np.ndarray | torch.Tensor) -> np.ndarray:
        """(3, H, W) uint8 RGB -> (H, W) int32 ids; an image larger than ``grid_tile_size`` by the grid,
        scaled window by window (the whole image is never held as floats)."""

        def one_pass(window: np.ndarray | torch.Tensor) -> np.ndarray:
            if self.normalize_stain is not None:
                window = self.normalize_stain(torch.as_tensor(window).cpu().numpy())
            return self.instances_of(self.probabilities(self.scale(window)[None])[0])

        if self.grid_tile_size is None or max(rgb.shape[-2:]) <= self.grid_tile_size:
            return one_pass(rgb)
        return instances_by_grid(one_pass, rgb, self.grid_tile_size, self.grid_overlap)


class ProbabilityInferer(Inferer):
    """A MONAI inferer giving ``predictor``'s class probabilities, for engines (their ``network``
    argument is the predictor's own network and is not used twice)."""

    def __init__(self, predictor: NucleiPredictor):
        self.predictor = predictor

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.predictor.probabilities(inputs)


class InstancesInferer(Inferer):
    """A MONAI inferer giving ``predictor``'s nucleus ids, (N, 3, H, W) uint8 RGB -> (N, 1, H, W) int32,
    for engines that write instances (tile inference): large tiles go through the predictor's grid."""

    def __init__(self, predictor: NucleiPredictor):
        self.predictor = predictor

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.predictor(image))[None] for image in inputs])


class PredictedInstancesd(MapTransform):
    """``d[output_key]`` = ``predictor.instances_of(d[key])`` as (1, H, W) ids, from (3, H, W) probabilities."""

    def __init__(self, predictor: NucleiPredictor, keys: KeysCollection = "pred", output_key: str = "instances"):
        super().__init__(keys)
        self.predictor, self.output_key = predictor, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = torch.as_tensor(self.predictor.instances_of(torch.as_tensor(d[key])))[None]
        return d
