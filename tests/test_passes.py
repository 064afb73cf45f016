"""Fewest passes: statistical init reads the training set once per statistical depth level."""

from __future__ import annotations

import numpy as np
import pytest
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal, RXLogitHead, StandardNormalizer

from cuvis_graph import Graph
from cuvis_graph.data import ArrayDataModule

CONFIG = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}


class CountingLoader:
    """Wraps a loader; counts complete iterations (passes) and batches."""

    def __init__(self, loader, owner: CountingDataModule) -> None:
        self.loader, self.owner = loader, owner

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.owner.started += 1
        for batch in self.loader:
            self.owner.batches += 1
            yield batch
        self.owner.passes += 1


class CountingDataModule(ArrayDataModule):
    """Counts reads of the training data (statistics and gradient loaders alike)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reset()

    def reset(self) -> None:
        self.started = self.passes = self.batches = 0

    def statistics_dataloader(self):
        return CountingLoader(super().statistics_dataloader(), self)

    def train_dataloader(self):
        return CountingLoader(super().train_dataloader(), self)


@pytest.fixture
def dm(tiny_cubes) -> CountingDataModule:
    return CountingDataModule(tiny_cubes, batch_size=2)  # 5 cubes -> 3 batches per pass


def test_two_levels_two_passes(dm):
    g = Graph("two_levels")
    g.add_node(MinMaxNormalizer(), name="mm")
    std = g.add_node(StandardNormalizer(), name="std")
    g.add_node(RXGlobal(), parent=std, name="rx")
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.passes, dm.batches) == (2, 2, 6)
    assert result.fit.passes == 2
    assert result.fit.levels == [["mm", "std"], ["rx"]]
    assert all(g[n].is_fitted for n in ("mm", "std", "rx"))

    # everything fitted: training again reads nothing
    dm.reset()
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.batches) == (0, 0)
    assert result.fit.passes == 0
    assert result.fit.levels == []

    # refit reads the same two levels again
    result = g.train(dm, CONFIG, refit=True)
    assert (dm.started, dm.passes, dm.batches) == (2, 2, 6)
    assert result.fit.passes == 2


def test_three_level_chain_three_passes(dm):
    g = Graph("chain")
    norm = g.add_node(StandardNormalizer(), name="norm")
    rx = g.add_node(RXGlobal(), parent=norm, name="rx")
    g.add_node(RXLogitHead(), parent=rx, name="head")
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.passes, dm.batches) == (3, 3, 9)
    assert result.fit.passes == 3
    assert result.fit.levels == [["norm"], ["rx"], ["head"]]

    dm.reset()
    assert g.train(dm, CONFIG).fit.passes == 0
    assert dm.started == 0
    assert g.train(dm, CONFIG, refit=True).fit.passes == 3
    assert dm.passes == 3


def test_new_node_after_fitted_ones_needs_one_pass(dm):
    """A statistical node whose statistical ancestors are fitted is fitted in a single pass."""
    g = Graph("grow")
    norm = g.add_node(StandardNormalizer(), name="norm")
    g.train(dm, CONFIG)
    assert dm.passes == 1
    g.add_node(RXGlobal(), parent=norm, name="rx")
    dm.reset()
    result = g.train(dm, CONFIG)
    assert result.fit.levels == [["rx"]]
    assert (dm.passes, result.fit.passes) == (1, 1)


def test_non_statistical_configuration_needs_no_pass(dm):
    g = Graph("no_stats")
    g.add_node(MinMaxNormalizer(use_running_stats=False), name="mm")
    result = g.train(dm, CONFIG)
    assert (dm.started, result.fit.passes, result.fit.levels) == (0, 0, [])
    cube = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    lo, hi = cube.min(axis=(0, 1)), cube.max(axis=(0, 1))
    out = g.predict(cube)
    np.testing.assert_allclose(out["mm"].numpy(), (cube - lo) / (hi - lo + 1e-6), rtol=1e-5, atol=1e-6)
