"""RXGlobal: trainable statistics keep a positive semi-definite inverse; background masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import AnomalyBCEWithLogits, RXGlobal, RXLogitHead

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule, SyntheticHSIDataModule


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def test_trainable_rx_scores_stay_nonnegative_after_gradient_steps() -> None:
    dm = SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16, n_bands=12, batch_size=2)
    graph = Graph("rx_trainable")
    rx = graph.add_node(RXGlobal(trainable_stats=True), name="rx")
    head = graph.add_node(RXLogitHead(trainable=False), parent=rx)
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=10.0), parent=head)
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    fitted_inverse = rx.covariance_inverse.detach().clone()
    before = {k: v.detach().clone() for k, v in rx.named_parameters()}
    assert before, "trainable_stats=True exposes no parameters"
    graph.train(dm, {"trainer": {"max_epochs": 4, "enable_progress_bar": False}, "optimizer": {"lr": 0.05}})
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in rx.named_parameters())
    assert moved > 1e-3, "gradient steps did not change the RX statistics"
    inverse = rx.covariance_inverse.detach()
    assert not torch.allclose(inverse, fitted_inverse)
    torch.testing.assert_close(inverse, inverse.T, rtol=1e-10, atol=1e-10 * float(inverse.abs().max()))
    eigenvalues = torch.linalg.eigvalsh(inverse)
    assert float(eigenvalues.min()) >= -1e-9 * float(eigenvalues.max())
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.tensor(rng.normal(scale=scale, size=(3, 9, 9, 12)), dtype=torch.float32)
        with torch.no_grad():
            assert float(rx(x).min()) >= 0.0


def test_background_mask_excludes_anomalies_from_statistics() -> None:
    rng = np.random.default_rng(2)
    cubes = rng.normal(size=(3, 10, 10, 4)).astype(np.float32)
    masks = (rng.random((3, 10, 10)) < 0.2).astype(np.int64) * 3
    cubes[masks > 0] += 50.0  # anomalies far away
    graph = Graph("rx_bg")
    rx = graph.add_node(RXGlobal(use_background_mask=True), name="rx")
    graph.train(GraphDataModule.from_arrays(cubes, masks, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    background = cubes[masks == 0].astype(np.float64)
    np.testing.assert_allclose(rx.mean.numpy(), background.mean(axis=0), rtol=1e-6, atol=1e-9)
    expected = np.linalg.inv(np.cov(background, rowvar=False))
    np.testing.assert_allclose(rx.covariance_inverse.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_inference_scoring_in_blocks_equals_the_differentiable_path():
    """No-grad scoring runs in row blocks through reused buffers; same bits as the autograd
    path, and numpy float64 ``(x-mu)^T Sigma_eps^-1 (x-mu)`` to 1e-9, on a pixel count that is
    not a multiple of the block size."""
    from cuvis_graph.nodes.rx import SCORE_BLOCK_ROWS

    rng = np.random.default_rng(3)
    x = (1e4 + rng.normal(size=(2, 61, 97, 12)) @ rng.normal(size=(12, 12))).astype(np.float32)
    assert (61 * 97 * 2) % SCORE_BLOCK_ROWS != 0
    graph = Graph("blocks")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.train(GraphDataModule.from_arrays(x, batch_size=1), {"trainer": {"max_epochs": 0,
                                                                         "enable_progress_bar": False}},
                run_dir=False)
    cube = torch.from_numpy(x)
    with torch.no_grad():
        blocked = rx(cube)
    with torch.enable_grad():  # float64 input: the float64 autograd path
        direct = rx(cube.double())
    assert torch.equal(blocked, direct.detach().float())
    pixels = x.reshape(-1, 12).astype(np.float64)
    mu, cov = pixels.mean(0), np.cov(pixels, rowvar=False)
    cov += 1e-12 * np.trace(cov) / 12 * np.eye(12)
    d = pixels - mu
    reference = np.einsum("nc,cd,nd->n", d, np.linalg.inv(cov), d)
    np.testing.assert_allclose(blocked.reshape(-1).double().numpy(), reference, rtol=1e-5)
