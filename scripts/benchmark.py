"""Benchmarks of the bundle's library code, one subcommand each.

    python scripts/benchmark.py metrics [--repeats 20] [--reference_repeats 3]
    python scripts/benchmark.py postprocess [--repeats 10]
    python scripts/benchmark.py pretrain [--backbone resnet18 --crop_size 256 --batch 4]
    python scripts/benchmark.py finetune [--backbone resnet18 --crop_size 256 --batch 8]
    python scripts/benchmark.py soak [--tiles 500 --tile_size 512 --model models/model.pt]
    python scripts/benchmark.py infer [--backbone resnet18 --repeats 2]

``metrics``: ``bundle.metrics.nuclei_metrics`` (all scores from one overlap table) against
the per-nucleus AJI of ``bundle.metrics_reference`` on 1000x1000 label-map pairs with
~600 nuclei: (a) the MoNuSeg training mask with the nucleus count nearest 600 against a
perturbed copy of itself (shifted 1 px, eroded or dilated 1 px, 5 % of nuclei dropped,
5 % merged with a neighbour), skipped with a printed reason when the masks are absent;
(b) random touching blobs with non-contiguous ids, perturbed the same way.
Prints the median wall time of each, their ratio and the peak extra memory of
``nuclei_metrics`` (tracemalloc: the peak of the bytes allocated during one call, numpy
buffers included, inputs excluded).

``postprocess``: targets (InstanceToClassMap), post-processing (ClassMapToInstances) and the
two slowest outputs (GeoJSON outlines, nucleus table) on a ~600-nucleus synthetic tile, with a
realistic softmax map made from its targets: one-hot, Gaussian blur, noise, renormalised.

``pretrain``: (a) triplets per second of the pretraining transform chain of
``configs/pretrain.json`` in one process on one thread (= per loader worker), from cached
1000x1000 tiles; (b) the time of one pretraining step on B triplets (one batched pass over
3B crops, projection, count head, both losses, backward, SGD step) divided by the time of a
plain encoder forward+backward+step on the same 3B crops, and by three separate passes.
Runs on CUDA when present (AMP), else on the CPU.

``finetune``: the time of one fine-tuning step on the CPU (U-Net forward through
``bundle.inferers.CpuBf16Inferer``, the DiceCE loss of ``configs/train.json``, backward,
AdamW step) with bfloat16 autocast off and on, median of ``--repeats``, and their ratio.
bfloat16 is only timed where the CPU has it natively (``cpu_has_native_bf16``).

``soak``: long-run stability of tile inference in one process: ``configs/inference.json``
(its evaluator: LoadTiled, sliding-window network, softmax, post-processing, and the four
writers of ``SaveNucleiOutputsd``) over ``--tiles`` distinct tile files (hard links to a pool
of 10 synthetic tiles), with a ResNet-18 U-Net of random weights unless ``--model``
is given. The resident set size (psutil when installed, else ``/proc/self/status``
VmRSS) is sampled every ``--block`` tiles; prints the RSS and the throughput of each block
and the RSS growth from the end of the first block to the end (target <= 5 %). Outputs go
to a temporary folder and are deleted block by block, so the disk use stays bounded.

``ceiling``: the AJI that perfect 3-class maps reach after post-processing, on labelled tiles
(a prepared folder or datalist): the target made from the true instances at full resolution,
and at ``1/--factor`` of it (ids taken every ``factor``-th pixel, boundary ``--boundary_width``),
one-hot and bilinearly upsampled back: what training and predicting at 20x would cost at best.

``infer``: where the time of tile inference goes, on one synthetic 1000x1000 tile with a
ResNet-18 U-Net of random weights through :class:`bundle.predictor.NucleiPredictor`: the
network (softmax included) as one whole-tile pass (one 1024 px window) and with sliding
windows of several sizes, overlaps and batches, each as a ratio to the whole-tile pass;
post-processing; each of the four writers (and the nucleus table they share) on the tile's
~600 true nuclei, and their sum as a share of network + post-processing; the peak RSS growth
of one default predictor call after a warm-up call, per tile pixel (sampled every 2 ms); the
same for a ``--large_side`` tile (4000 px by default) with and without the slide grid
(tiles larger than the window go through it), and for the four writers on its true nuclei;
and the slide area per hour of whole-slide inference (a 1536x1536 synthetic slide at 0.25 µm/px,
1024 px tiles, overlap 128).
"""

import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import fire
import numpy as np
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.utils import set_determinism
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, so `bundle` imports when run as a script

from bundle.data import read_label, write_image  # noqa: E402
from bundle.inferers import CpuBf16Inferer, cpu_has_native_bf16  # noqa: E402
from bundle.losses import InstanceAwareLoss  # noqa: E402
from bundle.metrics import nuclei_metrics  # noqa: E402
from bundle.metrics_reference import aji_reference, perturb_instances, random_instance_map  # noqa: E402
from bundle.networks import TripletEncoderNet  # noqa: E402
from bundle.networks import segmentation_unet  # noqa: E402
from bundle.postprocess import ClassMapToInstances  # noqa: E402
from bundle.predictor import NucleiPredictor  # noqa: E402
from bundle.synthetic import synthesize_tile  # noqa: E402
from bundle.targets import N_CLASSES, InstanceToClassMap  # noqa: E402
from bundle.transforms import ScaleRGB  # noqa: E402
from bundle.writers import nuclei_geojson, nucleus_table  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NUCLEI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
MONUSEG_MASKS = SHARED_DATA / "monuseg" / "train" / "masks"
SHAPE = (1000, 1000)
TARGET_NUCLEI = 600
SYNTHETIC_RADIUS = 12  # pixels: MoNuSeg-sized nuclei at 40x
SEED = 0
# Targets of nuclei_metrics on a ~600-nucleus 1000x1000 pair.
MAX_MEDIAN_MS = 30.0
MIN_SPEEDUP = 100.0
MAX_PEAK_MIB = 100.0
NUCLEI_PER_MEGAPIXEL = 900.0  # synthesize_tile density before thinning: ~600 nuclei per 1000x1000 tile
BLUR_SIGMA = 1.5  # pixels: softens the one-hot map like a network's uncertain edges
NOISE_STD = 0.1  # additive noise on each probability channel before renormalising
SOAK_POOL = 10  # distinct synthetic tiles the soak's tile files link to
MAX_SOAK_GROWTH = 0.05  # RSS growth allowed from the end of the first block to the end


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_mib(function: Callable[[], object]) -> float:
    """Peak of the memory allocated during one call, in MiB, as tracemalloc sees it."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def monuseg_pair(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, mask, perturbed mask) for the MoNuSeg mask nearest TARGET_NUCLEI nuclei, or None."""
    paths = sorted(MONUSEG_MASKS.glob("*.png"))
    if not paths:
        print(f"monuseg: skipped, no masks/*.png under {MONUSEG_MASKS}")
        return None
    masks = {path.stem: np.asarray(Image.open(path)) for path in paths}
    name = min(masks, key=lambda stem: abs(len(np.unique(masks[stem])) - 1 - TARGET_NUCLEI))
    mask = masks[name]
    return f"monuseg {name}", mask, perturb_instances(mask, rng)


def synthetic_pair(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, random blob map, perturbed copy), ids non-contiguous in 1..4 * TARGET_NUCLEI."""
    labels = random_instance_map(rng, SHAPE, TARGET_NUCLEI, SYNTHETIC_RADIUS)
    return f"synthetic seed {SEED}", labels, perturb_instances(labels, rng)


def metrics(repeats: int = 20, reference_repeats: int = 3) -> None:
    """Time nuclei_metrics (``repeats`` calls) against the per-nucleus AJI (``reference_repeats``)."""
    rng = np.random.default_rng(SEED)
    pairs = [pair for pair in (monuseg_pair(rng), synthetic_pair(rng)) if pair is not None]
    print(f"nuclei_metrics: median of {repeats}; per-nucleus AJI: median of {reference_repeats}")
    for name, gt, pred in pairs:
        scores = nuclei_metrics(gt, pred)
        fast = median_seconds(lambda: nuclei_metrics(gt, pred), repeats)
        slow = median_seconds(lambda: aji_reference(gt, pred), reference_repeats)
        peak = peak_extra_mib(lambda: nuclei_metrics(gt, pred))
        aji_gap = abs(scores["aji"] - aji_reference(gt, pred))
        met = fast * 1e3 < MAX_MEDIAN_MS and slow / fast >= MIN_SPEEDUP and peak < MAX_PEAK_MIB
        print(
            f"{name}: {gt.shape[0]}x{gt.shape[1]} {gt.dtype}, {scores['n_gt']} gt / {scores['n_pred']} pred nuclei, "
            f"aji {scores['aji']:.4f} (|fast - reference| {aji_gap:.1e})\n"
            f"  nuclei_metrics (all scores) {fast * 1e3:.2f} ms | per-nucleus AJI {slow * 1e3:.0f} ms | "
            f"ratio {slow / fast:.0f}x | peak extra memory {peak:.1f} MiB | "
            f"targets (<{MAX_MEDIAN_MS:.0f} ms, >={MIN_SPEEDUP:.0f}x, <{MAX_PEAK_MIB:.0f} MiB) "
            f"{'met' if met else 'NOT met'}"
        )


def synthetic_softmax(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(1, H, W) class map -> (3, H, W) float32 probabilities: one-hot, blurred, noisy, renormalised."""
    one_hot = np.eye(N_CLASSES, dtype=np.float32)[classes[0]].transpose(2, 0, 1)
    blurred = ndimage.gaussian_filter(one_hot, sigma=(0, BLUR_SIGMA, BLUR_SIGMA))
    noisy = np.clip(blurred + rng.normal(0.0, NOISE_STD, blurred.shape).astype(np.float32), 0.0, None)
    return noisy / np.maximum(noisy.sum(axis=0, keepdims=True), np.finfo(np.float32).tiny)


def postprocess(repeats: int = 10) -> None:
    """Time InstanceToClassMap, ClassMapToInstances and the outputs on one synthetic 1000x1000 tile."""
    image, label = synthesize_tile(SHAPE, SEED, density=NUCLEI_PER_MEGAPIXEL)
    to_classes, to_instances = InstanceToClassMap(), ClassMapToInstances()
    classes = to_classes(label[None])
    prob = synthetic_softmax(classes, np.random.default_rng(SEED))
    instances = to_instances(prob)
    targets_s = median_seconds(lambda: to_classes(label[None]), repeats)
    postprocess_s = median_seconds(lambda: to_instances(prob), repeats)
    geojson_s = median_seconds(lambda: nuclei_geojson(instances), repeats)
    table_s = median_seconds(lambda: nucleus_table(image, instances), repeats)
    print(f"tile {SHAPE[0]}x{SHAPE[1]} px, {label.max()} nuclei; softmax: blur {BLUR_SIGMA} px, noise {NOISE_STD}")
    print(f"InstanceToClassMap:  median {targets_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"ClassMapToInstances: median {postprocess_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nuclei_geojson:      median {geojson_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nucleus_table:       median {table_s * 1000:.1f} ms per tile ({repeats} repeats)")
    print(f"nuclei recovered: {instances.max()} of {label.max()}")


def _perfect_map_aji(label: np.ndarray, factor: int, boundary_width: int) -> float:
    """AJI of post-processing the one-hot 3-class target of ``label`` made at ``1/factor`` resolution."""
    classes = InstanceToClassMap(boundary_width)(label[::factor, ::factor])[0]
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(classes, dtype=torch.long), N_CLASSES)
    prob = torch.nn.functional.interpolate(
        one_hot.permute(2, 0, 1)[None].float(), size=label.shape, mode="bilinear", align_corners=False
    )
    return nuclei_metrics(label, ClassMapToInstances()(prob[0].numpy())[0])["aji"]


def ceiling(data: str, factor: int = 2, boundary_width: int = 1, sections: str = "training,validation") -> None:
    """Mean and worst AJI of perfect maps post-processed, at full resolution and at 1/``factor``."""
    datalist = Path(data) / "datalist.json" if Path(data).is_dir() else Path(data)
    rows = [row for section in sections.split(",") for row in json.loads(datalist.read_text()).get(section, [])]
    labels = [read_label(datalist.parent / row["label"]).astype(np.int32) for row in rows]
    for scale, width in ((1, InstanceToClassMap().boundary_width), (factor, boundary_width)):
        scores = [_perfect_map_aji(label, scale, width) for label in labels]
        print(f"1/{scale} resolution, boundary {width} px: AJI mean {np.mean(scores):.4f}, "
              f"worst {np.min(scores):.4f} over {len(scores)} tiles")  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step_seconds(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    def timed() -> None:
        step()
        _synchronize(device)

    return median_seconds(timed, repeats)


def pretrain(
    backbone: str = "resnet18", crop_size: int = 256, batch: int = 4, triplets: int = 40, repeats: int = 5
) -> None:
    """Triplet throughput per loader worker, and the cost of one batched pretraining step."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "pretrain.json"))
    negative_sizes = [s for s in (crop_size * 2 // 3, crop_size // 3, crop_size // 6, crop_size // 12) if s >= 8]
    parser.update({"crop_size": crop_size, "max_shift": crop_size // 3, "negative_sizes": negative_sizes})
    chain = parser.get_parsed_content("train#preprocessing")
    tiles = [synthesize_tile((1000, 1000), seed)[0] for seed in range(4)]
    cached = [
        {"image": np.ascontiguousarray(tile.transpose(2, 0, 1)), "image_path": f"tile{i}"}
        for i, tile in enumerate(tiles)
    ]
    random_part = chain.transforms[1:]  # LoadTiled's output is what CacheDataset keeps
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for index in range(triplets):
        sample = dict(cached[index % len(cached)])
        for transform in random_part:
            sample = transform(sample)
    per_worker = triplets / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    print(
        f"(a) triplets at {crop_size} px from 1000x1000 tiles, one process, one thread: {per_worker:.1f} triplets/s per worker"
    )

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = TripletEncoderNet(backbone=backbone).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    loss_fn = InstanceAwareLoss()
    crops = torch.rand(3 * batch, 3, crop_size, crop_size, device=device)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")

    def triplet_step() -> None:
        optimizer.zero_grad()
        with autocast:
            loss = loss_fn(net(crops))
        loss.backward()
        optimizer.step()

    def encoder_step(inputs: torch.Tensor) -> None:
        with autocast:
            loss = net.encoder(inputs)[-1].float().mean()
        loss.backward()

    def plain_step() -> None:
        optimizer.zero_grad()
        encoder_step(crops)
        optimizer.step()

    def three_pass_step() -> None:
        optimizer.zero_grad()
        for part in crops.chunk(3):
            encoder_step(part)
        optimizer.step()

    for step in (triplet_step, plain_step, three_pass_step):
        step()  # warm-up (cuDNN autotuning, allocator)
    triplet_s = _step_seconds(triplet_step, device, repeats)
    plain_s = _step_seconds(plain_step, device, repeats)
    three_s = _step_seconds(three_pass_step, device, repeats)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"(b) {backbone}, B={batch} triplets ({3 * batch} crops of {crop_size} px) on {name}, median of {repeats}:")
    print(
        f"    pretraining step {triplet_s * 1e3:.0f} ms | plain encoder fwd+bwd on 3B crops {plain_s * 1e3:.0f} ms "
        f"| three separate passes {three_s * 1e3:.0f} ms"
    )
    print(
        f"    ratio step / plain {triplet_s / plain_s:.3f} (target <= 1.15) | three passes / plain {three_s / plain_s:.3f}"
    )
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def rss_mib() -> tuple[float, str]:
    """(resident set size of this process in MiB, where it was read): psutil, else /proc/self/status."""
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024, "/proc/self/status VmRSS"
        raise RuntimeError("/proc/self/status has no VmRSS line: install psutil") from None
    return psutil.Process().memory_info().rss / 2**20, "psutil"


def soak_inputs(folder: Path, n_tiles: int, tile_size: int) -> Path:
    """A datalist whose ``test`` section lists ``n_tiles`` distinct files, hard links to SOAK_POOL synthetic tiles."""
    pool = []
    for seed in range(SOAK_POOL):
        path = folder / "pool" / f"pool_{seed}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, synthesize_tile((tile_size, tile_size), seed)[0])
        pool.append(path)
    (folder / "tiles").mkdir()
    for index in range(n_tiles):
        os.link(
            pool[index % SOAK_POOL], folder / "tiles" / f"tile_{index:05d}.tif"
        )  # not a symlink: sources resolve those
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": f"tiles/tile_{i:05d}.tif"} for i in range(n_tiles)]}))
    return datalist


def soak_model(folder: Path, backbone: str, model: str | None) -> str:
    """``model`` when given, else the path of a freshly written random-weight U-Net (seeded)."""
    if model is not None:
        return model
    torch.manual_seed(SEED)
    path = folder / "random_model.pt"
    torch.save({"network": segmentation_unet(backbone, out_channels=N_CLASSES).state_dict()}, path)
    return str(path)


def soak_workflow(datalist: Path, out_dir: Path, model_path: str, backbone: str, roi_size: int):
    """(evaluator, tile screen) of configs/inference.json over ``datalist``."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.json"))
    parser.update(
        {
            "bundle_root": str(REPO_ROOT),
            "dataset_dir": str(datalist),
            "output_dir": str(out_dir),
            "model_path": model_path,
            "backbone": backbone,
            "roi_size": roi_size,
        }
    )
    return parser.get_parsed_content("evaluator"), parser.get_parsed_content("screen")


class SoakMonitor:
    """Every ``block`` iterations: RSS, seconds and nuclei of the block; then empties ``out_dir``."""

    def __init__(self, block: int, out_dir: Path):
        self.block, self.out_dir = block, out_dir
        self.rows: list[tuple[int, float, float]] = []  # (tiles done, RSS MiB, block seconds)
        self.nuclei, self.source = 0, ""
        self._start = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.restart_clock)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.count_nuclei)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.block), self.sample)

    def restart_clock(self, _) -> None:
        self._start = time.perf_counter()

    def count_nuclei(self, engine) -> None:
        self.nuclei += sum(int(item["pred"].max()) for item in engine.state.output)

    def sample(self, engine) -> None:
        rss, self.source = rss_mib()
        self.rows.append((engine.state.iteration, rss, time.perf_counter() - self._start))
        for path in self.out_dir.iterdir():
            path.unlink()
        self._start = time.perf_counter()


def print_soak_report(monitor: SoakMonitor, tiles: int, tile_size: int) -> None:
    print(f"{'tiles':>6} {'RSS MiB':>9} {'block s':>8} {'tiles/s':>8}")
    previous = 0
    for done, rss, seconds in monitor.rows:
        print(f"{done:>6} {rss:>9.1f} {seconds:>8.1f} {(done - previous) / seconds:>8.2f}")
        previous = done
    if len(monitor.rows) < 2:
        print("soak: fewer than two blocks; no growth figure (raise --tiles or lower --block)")
        return
    first, last = monitor.rows[0][1], monitor.rows[-1][1]
    growth = (last - first) / first
    done, rss = np.array([r[0] for r in monitor.rows], float), np.array([r[1] for r in monitor.rows])
    slope = np.polyfit(done, rss, 1)[0] * 100
    print(
        f"RSS growth from tile {monitor.rows[0][0]} to tile {monitor.rows[-1][0]}: {growth:+.1%} "
        f"({first:.1f} -> {last:.1f} MiB; RSS from {monitor.source}) | target <= {MAX_SOAK_GROWTH:.0%} "
        f"{'met' if growth <= MAX_SOAK_GROWTH else 'NOT met'}"
    )
    print(
        f"RSS over the samples: {rss.min():.1f}-{rss.max():.1f} MiB, least-squares trend {slope:+.2f} MiB per 100 tiles"
    )
    print(
        f"mean nuclei per tile: {monitor.nuclei / tiles:.1f} | "
        f"mean throughput {monitor.rows[-1][0] / sum(r[2] for r in monitor.rows):.2f} tiles/s"
    )


def finetune(backbone: str = "resnet18", crop_size: int = 256, batch: int = 8, repeats: int = 10) -> None:
    """Median CPU time of one fine-tuning step in float32 and under bfloat16 autocast."""
    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "configs" / "train.json"))
    loss_function = parser.get_parsed_content("loss")
    set_determinism(seed=0)
    network = segmentation_unet(backbone=backbone, out_channels=3)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, crop_size, crop_size)
    labels = torch.randint(0, 3, (batch, 1, crop_size, crop_size))

    def step(inferer: CpuBf16Inferer) -> None:
        optimizer.zero_grad()
        loss_function(inferer(images, network), labels).backward()
        optimizer.step()

    print(
        f"{backbone} U-Net, {batch} crops of {crop_size} px, {torch.get_num_threads()} threads, median of {repeats} steps:"
    )
    float32_s = median_seconds(lambda: step(CpuBf16Inferer(enabled=False)), repeats)
    print(f"    float32 {float32_s * 1e3:.0f} ms per step")
    if not cpu_has_native_bf16():
        print("    bfloat16: not timed, this CPU has no native bfloat16 (the 'auto' setting keeps float32 here)")
        return
    bfloat16_s = median_seconds(lambda: step(CpuBf16Inferer(enabled=True)), repeats)
    print(
        f"    bfloat16 autocast {bfloat16_s * 1e3:.0f} ms per step | ratio float32 / bfloat16 {float32_s / bfloat16_s:.2f}"
    )


def soak(
    tiles: int = 500,
    tile_size: int = 512,
    roi_size: int | None = None,
    backbone: str = "resnet18",
    model: str | None = None,
    block: int = 50,
    threads: int | None = None,
) -> None:
    """Tile inference over ``tiles`` synthetic tiles in one process; RSS and throughput every ``block`` tiles."""
    if threads is not None:
        torch.set_num_threads(threads)
    roi_size = roi_size or tile_size
    set_determinism(seed=SEED)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        folder = Path(tmp)
        datalist = soak_inputs(folder, tiles, tile_size)
        out_dir = folder / "outputs"
        out_dir.mkdir()
        evaluator, screen = soak_workflow(datalist, out_dir, soak_model(folder, backbone, model), backbone, roi_size)
        monitor = SoakMonitor(block, out_dir)
        monitor.attach(evaluator)
        device = (
            "CUDA " + torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else f"CPU, {torch.get_num_threads()} thread(s)"
        )
        print(
            f"soak: {tiles} tiles of {tile_size}x{tile_size} px ({SOAK_POOL} distinct synthetic tiles), {backbone} "
            f"({'weights ' + model if model else 'random weights'}), sliding window {roi_size} px, {device}"
        )
        evaluator.run()
        screen.exit_status()
    print_soak_report(monitor, tiles, tile_size)


INFER_WINDOWS = (  # (roi side px, overlap fraction, windows per batch); the first is the whole-tile pass
    (1024, 0.0, 1),
    (1024, 0.25, 2),  # configs/inference.json's default: one window for tiles up to 1024 px
    (768, 0.25, 2),  # the default before version 0.4
    (512, 0.125, 4),
    (256, 0.25, 8),
)
DEFAULT_WINDOWS = INFER_WINDOWS[1]
SLIDE_SIDE = 1536
SLIDE_MPP = 0.25


def _predictor(network: torch.nn.Module, roi: int, overlap: float, batch: int, grid: bool = True) -> NucleiPredictor:
    """The predictor of configs/inference.json with these windows (tiles larger than ``roi`` by the grid)."""
    inferer = SlidingWindowInferer((roi, roi), sw_batch_size=batch, overlap=overlap, mode="gaussian")
    return NucleiPredictor(network, inferer, ClassMapToInstances(), grid_tile_size=roi if grid else None)


def _large_tile_memory(network: torch.nn.Module, side: int) -> None:
    """Peak RSS growth per pixel of a ``side`` px tile: the predictor with and without the grid,
    and the four writers on its true nuclei (after a warm-up on a small tile); the uint8 tile the
    loader holds is 3 bytes per pixel more."""
    from bundle.inference import SaveNucleiOutputsd

    def sample(shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
        image, label = synthesize_tile(shape, SEED, density=NUCLEI_PER_MEGAPIXEL)
        rgb = np.ascontiguousarray(image.transpose(2, 0, 1))
        return rgb, {"image": torch.as_tensor(rgb), "image_path": "t.tif", "pred": torch.as_tensor(label)[None]}

    rgb, large = sample((side, side))
    pixels = side * side
    for name, grid in (("one pass", False), ("slide grid", True)):
        mib = _sampled_peak_growth_mib(lambda: _predictor(network, *DEFAULT_WINDOWS, grid=grid)(rgb))
        print(f"{side}x{side} tile, predictor, {name:10s}: peak RSS growth {mib:.0f} MiB = "
              f"{mib * 2**20 / pixels:.0f} bytes per pixel")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save = SaveNucleiOutputsd(keys="pred", output_dir=tmp)
        save(sample((256, 256))[1])  # warm-up: codecs and libraries loaded once
        mib = _sampled_peak_growth_mib(lambda: save(large))
    print(f"{side}x{side} tile, the four writers ({int(large['pred'].max())} nuclei): peak RSS growth {mib:.0f} MiB = "
          f"{mib * 2**20 / pixels:.0f} bytes per pixel")  # fmt: skip


def _sampled_peak_growth_mib(function: Callable[[], object], interval_s: float = 0.002) -> float:
    """Peak resident set size during one call minus the size before it, MiB (sampled every
    ``interval_s`` by a thread, so a spike shorter than that can be missed)."""
    import threading

    before, peak, running = rss_mib()[0], [0.0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss_mib()[0])
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        function()
    finally:
        running[0] = False
        sampler.join()
    return max(peak[0] - before, 0.0)


def infer(backbone: str = "resnet18", repeats: int = 2, large_side: int = 4000) -> None:
    """Time the network, post-processing and writers of tile inference, and slide area per second;
    memory per pixel of a 1000x1000 tile and of a ``large_side`` one (0: not measured)."""
    from bundle.writers import write_geojson, write_instance_tiff, write_nuclei_csv, write_overlay_png
    from bundle.wsi import segment_slide

    set_determinism(seed=SEED)
    image, label = synthesize_tile(SHAPE, SEED, density=NUCLEI_PER_MEGAPIXEL)
    rgb = image.transpose(2, 0, 1)
    network = segmentation_unet(backbone).eval()
    default = _predictor(network, *DEFAULT_WINDOWS)
    default(rgb)  # warm-up: allocator pools and library workspaces are not per-tile memory
    peak_mib = _sampled_peak_growth_mib(lambda: default(rgb))
    print(f"infer: {SHAPE[0]}x{SHAPE[1]} tile, {label.max()} nuclei, {backbone} (random weights), "
          f"CPU {torch.get_num_threads()} thread(s); medians of {repeats} after a warm-up")  # fmt: skip
    print(
        f"peak RSS growth of one default call after a warm-up: {peak_mib:.0f} MiB = "
        f"{peak_mib * 2**20 / label.size:.0f} bytes per tile pixel"
    )
    if large_side:
        _large_tile_memory(network, large_side)
    inputs = ScaleRGB()(rgb)[None]
    network_s = {}
    for roi, overlap, batch in INFER_WINDOWS:
        predictor = _predictor(network, roi, overlap, batch)
        network_s[roi, overlap, batch] = median_seconds(lambda: predictor.probabilities(inputs), repeats)
    whole = network_s[INFER_WINDOWS[0]]
    for (roi, overlap, batch), seconds in network_s.items():
        print(
            f"network roi {roi:4d} overlap {overlap:<6} batch {batch}: {seconds:6.2f} s = {seconds / whole:.2f}x one pass"
        )
    probabilities = default.probabilities(inputs)[0]
    postprocess_s = median_seconds(lambda: default.instances_of(probabilities), repeats)
    print(f"post-processing: {postprocess_s:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = nucleus_table(image, label)
        writers = {
            "nucleus table": lambda: nucleus_table(image, label),
            "instance TIFF": lambda: write_instance_tiff(folder / "t_instances.tif", label),
            "overlay PNG": lambda: write_overlay_png(folder / "t_overlay.png", image, label),
            "GeoJSON": lambda: write_geojson(folder / "t.geojson", nuclei_geojson(label, rows=rows)),
            "CSV": lambda: write_nuclei_csv(folder / "t_nuclei.csv", rows),
        }
        writer_s = {name: median_seconds(write, repeats) for name, write in writers.items()}
        for name, seconds in writer_s.items():
            print(f"writer {name:13s}: {seconds:.3f} s")
        total = sum(writer_s.values())
        default_s = network_s[DEFAULT_WINDOWS]
        print(f"writers together: {total:.2f} s = {100 * total / (default_s + postprocess_s):.0f} % of network "
              f"(default windows) + post-processing")  # fmt: skip
        slide = folder / "slide.tif"
        slide_rgb = synthesize_tile((SLIDE_SIDE, SLIDE_SIDE), SEED + 1, density=NUCLEI_PER_MEGAPIXEL)[0]
        tifffile.imwrite(slide, slide_rgb, photometric="rgb", tile=(256, 256), resolution=(1e4 / SLIDE_MPP,) * 2,
                         resolutionunit="CENTIMETER")  # fmt: skip
        started = time.perf_counter()
        summary = segment_slide(slide, default, folder / "slide_out", tile_size=1024, overlap=128)
        seconds = time.perf_counter() - started
        area_mm2 = SLIDE_SIDE**2 * (SLIDE_MPP / 1000) ** 2
        print(f"slide {SLIDE_SIDE}x{SLIDE_SIDE} px at {SLIDE_MPP} µm/px ({area_mm2:.3f} mm², {summary['tiles']} tiles): "
              f"{seconds:.1f} s = {area_mm2 / seconds * 3600:.2f} mm² per hour")  # fmt: skip


if __name__ == "__main__":
    fire.Fire(
        {
            "metrics": metrics,
            "postprocess": postprocess,
            "pretrain": pretrain,
            "finetune": finetune,
            "soak": soak,
            "infer": infer,
            "ceiling": ceiling,
        }
    )
