"""P4: data passes of statistical init for a graph with 3 statistical depth levels.

Graph (statistical nodes, level in brackets)::

    MinMaxNormalizer [1] -> TrainablePCA(K) [2] -> RXGlobal [3]
                         -> RXGlobal [2]

The datamodule's loaders are wrapped to count how often they are iterated (passes) and how
many batches are drawn. Goal: passes = 3 (= levels; the two level-2 nodes share one pass)
and batches drawn = 3 x batches per pass. Also prints the wall time of ``graph.train`` with
``max_epochs=0``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from _common import header, parser, report, setup, sync
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal, TrainablePCA

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule

GOAL = 3


class Counted:
    """Wraps a loader: counts iterations started and batches drawn."""

    def __init__(self, loader: Iterable, counter: dict[str, int]) -> None:
        self.loader, self.counter = loader, counter

    def __iter__(self) -> Iterator:
        self.counter["passes"] += 1
        for batch in self.loader:
            self.counter["batches"] += 1
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def counting(factory: Callable[[], Iterable], counter: dict[str, int]) -> Callable[[], Counted]:
    return lambda: Counted(factory(), counter)


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    device = setup(args, repeats=1)
    header("P4", "data passes of a 3-level statistical graph", device, args.quick)
    n, side, bands, batch = (32, 64, 50, 8) if not args.quick else (8, 16, 12, 4)
    rng = np.random.default_rng(0)
    cubes = (1e4 + 100 * rng.standard_normal((n, side, side, bands))).astype(np.float32)
    dm = GraphDataModule.from_arrays(cubes, batch_size=batch)
    counter = {"passes": 0, "batches": 0}
    dm.statistics_dataloader = counting(dm.statistics_dataloader, counter)
    dm.train_dataloader = counting(dm.train_dataloader, counter)

    graph = Graph("bench_p4")
    norm = graph.add_node(MinMaxNormalizer())
    pca = graph.add_node(TrainablePCA(n_components=bands // 4), parent=norm)
    graph.add_node(RXGlobal(), parent=pca)
    graph.add_node(RXGlobal(), parent=norm)
    config = {"trainer": {"max_epochs": 0, "accelerator": "gpu" if device.type == "cuda" else "cpu",
                          "enable_progress_bar": False}}
    sync(device)
    t0 = time.perf_counter()
    result = graph.train(dm, config, run_dir=False)
    sync(device)
    seconds = time.perf_counter() - t0
    per_pass = -(-n // batch)
    print(f"  {n} cubes {side}x{side}x{bands}, batch {batch} ({per_pass} batches per pass); levels: {result.fit.levels}")
    print(f"  loader iterations (passes): {counter['passes']}   batches drawn: {counter['batches']} "
          f"(= {counter['batches'] / per_pass:g} x {per_pass})   FitReport.passes: {result.fit.passes}   "
          f"graph.train: {seconds * 1e3:.0f} ms")
    passes = counter["passes"]
    ok = passes == GOAL and counter["batches"] == GOAL * per_pass and result.fit.passes == GOAL
    print(f"  passes = {passes}   goal = {GOAL}   {'met' if ok else 'NOT met'}")
    report("P4", "data passes, 3 statistical levels", passes, f"= {GOAL}", ok, fmt="d")


if __name__ == "__main__":
    main()
