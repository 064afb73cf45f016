"""The training API's quick example, verbatim apart from imports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from cuvis_graph.nodes import ExplainedVarianceMetric, OrthogonalityLoss, TrainablePCA

from cuvis_graph import Graph, TrainerConfig, TrainingConfig
from cuvis_graph.monitors import DummyMonitor


def test_trainable_pca_snippet_trains_and_logs(datamodule):
    graph = Graph("trainable_pca")
    pca = TrainablePCA(n_components=3, trainable=True)
    graph.add_node(pca)
    graph.add_leaf_node(OrthogonalityLoss(weight=1.0), parent=pca)
    graph.add_leaf_node(ExplainedVarianceMetric(), parent=pca)
    graph.register_monitor(DummyMonitor(output_dir="./outputs"))
    config = TrainingConfig(seed=42, trainer=TrainerConfig(max_epochs=2, accelerator="auto"))
    trainer = graph.train(datamodule=datamodule, training_config=config)

    assert trainer.stages["train"]["epochs"] == 2
    # statistics were fitted from the overridden train_dataloader (10 cubes, 5 channels)
    cubes = datamodule.cubes[:10].reshape(-1, 5).double().numpy()
    np.testing.assert_allclose(pca.mean.numpy(), cubes.mean(axis=0), rtol=1e-10)
    assert trainer.fit.batches == 5
    leaf = next(n for n, leaf in graph.leaves.items() if isinstance(leaf, ExplainedVarianceMetric))
    for key in ("comp_0", "comp_1", "comp_2", "cumulative", "component_0", "total"):
        assert f"val/{leaf}/{key}" in trainer.metrics
    assert trainer.metrics[f"val/{leaf}/cumulative"] == trainer.metrics[f"val/{leaf}/total"]
    lines = [json.loads(line) for line in Path("outputs/metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in line["metrics"] for line in lines)


def test_cuvis_batch_keys_are_read_as_primary(datamodule):
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"cube", "mask"}
    spec = datamodule.data_spec()
    assert spec.n_channels == 5 and spec.batch_keys == {"cube", "mask"}
    torch.testing.assert_close(batch["cube"], datamodule.cubes[:2])
