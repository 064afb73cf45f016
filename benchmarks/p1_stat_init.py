"""P1: statistical init (normalizer -> RXGlobal) vs one float64 X^T X over the same pixels.

Measured in one run, interleaved, medians of ``--repeats``:

* ``init standard``: ``graph.train(max_epochs=0)`` fitting StandardNormalizer -> RXGlobal over
  N pixels: one streaming pass; each block of raw rows is read once, for RX's float64 shifted
  scatter, and the normalizer's per-channel moments are taken from that scatter
  (``core/row_stream.py``); the fitted normalizer is folded into RX's moments afterwards;
* ``init minmax``: the same with MinMaxNormalizer (per-channel min/max of each block, in cache);
* ``gram``: one float64 ``X^T X`` of the same N x C pixels, already float64 and in memory.

Goal: ``t_init / t_gram <= 1.5`` for Standard -> RX (MinMax -> RX is reported).
``--profile`` adds a torch.profiler table of one fit.
"""

from __future__ import annotations

import numpy as np
import torch
from _common import (
    header,
    interleaved,
    median,
    paired_ratio,
    parser,
    print_times,
    ratio_of_medians,
    report,
    setup,
)
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal, StandardNormalizer

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule

GOAL = 1.5


def build(normalizer: type) -> Graph:
    graph = Graph("bench_p1")
    norm = graph.add_node(normalizer())
    graph.add_node(RXGlobal(), parent=norm)
    return graph


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--pixels", type=int, default=2_000_000, help="N pixels in total")
    p.add_argument("--bands", type=int, default=100, help="C channels")
    p.add_argument("--side", type=int, default=128, help="cube side; N / side^2 cubes")
    p.add_argument("--batch", type=int, default=16, help="cubes per batch")
    p.add_argument("--profile", action="store_true", help="print where one MinMax -> RX fit spends its time")
    args = p.parse_args()
    if args.quick:
        args.pixels, args.side, args.batch = 8 * 64 * 64, 64, 4
    device = setup(args, repeats=5)
    header("P1", "statistical init vs float64 X^T X", device, args.quick)

    n_cubes = max(1, args.pixels // (args.side * args.side))
    rng = np.random.default_rng(0)
    cubes = (1e4 + 100 * rng.standard_normal((n_cubes, args.side, args.side, args.bands), dtype=np.float32))
    dm = GraphDataModule.from_arrays(cubes, batch_size=args.batch)
    del cubes  # the datamodule holds its own stacked copy
    stacked = dm.train_set.dataset.stacked
    n = stacked.shape[0] * args.side * args.side
    x = stacked.reshape(-1, args.bands).to(device=device, dtype=torch.float64)
    config = {"trainer": {"max_epochs": 0, "accelerator": "gpu" if device.type == "cuda" else "cpu",
                          "enable_progress_bar": False}}
    fit_seconds: dict[str, list[float]] = {"init minmax": [], "init standard": []}

    def init(name: str, normalizer: type):
        def run() -> None:
            result = build(normalizer).train(dm, config, run_dir=False)
            fit_seconds[name].append(result.fit.seconds)
        return run

    times = interleaved({"init minmax": init("init minmax", MinMaxNormalizer),
                         "init standard": init("init standard", StandardNormalizer),
                         "gram": lambda: x.T @ x}, args.repeats, device)
    print(f"  N={n:,} pixels x C={args.bands} ({stacked.shape[0]} cubes {args.side}x{args.side}, "
          f"batch {args.batch}), repeats={args.repeats}")
    print_times(times, labels={"init minmax": "t_init MinMax->RX (graph.train, 0 epochs)",
                               "init standard": "t_init Standard->RX (graph.train, 0 epochs)",
                               "gram": "t_gram one float64 X^T X"})
    for name in fit_seconds:  # drop the warm-up round
        fit_seconds[name] = fit_seconds[name][-args.repeats:]
        print(f"  {name + ': streaming passes alone (fit report)':<44s} median {median(fit_seconds[name]) * 1e3:9.1f} ms")
    r_minmax = ratio_of_medians(times, "init minmax", "gram")
    r_standard = ratio_of_medians(times, "init standard", "gram")
    print(f"  ratio t_init/t_gram MinMax->RX   = {r_minmax:.2f} (per-round median {paired_ratio(times, 'init minmax', 'gram'):.2f})")
    print(f"  ratio t_init/t_gram Standard->RX = {r_standard:.2f} (per-round median "
          f"{paired_ratio(times, 'init standard', 'gram'):.2f})   goal <= {GOAL}")
    report("P1", "stat init MinMax->RX / float64 X^T X", r_minmax, None, None, "x")
    report("P1", "stat init Standard->RX / float64 X^T X", r_standard, f"<= {GOAL}", r_standard <= GOAL, "x")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            build(MinMaxNormalizer).train(dm, config, run_dir=False)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=12))


if __name__ == "__main__":
    main()
