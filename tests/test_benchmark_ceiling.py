"""scripts/benchmark.py ceiling: perfect 3-class maps post-processed at full and at reduced resolution."""

import importlib.util
import json
import re

import numpy as np
import tifffile
from bundle.data import write_image
from bundle.synthetic import synthesize_tile
from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_perfect_map_at_full_resolution_recovers_the_nuclei_and_half_resolution_costs_aji():
    label = synthesize_tile((256, 256), seed=3)[1].astype(np.int32)
    full = benchmark._perfect_map_aji(label, factor=1, boundary_width=2)
    half = benchmark._perfect_map_aji(label, factor=2, boundary_width=1)
    assert full > 0.95
    assert 0.3 < half < full


def test_ceiling_reads_a_prepared_folder_and_prints_both_resolutions(tmp_path, capsys):
    rows = []
    for index in range(2):
        image, label = synthesize_tile((128, 128), seed=index)
        write_image(tmp_path / "images" / f"t{index}.tif", image)
        (tmp_path / "labels").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "labels" / f"t{index}.tif", label.astype(np.int32))
        rows.append({"image": f"images/t{index}.tif", "label": f"labels/t{index}.tif"})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": rows[:1], "validation": rows[1:]}))
    benchmark.ceiling(str(tmp_path), factor=2)
    lines = re.findall(r"^1/(\d) resolution, boundary (\d) px: AJI mean ([\d.]+), worst ([\d.]+) over 2 tiles$",
                       capsys.readouterr().out, re.MULTILINE)  # fmt: skip
    assert [line[:2] for line in lines] == [("1", "2"), ("2", "1")]
    assert float(lines[0][2]) > float(lines[1][2])
