"""Gradient training through the compiled Lightning module."""

from __future__ import annotations

import numpy as np
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
)
from sklearn.metrics import f1_score

from cuvis_graph import Graph, NotFittedError
from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.monitors import FileMonitor

EXPECTED_KEYS = {
    "train/loss", "train/loss/bce", "val/loss", "val/loss/bce",
    *(f"val/detection/{m}" for m in ("precision", "recall", "f1", "iou", "accuracy", "specificity", "auroc",
                                      "average_precision")),
}


def _graph(monitor_root=None) -> Graph:
    graph = Graph("rx_bce")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(trainable_stats=True), parent=norm, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head, name="detection")
    if monitor_root is not None:
        graph.register_monitor(FileMonitor(monitor_root))
    return graph


def _config(epochs: int) -> dict:
    return {"seed": 0, "trainer": {"max_epochs": epochs, "enable_progress_bar": False}, "optimizer": {"lr": 0.05}}


def test_gradient_training_improves_validation_f1(tmp_path) -> None:
    dm = SyntheticHSIDataModule(n_train=8, n_val=4, n_test=0, seed=0)
    graph = _graph(tmp_path)
    result = graph.train(dm, _config(6))
    before, after = result.initial_metrics["val/detection/f1"], result.metrics["val/detection/f1"]
    assert after > before + 0.05, (before, after)
    # the logged F1 is the dataset-level F1 of predict() on the validation scenes
    cubes = torch.stack(dm.val_set.cubes)
    labels = torch.stack(dm.val_set.masks).numpy().ravel() > 0
    logits = graph.predict(cubes)["head"].numpy().ravel()
    assert abs(f1_score(labels, logits > 0) - after) < 1e-9


def test_log_keys_are_stable_names(tmp_path) -> None:
    keys = []
    for run in range(2):
        monitor_root = tmp_path / f"run{run}"
        result = _graph(monitor_root).train(SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16),
                                            _config(1))
        assert set(result.metrics) >= EXPECTED_KEYS
        lines = FileMonitor(monitor_root).read_metrics()
        keys.append(sorted({k for line in lines for k in line["metrics"]}))
        assert {line["stage"] for line in lines} == {"train", "val"}
    assert keys[0] == keys[1]


def test_statistical_only_training_and_predict_shapes() -> None:
    dm = SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16)
    graph = Graph("rx_only")
    graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(), parent="norm", name="rx")
    cube = dm.val_set.cubes[0].numpy()
    try:
        graph.predict(cube)
        raise AssertionError("an unfitted graph must not run")
    except NotFittedError as exc:
        assert "'norm'" in str(exc)
    result = graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    assert result.fit.passes == 1  # the normalizer and RX share one pass
    single = graph.predict(cube)
    batch = graph.predict(np.stack([cube, cube]))
    assert single["rx"].shape == (16, 16, 1)
    assert batch["rx"].shape == (2, 16, 16, 1)
    torch.testing.assert_close(batch["rx"][1], single["rx"])
    assert graph.predict(cube, output="norm").shape == cube.shape
