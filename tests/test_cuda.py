"""CUDA code paths: statistics float64 on the GPU, RX's float32 training forward there.

Run only where CUDA is present (CI has no GPU); the references are numpy float64 and the same
fit on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal, StandardNormalizer

from cuvis_graph import Graph
from cuvis_graph.core.row_stream import RowStream
from cuvis_graph.core.statistics import MinMaxAccumulator, MomentAccumulator
from cuvis_graph.data import GraphDataModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def sensor_rows(seed: int = 0, n: int = 40_000, c: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(5e3, 2e4, size=c) + 100 * rng.standard_normal((n, c))).astype(np.float32)


def test_accumulators_on_the_gpu_are_float64_and_exact() -> None:
    x = sensor_rows()
    rows = torch.from_numpy(x).cuda()
    full, diagonal, minmax = MomentAccumulator(x.shape[1]), MomentAccumulator(x.shape[1], False), \
        MinMaxAccumulator(x.shape[1])
    for part in rows.split(15_000):
        with RowStream():
            for acc in (minmax, diagonal, full):
                acc.update(part)
    reference = x.astype(np.float64)
    assert full.covariance().dtype == torch.float64 and full.covariance().is_cuda
    cov = np.cov(reference, rowvar=False)
    np.testing.assert_allclose(full.covariance().cpu().numpy(), cov, rtol=1e-10, atol=1e-12 * np.abs(cov).max())
    np.testing.assert_allclose(diagonal.variance().cpu().numpy(), reference.var(0, ddof=1), rtol=1e-10)
    np.testing.assert_array_equal(minmax.min.cpu().numpy(), reference.min(0))
    np.testing.assert_array_equal(minmax.max.cpu().numpy(), reference.max(0))


@pytest.mark.parametrize("normalizer", [MinMaxNormalizer, StandardNormalizer])
def test_statistical_init_on_the_gpu_equals_the_cpu_fit(normalizer) -> None:
    x = sensor_rows(1, n=6 * 32 * 32).reshape(6, 32, 32, -1)
    fitted = {}
    for accelerator in ("cpu", "gpu"):
        graph = Graph("gpu_fit")
        norm = graph.add_node(normalizer(), name="norm")
        rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
        graph.train(GraphDataModule.from_arrays(x, batch_size=2),
                    {"trainer": {"max_epochs": 0, "accelerator": accelerator, "enable_progress_bar": False}},
                    run_dir=False)
        fitted[accelerator] = (rx.mean.detach().cpu(), rx.whitening.detach().cpu())
    assert fitted["gpu"][0].dtype == torch.float64
    for cpu, gpu in zip(fitted["cpu"], fitted["gpu"], strict=True):
        assert float((cpu - gpu).abs().max() / cpu.abs().max()) < 1e-10


def test_rx_float32_training_forward_on_the_gpu_matches_float64() -> None:
    x = sensor_rows(2, n=4 * 16 * 16, c=10).reshape(4, 16, 16, -1)
    graph = Graph("gpu_rx")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.train(GraphDataModule.from_arrays(x, batch_size=2),
                {"trainer": {"max_epochs": 0, "accelerator": "cpu", "enable_progress_bar": False}}, run_dir=False)
    rx = rx.cuda()
    cube = torch.from_numpy(x).cuda().requires_grad_()
    scores = rx(cube)
    assert scores.dtype == torch.float32 and scores.is_cuda
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64)
    d = pixels - rx.mean.detach().cpu().numpy()
    w = rx.whitening.detach().cpu().numpy()
    reference = ((d @ w.T) ** 2).sum(-1)
    rel = np.abs(scores.detach().double().cpu().numpy().reshape(-1) - reference) / reference
    assert rel.max() < 1e-5
