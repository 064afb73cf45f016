"""P5: peak RSS of statistical init at 1x and 8x the data (memory must not grow with N).

Each size runs in a fresh subprocess (so ``ru_maxrss`` is that run's peak), fitting
MinMaxNormalizer -> RXGlobal with ``graph.train(max_epochs=0)`` on a Dataset that generates
every cube on the fly from its index (``1e4 + 100 * randn`` seeded by the index), so the data
is never held in memory. Prints both peaks, their ratio (goal <= 1.05) and each run's growth
over its RSS just before fitting (after imports and setup).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

GOAL = 1.05
CHILD_PREFIX = "P5CHILD "


class LazyCubes(Dataset):
    """``n`` cubes ``[H, W, C]`` float32, each generated deterministically from its index."""

    def __init__(self, n: int, side: int, bands: int, seed: int = 0) -> None:
        self.n, self.side, self.bands, self.seed = n, side, bands, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        cube = torch.randn(self.side, self.side, self.bands, generator=gen).mul_(100.0).add_(1e4)
        return {"cube": cube}


def rss_mb() -> float:
    """Current resident set size (MB) from /proc (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_mb()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(n: int, side: int, bands: int, batch: int, device: str) -> None:
    """One statistical init in this process; prints a ``P5CHILD {json}`` line."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

    from cuvis_graph import Graph
    from cuvis_graph.data import GraphDataModule

    dm = GraphDataModule(batch_size=batch)
    dm.train_set, dm.n_channels = LazyCubes(n, side, bands), bands
    graph = Graph("bench_p5")
    norm = graph.add_node(MinMaxNormalizer())
    graph.add_node(RXGlobal(), parent=norm)
    config = {"trainer": {"max_epochs": 0, "accelerator": "gpu" if device == "cuda" else "cpu",
                          "enable_progress_bar": False}}
    before = rss_mb()
    t0 = time.perf_counter()
    result = graph.train(dm, config, run_dir=False)
    seconds = time.perf_counter() - t0
    record = {"n": n, "pixels": n * side * side, "before_mb": before, "peak_mb": peak_mb(), "seconds": seconds,
              "passes": result.fit.passes, "batches": result.fit.batches,
              "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
    print(CHILD_PREFIX + json.dumps(record), flush=True)


def run_child(n: int, side: int, bands: int, batch: int, device: str, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--side", str(side),
           "--bands", str(bands), "--batch", str(batch), "--device", device]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: P5 child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(CHILD_PREFIX):])


def main() -> None:
    from _common import header, median, parser, report, setup

    p = parser(__doc__)
    p.add_argument("--cubes", type=int, default=32, help="cubes at 1x")
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--bands", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--factor", type=int, default=8, help="the large run has factor x the cubes")
    p.add_argument("--child", type=int, default=None, help=argparse_suppress())
    args = p.parse_args()
    if args.child is not None:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        child(args.child, args.side, args.bands, args.batch, args.device)
        return
    if args.quick:
        args.cubes, args.side, args.bands = 8, 32, 50
    device = setup(args, repeats=2, quick_repeats=1)
    header("P5", "peak RSS of statistical init, 1x vs 8x data", device, args.quick)
    runs: dict[str, list[dict]] = {"1x": [], f"{args.factor}x": []}
    for _ in range(args.repeats):  # interleaved; the allocator's peak varies by ~20 MB run to run
        runs["1x"].append(run_child(args.cubes, args.side, args.bands, args.batch, args.device, args.threads))
        runs[f"{args.factor}x"].append(run_child(args.cubes * args.factor, args.side, args.bands, args.batch,
                                                 args.device, args.threads))
    mb = 4 * args.side * args.side * args.bands / 2**20
    peaks = {label: median([r["peak_mb"] for r in rs]) for label, rs in runs.items()}
    for label, rs in runs.items():
        r = rs[0]
        growth = median([x["peak_mb"] - x["before_mb"] for x in rs])
        each = ", ".join(f"{x['peak_mb']:.0f}" for x in rs)
        print(f"  {label:>3s}: {r['n']:5d} cubes {args.side}x{args.side}x{args.bands} ({r['n'] * mb:6.1f} MB of data "
              f"generated), peak RSS median {peaks[label]:6.1f} MB (runs: "
              f"{each}), growth during init {growth:5.1f} MB, "
              f"{r['passes']} passes / {r['batches']} batches, {median([x['seconds'] for x in rs]):.2f} s"
              + (f", cuda peak {r['cuda_peak_mb']:.1f} MB" if r["cuda_peak_mb"] is not None else ""))
    ratio = peaks[f"{args.factor}x"] / peaks["1x"]
    print(f"  ratio peak RSS {args.factor}x / 1x = {ratio:.3f}   goal <= {GOAL}   (repeats={args.repeats})")
    report("P5", f"peak RSS of stat init, {args.factor}x / 1x data", ratio, f"<= {GOAL}", ratio <= GOAL, "x", ".3f")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
