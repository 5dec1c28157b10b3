"""TorchScript export with ``monai.bundle ckpt_export`` and inference from the exported model."""

import json
import shutil
import subprocess
import sys

import numpy as np
import tifffile
import torch
from bundle.networks import segmentation_unet
from bundle_runner import run_bundle
from conftest import REPO_ROOT

# The traced and eager graphs run the same float32 kernels; differences come only from
# operation order inside fused kernels, far below this bound.
TOLERANCE = 1e-5


def export(root):
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(root / "models" / "model.ts"),
        "--ckpt_file",
        str(root / "models" / "model.pt"),
        "--meta_file",
        str(REPO_ROOT / "configs" / "metadata.json"),
        "--config_file",
        str(REPO_ROOT / "configs" / "inference.json"),
        "--backbone",
        "resnet10",
        "--use_trace",
        "True",
        "--input_shape",
        json.dumps([1, 3, 64, 64]),
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300)


def test_exported_model_matches_eager_and_runs_inference(tmp_path, synthetic_dir):
    torch.manual_seed(0)
    eager = segmentation_unet("resnet10").eval()
    (tmp_path / "models").mkdir()
    torch.save(eager.state_dict(), tmp_path / "models" / "model.pt")
    result = export(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    scripted = torch.jit.load(tmp_path / "models" / "model.ts")
    x = torch.rand(2, 3, 96, 128)  # another size than the trace's, still a multiple of 32
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=TOLERANCE, rtol=0)

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shutil.copy(next((synthetic_dir / "images").glob("*.tif")), tiles / "tile.tif")
    outputs = {}
    for name, configs in {
        "eager": ["inference.json"],
        "torchscript": ["inference.json", "inference_torchscript.json"],
    }.items():
        out = tmp_path / name
        run = run_bundle(
            configs,
            cwd=tmp_path,
            bundle_root=str(tmp_path),
            dataset_dir=str(tiles),
            output_dir=str(out),
            backbone="resnet10",
            roi_size=64,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        outputs[name] = tifffile.imread(out / "tile_instances.tif")
    np.testing.assert_array_equal(outputs["torchscript"], outputs["eager"])
