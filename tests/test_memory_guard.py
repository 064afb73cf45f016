"""Coarse guard: statistical-init memory does not grow with the dataset size.

Runs the child of ``benchmarks/p5_memory.py`` twice, each in a fresh process:
MinMaxNormalizer -> RXGlobal fitted on 16 and on 128 lazily generated 64x64x100 cubes (26 MB
vs 210 MB of data). Keeping one copy of the data (or of the normalizer's outputs) would
raise the 8x run's peak RSS by ~40% over the 1x run's (~520 MB, mostly torch and
Lightning); streaming keeps the ratio near 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "p5_memory.py"
LIMIT = 1.3


def peak_rss_mb(n_cubes: int) -> float:
    cmd = [sys.executable, str(SCRIPT), "--child", str(n_cubes), "--side", "64", "--bands", "100", "--batch", "8",
           "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("P5CHILD "))
    record = json.loads(line[len("P5CHILD "):])
    assert record["passes"] == 1 and record["pixels"] == n_cubes * 64 * 64  # normalizer and RX share a pass
    return record["peak_mb"]


def test_peak_rss_of_statistical_init_does_not_grow_with_data() -> None:
    small, large = peak_rss_mb(16), peak_rss_mb(128)
    assert large / small < LIMIT, f"peak RSS {small:.0f} MB -> {large:.0f} MB with 8x the data"
