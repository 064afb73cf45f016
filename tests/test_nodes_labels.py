"""BinaryLabelMapper: losses and metrics downstream consume the mapped labels, not raw class ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    BinaryLabelMapper,
    RXGlobal,
    RXLogitHead,
)

from cuvis_graph import Graph
from cuvis_graph.core.executor import Executor
from cuvis_graph.core.leaves import TARGET_KEY
from cuvis_graph.data import GraphDataModule
from cuvis_graph.errors import CompileError

NORMAL = [0, 2]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cubes = rng.normal(size=(4, 8, 8, 5)).astype(np.float32)
    ids = rng.integers(0, 4, size=(4, 8, 8)).astype(np.int64)  # raw class ids 0..3
    cubes[np.isin(ids, [1, 3])] += 2.0
    return cubes, ids


def bce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))))


def label_graph() -> tuple[Graph, BinaryLabelMapper]:
    graph = Graph("labels")
    mapper = graph.add_node(BinaryLabelMapper(normal_class_ids=NORMAL), name="mapper")
    rx = graph.add_node(RXGlobal(), name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head, name="metrics")
    return graph, mapper


def test_mapping() -> None:
    ids = torch.arange(4).reshape(1, 2, 2)
    assert BinaryLabelMapper(normal_class_ids=NORMAL)(ids).reshape(-1).tolist() == [0, 1, 0, 1]


def test_bce_downstream_sees_mapped_labels() -> None:
    cubes, ids = scene()
    dm = GraphDataModule.from_arrays(cubes, ids, batch_size=2, val_on_train=True)
    graph, _ = label_graph()
    result = graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    logits = graph.predict(cubes, output="head").numpy().reshape(-1)
    mapped = np.isin(ids, NORMAL, invert=True).reshape(-1).astype(np.float64)
    raw = (ids > 0).reshape(-1).astype(np.float64)
    expected, wrong = bce(logits, mapped), bce(logits, raw)
    assert abs(expected - wrong) > 0.05
    assert result.metrics["val/loss/bce"] == pytest.approx(expected, rel=1e-5)
    # the executor hands the leaf the mapped labels as batch["target"]
    plan = graph.compile(dm)
    batch = next(iter(dm.val_dataloader()))
    executor = Executor(plan)
    binding = next(b for b in plan.leaves if b.name == "bce")
    _, leaf_batch = executor.leaf_inputs(binding, batch, executor.run(batch))
    assert torch.equal(leaf_batch[TARGET_KEY], torch.isin(batch["mask"], torch.tensor(NORMAL), invert=True).long())
    recall_mapped = result.metrics["val/metrics/recall"]
    predicted = logits > 0
    assert recall_mapped == pytest.approx(np.sum(predicted & (mapped > 0)) / np.sum(mapped > 0))


def test_label_node_needs_mask_at_compile_time_but_not_for_predict() -> None:
    cubes, ids = scene()
    graph, _ = label_graph()
    graph.train(GraphDataModule.from_arrays(cubes, ids, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    with pytest.raises(CompileError, match="via label node 'mapper'.*needs batch key 'mask'"):
        graph.compile(GraphDataModule.from_arrays(cubes))
    scores = graph.predict(cubes[0], output="head")
    assert scores.shape == (8, 8, 1)


def test_processing_node_can_consume_mapped_labels() -> None:
    cubes, ids = scene()
    graph = Graph("bg")
    mapper = graph.add_node(BinaryLabelMapper(normal_class_ids=NORMAL), name="mapper")
    rx = graph.add_node(RXGlobal(use_background_mask=True), parent={"mask": mapper}, name="rx")
    graph.train(GraphDataModule.from_arrays(cubes, ids, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    background = cubes[np.isin(ids, NORMAL)].astype(np.float64)
    np.testing.assert_allclose(rx.mean.numpy(), background.mean(axis=0), rtol=1e-6, atol=1e-7)
