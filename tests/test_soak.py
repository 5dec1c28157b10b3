"""scripts/benchmark.py soak on a handful of small tiles: the report's rows and growth line."""

import importlib.util
import re

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_soak_reports_rss_and_throughput_per_block(capsys):
    benchmark.soak(tiles=6, tile_size=64, backbone="resnet10", block=2, threads=1)
    out = capsys.readouterr().out
    assert "soak: 6 tiles of 64x64 px" in out and "resnet10 (random weights)" in out
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
    assert [int(row[0]) for row in rows] == [2, 4, 6] and all(float(row[1]) > 0 for row in rows)
    assert re.search(
        r"RSS growth from tile 2 to tile 6: [+-]\d+\.\d% \(.* MiB; RSS from (psutil|/proc/self/status VmRSS)\)", out
    )
    assert "least-squares trend" in out


def test_rss_is_read_from_psutil_or_proc():
    mib, source = benchmark.rss_mib()
    assert 10 < mib < 100_000 and source in ("psutil", "/proc/self/status VmRSS")
