"""TrainablePCA against scikit-learn, and RX invariance to a full-rank PCA on a real scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import RXGlobal, StandardNormalizer, TrainablePCA
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule
from cuvis_graph.errors import CompileError

STATS_ONLY = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}
ABU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "abu"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def spread_cubes(n: int = 5, h: int = 10, w: int = 12, c: int = 8, seed: int = 0) -> np.ndarray:
    """Cubes whose covariance has well separated eigenvalues (ratio 4 between neighbours)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(c, c)))
    scales = 50.0 * 2.0 ** -np.arange(c)
    pixels = (rng.normal(size=(n * h * w, c)) * scales) @ rotation.T + 1000.0
    return pixels.reshape(n, h, w, c).astype(np.float32)


def fit_pca(cubes: np.ndarray, **kwargs) -> tuple[Graph, TrainablePCA]:
    graph = Graph("pca")
    pca = graph.add_node(TrainablePCA(**kwargs))
    graph.train(GraphDataModule.from_arrays(cubes, batch_size=2), STATS_ONLY)
    return graph, pca


def align_signs(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return ours * np.sign((ours * ref).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("k", [8, 3])
def test_components_and_ratios_match_sklearn(k: int) -> None:
    cubes = spread_cubes()
    _, pca = fit_pca(cubes, n_components=k)
    ref = PCA(n_components=k).fit(cubes.reshape(-1, cubes.shape[-1]).astype(np.float64))
    ours = pca.components.detach().numpy()
    assert ours.shape == (k, 8)
    np.testing.assert_allclose(align_signs(ours, ref.components_), ref.components_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(pca.explained_variance.numpy(), ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(pca.mean.numpy(), ref.mean_, rtol=1e-9)


def test_ratio_is_relative_to_total_variance() -> None:
    cubes = spread_cubes()
    _, pca = fit_pca(cubes, n_components=2)
    total = np.var(cubes.reshape(-1, 8).astype(np.float64), axis=0, ddof=1).sum()
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), pca.explained_variance.numpy() / total, rtol=1e-9)
    assert pca.explained_variance_ratio.sum() < 0.99


def test_projection_and_sign_convention() -> None:
    cubes = spread_cubes()
    graph, pca = fit_pca(cubes, n_components=4)
    w = pca.components.detach().numpy()
    rows = np.arange(4)
    assert np.all(w[rows, np.abs(w).argmax(axis=1)] > 0)
    x = cubes.reshape(-1, 8).astype(np.float64)
    expected = (x - x.mean(axis=0)) @ w.T
    out = graph.predict(cubes)[pca.name].numpy().reshape(-1, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    _, again = fit_pca(cubes, n_components=4)
    assert torch.equal(again.components, pca.components)


def test_whitening_gives_unit_variance() -> None:
    cubes = spread_cubes()
    graph, pca = fit_pca(cubes, n_components=5, whiten=True)
    out = graph.predict(cubes)[pca.name].numpy().reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(out.var(axis=0, ddof=1), np.ones(5), rtol=1e-5)
    np.testing.assert_allclose(out.mean(axis=0), np.zeros(5), atol=1e-5)


def test_uncentred_uses_second_moment() -> None:
    cubes = spread_cubes()
    _, pca = fit_pca(cubes, n_components=2, center=False)
    x = cubes.reshape(-1, 8).astype(np.float64)
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    top = vectors[:, ::-1][:, :2].T
    np.testing.assert_allclose(align_signs(pca.components.detach().numpy(), top), top, atol=1e-6)
    assert torch.all(pca.mean == 0)


def test_output_dims_bind_k_and_reject_too_many_components() -> None:
    cubes = spread_cubes()
    dm = GraphDataModule.from_arrays(cubes, batch_size=2)
    graph = Graph("dims")
    pca = graph.add_node(TrainablePCA(n_components=3))
    norm = graph.add_node(StandardNormalizer(), parent=pca)
    plan = graph.compile(dm)
    assert plan.output_dims[pca.name]["out"][-1] == 3
    assert plan.output_dims[norm.name]["out"][-1] == 3
    bad = Graph("bad")
    bad.add_node(TrainablePCA(n_components=9), name="pca")
    with pytest.raises(CompileError, match="n_components=9 exceeds the C=8"):
        bad.compile(dm)


def test_trainable_components_are_parameters_and_survive_state_dict() -> None:
    cubes = spread_cubes()
    graph, pca = fit_pca(cubes, n_components=3, trainable=True, whiten=True)
    assert isinstance(pca.components, torch.nn.Parameter) and pca.is_trainable()
    out = pca(torch.as_tensor(cubes[:1]))
    out.square().sum().backward()
    assert pca.components.grad is not None and torch.count_nonzero(pca.components.grad) > 0
    fresh = TrainablePCA(n_components=3, trainable=True, whiten=True)
    fresh.load_state_dict(pca.state_dict())
    assert isinstance(fresh.components, torch.nn.Parameter)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(torch.as_tensor(cubes[:1])).numpy(), pca(torch.as_tensor(cubes[:1])).numpy())


@pytest.mark.real
def test_rx_after_full_rank_pca_keeps_auc_on_abu_scene() -> None:
    path = ABU / "abu-beach-3.mat"
    if not path.exists():
        pytest.skip(f"ABU scene not found at {path} (shared real data is not available)")
    from scipy.io import loadmat

    mat = loadmat(path)
    cube, labels = mat["data"].astype(np.float32), mat["map"].reshape(-1) > 0
    c = cube.shape[-1]

    def auc(with_pca: bool) -> float:
        graph = Graph("rx")
        parent = graph.add_node(TrainablePCA(n_components=c)) if with_pca else None
        rx = graph.add_node(RXGlobal(), parent=parent)
        graph.train(GraphDataModule.from_arrays(cube, batch_size=1), STATS_ONLY)
        return roc_auc_score(labels, graph.predict(cube, output=rx.name).numpy().reshape(-1))

    plain, rotated = auc(False), auc(True)
    assert plain == pytest.approx(0.999845, abs=5e-4)
    assert rotated == pytest.approx(plain, abs=5e-4)
