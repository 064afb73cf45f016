"""Smoke test: every benchmark runs end to end at quick sizes and reports its P-label."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_all_quick_reports_every_benchmark() -> None:
    # one thread: on a shared machine multi-threaded ops can stall far longer than they compute
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("Summary (", 1)[-1]
    rows = [line.split()[0] for line in summary.splitlines()[3:] if line.strip() and not line.startswith("(")]
    for label in ("P1", "P2", "P3", "P4", "P5", "P6", "REF"):
        assert label in rows, f"{label} missing from the summary:\n{summary}"
    assert "FAILED" not in summary


def test_cuda_request_without_gpu_fails_clearly() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "p4_passes.py"), "--device", "cuda", "--quick"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "cuda" in proc.stderr and "is_available" in proc.stderr


ABU = ROOT.parent / "shared" / "data" / "abu"


@pytest.mark.real
@pytest.mark.skipif(not (ABU / "abu-beach-1.mat").exists() or not (ABU / "abu-beach-3.mat").exists(),
                    reason=f"shared ABU beach scenes not found in {ABU}")
def test_abu_transfer_quick() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "abu_transfer.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("beach-")]
    assert len(table) == 6, proc.stdout  # 2 directions x (trained, RX fitted on self, RX fitted on train)
    assert sum(line.startswith("RESULT ") for line in proc.stdout.splitlines()) == 6


@pytest.mark.slow
def test_startup_quick() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    whats = [r["what"] for r in results]
    assert whats[:2] == ["--help / import torch", "validate / import torch"], whats
    lightning_checks = [r for r in results if r["what"].startswith("lightning not loaded by")]
    assert len(lightning_checks) == 3 and all(r["met"] for r in lightning_checks), lightning_checks
