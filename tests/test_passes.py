"""Fewest passes: statistical init reads the training set once per statistical depth level.

A statistical node that folds its affine parents (normalizers feeding RXGlobal's ``x``) shares
their level: one pass accumulates both on the raw rows, the parents are finalized first and
their fitted map is applied to the child's accumulators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    StandardNormalizer,
    TrainablePCA,
)

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


def test_normalizers_and_rx_fuse_into_one_pass(dm):
    g = Graph("fused")
    g.add_node(MinMaxNormalizer(), name="mm")
    std = g.add_node(StandardNormalizer(), name="std")
    g.add_node(RXGlobal(), parent=std, name="rx")
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.passes, dm.batches) == (1, 1, 3)
    assert result.fit.passes == 1
    assert result.fit.levels == [["mm", "std", "rx"]]
    assert all(g[n].is_fitted for n in ("mm", "std", "rx"))

    # everything fitted: training again reads nothing
    dm.reset()
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.batches) == (0, 0)
    assert result.fit.passes == 0
    assert result.fit.levels == []

    # refit reads the same single level again
    result = g.train(dm, CONFIG, refit=True)
    assert (dm.started, dm.passes, dm.batches) == (1, 1, 3)
    assert result.fit.passes == 1


def test_three_level_chain_two_passes(dm):
    g = Graph("chain")
    norm = g.add_node(StandardNormalizer(), name="norm")
    rx = g.add_node(RXGlobal(), parent=norm, name="rx")
    g.add_node(RXLogitHead(), parent=rx, name="head")
    result = g.train(dm, CONFIG)
    assert (dm.started, dm.passes, dm.batches) == (2, 2, 6)
    assert result.fit.passes == 2
    assert result.fit.levels == [["norm", "rx"], ["head"]]

    dm.reset()
    assert g.train(dm, CONFIG).fit.passes == 0
    assert dm.started == 0
    assert g.train(dm, CONFIG, refit=True).fit.passes == 2
    assert dm.passes == 2


def _normalized(x: np.ndarray, node) -> np.ndarray:
    """``x`` (float64) through a fitted normalizer's map ``a x + b``, from the float64 coefficients
    its forward uses (``affine_coefficients``)."""
    a, b = node.affine_coefficients()
    return a.numpy() * x + b.numpy()


def _rel(actual: torch.Tensor, expected: np.ndarray, scale: float) -> float:
    """Largest deviation relative to ``scale`` (the data's magnitude)."""
    return float(np.abs(actual.double().numpy() - expected).max() / scale)


def _assert_rx_moments(rx, pixels: np.ndarray) -> None:
    """RX's fitted mean and covariance equal numpy's float64 ones of ``pixels`` to 1e-12."""
    cov = np.cov(pixels, rowvar=False)
    assert _rel(rx.mean, pixels.mean(0), np.abs(pixels).max()) < 1e-12
    assert _rel(rx.cov, cov, np.abs(cov).max()) < 1e-12


CHAINS = {
    "minmax": [MinMaxNormalizer],
    "standard": [StandardNormalizer],
    "standard_minmax": [StandardNormalizer, MinMaxNormalizer],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_fused_fit_matches_numpy_and_two_passes(dm, tiny_cubes, chain):
    """One fused pass == numpy float64 on the normalized pixels == the old normalizer-then-RX passes."""
    def build(with_rx: bool) -> Graph:
        g, parent = Graph(f"fused_{chain}"), None
        for i, cls in enumerate(CHAINS[chain]):
            parent = g.add_node(cls(), parent=parent, name=f"n{i}")
        if with_rx:
            g.add_node(RXGlobal(eps=0.0), parent=parent, name="rx")
        return g

    fused = build(True)
    result = fused.train(dm, CONFIG)
    assert result.fit.levels == [[f"n{i}" for i in range(len(CHAINS[chain]))] + ["rx"]]
    assert dm.passes == 1

    pixels = tiny_cubes.reshape(-1, tiny_cubes.shape[-1]).astype(np.float64)
    for i, cls in enumerate(CHAINS[chain]):  # each normalizer fitted on its (normalized) input
        node = fused[f"n{i}"]
        if cls is MinMaxNormalizer:
            np.testing.assert_allclose(node.min.numpy(), pixels.min(0), rtol=1e-6)
            np.testing.assert_allclose(node.max.numpy(), pixels.max(0), rtol=1e-6)
        else:
            np.testing.assert_allclose(node.mean.numpy(), pixels.mean(0), rtol=1e-6)
            np.testing.assert_allclose(node.std.numpy(), pixels.std(0, ddof=1), rtol=1e-6)
        pixels = _normalized(pixels, node)
    rx = fused["rx"]
    _assert_rx_moments(rx, pixels)

    # reference: the normalizers fitted first, RX in a second pass (it folds fitted parents)
    two_pass = build(False)
    dm.reset()
    two_pass.train(dm, CONFIG)
    two_pass.add_node(RXGlobal(eps=0.0), parent=f"n{len(CHAINS[chain]) - 1}", name="rx")
    assert two_pass.train(dm, CONFIG).fit.levels == [["rx"]]
    assert dm.passes == 2
    assert _rel(rx.mean, two_pass["rx"].mean.numpy(), np.abs(pixels).max()) < 1e-12
    whitening = two_pass["rx"].whitening.numpy()
    assert _rel(rx.whitening, whitening, np.abs(whitening).max()) < 1e-12


def test_no_fusion_past_a_non_affine_node_or_an_unfolded_port(dm, tiny_cubes):
    """RX after a PCA, a per-batch min/max, or a normalizer that does not fold its input
    waits for a later pass."""
    g = Graph("unfused")
    std = g.add_node(StandardNormalizer(), name="std")
    pca = g.add_node(TrainablePCA(n_components=3), parent=std, name="pca")  # PCA folds std
    g.add_node(RXGlobal(), parent=pca, name="rx_pca")
    batch_mm = g.add_node(MinMaxNormalizer(use_running_stats=False), parent=std, name="batch_mm")
    g.add_node(RXGlobal(), parent=batch_mm, name="rx_batch")
    one_mm = g.add_node(MinMaxNormalizer(per_channel=False), parent=std, name="one_mm")  # folds nothing
    g.add_node(RXGlobal(eps=0.0), parent=one_mm, name="rx_one")
    result = g.train(dm, CONFIG)
    assert result.fit.levels == [["std", "pca"], ["rx_pca", "rx_batch", "one_mm", "rx_one"]]
    assert (result.fit.passes, dm.passes) == (2, 2)

    # one_mm reads the output of the executed std; rx_one folds the chain one_mm o std (both fitted)
    pixels = tiny_cubes.reshape(-1, tiny_cubes.shape[-1]).astype(np.float64)
    standard = _normalized(pixels, g["std"])
    np.testing.assert_allclose(g["one_mm"].min.numpy(), [standard.min()], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["one_mm"].max.numpy(), [standard.max()], rtol=1e-6)
    _assert_rx_moments(g["rx_one"], _normalized(standard, g["one_mm"]))


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
