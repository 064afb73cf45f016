"""BinaryDecider and QuantileDecider against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import BinaryDecider, QuantileDecider, RXGlobal
from cuvis_graph.nodes.deciders import rowwise_quantile

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def test_binary_decider_thresholds_strictly() -> None:
    scores = torch.tensor([[-1.0, 0.5, 0.5001, 3.0]]).reshape(1, 2, 2, 1)
    out = BinaryDecider(threshold=0.5)(scores)
    assert out.shape == (1, 2, 2, 1) and out.dtype == torch.float32
    assert out.reshape(-1).tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_rowwise_quantile_equals_numpy(q: float) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 257))
    np.testing.assert_allclose(rowwise_quantile(torch.tensor(values), q).numpy(), np.quantile(values, q, axis=1),
                               rtol=1e-12)


def test_quantile_decider_flags_the_top_of_each_image() -> None:
    rng = np.random.default_rng(1)
    scores = rng.lognormal(size=(2, 20, 10, 1))
    scores[1] *= 100.0  # a different scale per image
    out = QuantileDecider(q=0.9)(torch.tensor(scores))
    assert out.shape == scores.shape and set(torch.unique(out).tolist()) <= {0.0, 1.0}
    for b in range(2):
        threshold = np.quantile(scores[b], 0.9)
        np.testing.assert_array_equal(out[b].numpy(), (scores[b] > threshold).astype(np.float64))
        assert int(out[b].sum()) == 20  # 10% of 200 distinct scores


def test_deciders_in_a_graph() -> None:
    cubes = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    graph = Graph("decide")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.add_node(QuantileDecider(q=0.75), parent=rx, name="top")
    graph.add_node(BinaryDecider(threshold=3.0), parent=rx, name="fixed")
    graph.train(GraphDataModule.from_arrays(cubes), {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    out = graph.predict(cubes)
    scores = graph.predict(cubes, output="rx").numpy()
    np.testing.assert_array_equal(out["fixed"].numpy(), (scores > 3.0).astype(np.float32))
    assert int(out["top"].sum()) == 2 * 16
