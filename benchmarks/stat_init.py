"""P1/P4: statistical-init time of normalizer -> RX vs one float64 X^T X, and data passes.

Prints, measured in this run (medians of ``--repeats``):

* ``t_init``: ``graph.train(max_epochs=0)`` fitting MinMaxNormalizer -> RXGlobal over N pixels
  (two streaming passes: min/max, then float64 shifted scatter);
* ``t_gram``: one float64 ``X^T X`` of the same N x C pixels (already float64, in memory);
* the ratio ``t_init / t_gram`` (goal <= 1.5) and the number of passes (goal: 2 = levels).

Usage: ``python benchmarks/stat_init.py [--pixels N] [--bands C] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=2_000_000, help="N pixels in total")
    parser.add_argument("--bands", type=int, default=100)
    parser.add_argument("--side", type=int, default=128, help="cube side; N / side^2 cubes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    n_cubes = max(1, args.pixels // (args.side * args.side))
    rng = np.random.default_rng(0)
    cubes = (1e4 + 100 * rng.standard_normal((n_cubes, args.side, args.side, args.bands))).astype(np.float32)
    n = cubes.shape[0] * args.side * args.side
    dm = GraphDataModule.from_arrays(cubes, batch_size=args.batch)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"

    x = torch.from_numpy(cubes.reshape(-1, args.bands)).to(torch.float64).to(args.device)
    init_times, fit_times, gram_times, passes = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        graph = Graph("bench_stat_init")
        norm = graph.add_node(MinMaxNormalizer())
        graph.add_node(RXGlobal(), parent=norm)
        _sync(args.device)
        t0 = time.perf_counter()
        result = graph.train(dm, {"trainer": {"max_epochs": 0, "accelerator": accelerator,
                                              "enable_progress_bar": False}})
        _sync(args.device)
        init_times.append(time.perf_counter() - t0)
        fit_times.append(result.fit.seconds)
        passes.append(result.fit.passes)
        _sync(args.device)
        t0 = time.perf_counter()
        _ = x.T @ x
        _sync(args.device)
        gram_times.append(time.perf_counter() - t0)

    t_init, t_gram = statistics.median(init_times), statistics.median(gram_times)
    t_fit = statistics.median(fit_times)
    print(f"P1 statistical init (MinMax -> RX), N={n:,} pixels x C={args.bands}, device={args.device}")
    print(f"  t_init median  {t_init * 1e3:9.1f} ms   (graph.train(max_epochs=0), repeats: {args.repeats})")
    print(f"  t_fit median   {t_fit * 1e3:9.1f} ms   (the streaming passes alone)")
    print(f"  t_gram median  {t_gram * 1e3:9.1f} ms   (one float64 X^T X)")
    print(f"  ratio t_init / t_gram = {t_init / t_gram:.2f}   (goal <= 1.5)")
    print(f"  ratio t_fit  / t_gram = {t_fit / t_gram:.2f}")
    print(f"P4 passes over the training data: {passes[0]}   (goal = 2 statistical levels)")


if __name__ == "__main__":
    main()
