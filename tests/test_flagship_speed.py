"""Arithmetic behind the reference workload's speed: float32 RX training, folded normalizers,
min/max blocks. Each checked against an independent numpy float64 (or torch float64) reference;
the speed itself is measured by benchmarks/reference_workload.py, never here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    SoftChannelSelector,
    StandardNormalizer,
    TrainablePCA,
)

from cuvis_graph import Graph
from cuvis_graph.core.statistics import (
    BLOCK_VALUES,
    MinMaxAccumulator,
    MomentAccumulator,
)
from cuvis_graph.data import GraphDataModule

FIT = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}


def scene(rng: np.random.Generator, n: int = 3, side: int = 16, c: int = 10, level: float = 0.3) -> np.ndarray:
    """Correlated bands around ``level`` (float32 ``[n, side, side, c]``)."""
    mix = rng.normal(size=(c, c)) + 3 * np.eye(c)
    return (level + 0.01 * level * rng.normal(size=(n, side, side, c)) @ mix).astype(np.float32)


def fitted_rx(x: np.ndarray) -> RXGlobal:
    graph = Graph("rx32")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.train(GraphDataModule.from_arrays(x, batch_size=2), FIT, run_dir=False)
    return rx


def numpy_rx(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(x - mu)^T (Sigma + eps tr(Sigma)/C I)^{-1} (x - mu)`` in float64."""
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mu, cov = pixels.mean(0), np.cov(pixels, rowvar=False)
    cov += eps * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    d = pixels - mu
    return np.einsum("nc,cd,nd->n", d, np.linalg.inv(cov), d)


@pytest.mark.parametrize("level", [0.3, 1e4])
def test_float32_training_forward_matches_float64(level: float) -> None:
    """With gradients and frozen statistics RX computes in float32 (also at sensor scale ~1e4,
    thanks to the split mean); scores within 1e-5 of numpy float64, gradients within 1e-4 of a
    float64 autograd reference."""
    rng = np.random.default_rng(0)
    x = scene(rng, level=level)
    rx = fitted_rx(x)
    cube = torch.from_numpy(x).requires_grad_()
    scores = rx(cube)
    assert scores.dtype == torch.float32 and scores.shape == (*x.shape[:-1], 1)
    reference = numpy_rx(x)
    rel = np.abs(scores.detach().double().numpy().reshape(-1) - reference) / reference
    assert rel.max() < 1e-5
    g = torch.from_numpy(rng.normal(size=scores.shape).astype(np.float32))
    (grad,) = torch.autograd.grad(scores, cube, g)
    x64 = torch.from_numpy(x).double().requires_grad_()
    z = (x64 - rx.mean) @ rx.whitening.T
    (ref_grad,) = torch.autograd.grad((z * z).sum(-1, keepdim=True), x64, g.double())
    assert float((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()) < 1e-4


def test_float32_factor_follows_new_statistics() -> None:
    """The cached float32 factor is rebuilt when the statistics change (refit or load)."""
    rng = np.random.default_rng(1)
    a, b = scene(rng), scene(rng, level=0.5)
    rx = fitted_rx(a)
    with torch.enable_grad():
        rx(torch.from_numpy(a).requires_grad_())
    other = fitted_rx(b)
    rx.load_state_dict(other.state_dict())
    with torch.enable_grad():
        scores = rx(torch.from_numpy(b).requires_grad_()).detach().double().numpy().reshape(-1)
    reference = numpy_rx(b)
    assert np.max(np.abs(scores - reference) / reference) < 1e-5


def train_head(x: np.ndarray, masks: np.ndarray, float64_rx: bool, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[torch.Tensor, float, float]:
    if float64_rx:  # reference: the same maths through float64 autograd
        def score64(self: RXGlobal, cube: torch.Tensor) -> torch.Tensor:
            z = (cube.double() - self.mean) @ self.whitening.T
            return (z * z).sum(-1, keepdim=True).to(cube.dtype)

        monkeypatch.setattr(RXGlobal, "_score_float32", score64)
    torch.manual_seed(0)
    graph = Graph("head")
    sel = graph.add_node(SoftChannelSelector(n_select=4), name="sel")
    rx = graph.add_node(RXGlobal(), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head)
    dm = GraphDataModule.from_arrays(x, masks, batch_size=2)
    graph.train(dm, {"trainer": {"max_epochs": 3, "enable_progress_bar": False}}, run_dir=False)
    monkeypatch.undo()
    return sel.logits.detach().clone(), float(head.alpha.detach()), float(head.beta.detach())


def test_float32_training_gives_the_float64_trained_model(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x = scene(rng, n=4, c=8)
    masks = np.zeros(x.shape[:-1], dtype=np.int64)
    masks[:, 3:5, 6:8] = 1
    x[masks == 1] += 0.05
    logits32, alpha32, beta32 = train_head(x, masks, False, monkeypatch)
    logits64, alpha64, beta64 = train_head(x, masks, True, monkeypatch)
    assert abs(alpha32 - alpha64) <= 1e-4 * max(1.0, abs(alpha64))
    assert abs(beta32 - beta64) <= 1e-4 * max(1.0, abs(beta64))
    assert float((logits32 - logits64).abs().max()) <= 1e-4


def numpy_affine(x: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The normalizer's map ``a x + b`` materialised in float64."""
    return x.reshape(-1, x.shape[-1]).astype(np.float64) * a.numpy() + b.numpy()


@pytest.mark.parametrize("normalizer", [MinMaxNormalizer, lambda: MinMaxNormalizer(per_channel=False),
                                        StandardNormalizer])
def test_folded_normalizer_statistics_equal_the_materialised_ones(normalizer, monkeypatch) -> None:
    """RX and PCA behind a normalizer get the moments of ``a x + b`` (folded, not materialised):
    equal to numpy float64 on the materialised cube to 1e-12; the normalizer never runs in
    the statistics pass of its children."""
    rng = np.random.default_rng(3)
    x = (1e4 + 40 * rng.normal(size=(4, 12, 12, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    graph = Graph("fold")
    norm = graph.add_node(normalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    pca = graph.add_node(TrainablePCA(n_components=3), parent=norm, name="pca")
    calls = []
    forward = type(norm).forward
    monkeypatch.setattr(type(norm), "forward", lambda self, x: calls.append(1) or forward(self, x))
    graph.train(GraphDataModule.from_arrays(x, batch_size=3), FIT, run_dir=False)
    assert calls == []
    y = numpy_affine(x, *norm.affine_coefficients())
    mu, cov = y.mean(0), np.cov(y, rowvar=False)
    scale = max(np.abs(mu).max(), np.sqrt(np.diag(cov)).max())  # a standardized mean is ~0: relative to the spread
    np.testing.assert_allclose(rx.mean.numpy(), mu, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(pca.mean.numpy(), mu, rtol=1e-12, atol=1e-12 * scale)
    top = np.linalg.eigvalsh(cov)[::-1][:3]
    np.testing.assert_allclose(pca.explained_variance.numpy(), top, rtol=1e-12)


def test_moment_accumulator_affine_equals_numpy() -> None:
    rng = np.random.default_rng(4)
    x = 1e4 + 30 * rng.normal(size=(5000, 5))
    a, b = rng.uniform(-2, 2, size=5), rng.normal(size=5)
    for full in (True, False):
        acc = MomentAccumulator(5, full_covariance=full)
        for part in np.array_split(x, 3):
            acc.update(torch.from_numpy(part))
        acc.affine_(torch.from_numpy(a), torch.from_numpy(b))
        y = x * a + b
        np.testing.assert_allclose(acc.mean.numpy(), y.mean(0), rtol=1e-12)
        expected = np.cov(y, rowvar=False) if full else y.var(0, ddof=1)
        np.testing.assert_allclose(acc.covariance().numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dim", [1, 3, 100, 300])
def test_minmax_blocks_equal_numpy(dim: int) -> None:
    """Min/max over several blocks (folded element-wise into tiles, the extremes in the last,
    shorter block) equal numpy exactly, with and without row weights, and under an affine map
    (negative scales swap)."""
    rng = np.random.default_rng(dim)
    n = 3 * max(1, BLOCK_VALUES // dim) + 17
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[-1], x[-5] = 7.0, -7.0  # the extremes in the last, shorter chunk
    acc = MinMaxAccumulator(dim)
    acc.update(torch.from_numpy(x))
    np.testing.assert_array_equal(acc.min.numpy(), x.min(0).astype(np.float64))
    np.testing.assert_array_equal(acc.max.numpy(), x.max(0).astype(np.float64))
    keep = rng.uniform(size=n) > 0.5
    weighted = MinMaxAccumulator(dim)
    weighted.update(torch.from_numpy(x), torch.from_numpy(keep.astype(np.int64)))
    np.testing.assert_array_equal(weighted.min.numpy(), x[keep].min(0).astype(np.float64))
    a, b = rng.uniform(-2, 2, size=dim), rng.normal(size=dim)
    acc.affine_(torch.from_numpy(a), torch.from_numpy(b))
    y = x.astype(np.float64) * a + b
    np.testing.assert_allclose(acc.min.numpy(), y.min(0), rtol=1e-12)
    np.testing.assert_allclose(acc.max.numpy(), y.max(0), rtol=1e-12)
