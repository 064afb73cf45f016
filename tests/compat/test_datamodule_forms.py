"""A datamodule written the cuvis.ai way: statistics read the loader training reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import RXGlobal
from torch.utils.data import DataLoader, TensorDataset

from cuvis_graph import Graph, TrainerConfig, TrainingConfig
from cuvis_graph.data import GraphDataModule
from cuvis_graph.data.datamodule import ArrayDataModule, CubeDataset, statistics_loader

from .conftest import CuvisStyleDataModule


class DifferentTrainSet(CuvisStyleDataModule):
    """``train_set`` holds other data than the overridden ``train_dataloader`` yields."""

    def setup(self, stage=None):
        super().setup(stage)
        self.training_data = self.train_dataset
        self.train_set = CubeDataset(np.full((3, 8, 8, 5), 7.0, dtype=np.float32))  # never trained on

    def train_dataloader(self):
        return DataLoader(self.training_data, batch_size=2, shuffle=True)  # training order: shuffled


def _fit_rx(dm) -> RXGlobal:
    graph = Graph("rx")
    rx = RXGlobal()
    graph.add_node(rx)
    graph.train(datamodule=dm, training_config=TrainingConfig(trainer=TrainerConfig(max_epochs=0)), run_dir=False)
    return rx


def test_statistics_come_from_the_overridden_train_dataloader():
    dm = DifferentTrainSet()
    rx = _fit_rx(dm)
    assert dm.train_dataset is dm.train_set  # one attribute, two names
    pixels = dm.cubes[:10].reshape(-1, 5).double().numpy()
    np.testing.assert_allclose(rx.mu.numpy(), pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(rx.cov.numpy(), np.cov(pixels, rowvar=False), rtol=1e-3, atol=1e-8)
    assert statistics_loader(dm).__func__ is type(dm).train_dataloader


def test_built_in_datamodules_keep_their_exact_statistics_loader():
    dm = ArrayDataModule(np.random.default_rng(0).random((4, 4, 4, 3)))
    assert statistics_loader(dm).__func__ is GraphDataModule.statistics_dataloader


class TupleBatches(GraphDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.rand(4, 8, 8, 5)), batch_size=2)


def test_a_batch_that_is_not_a_dict_gets_one_clear_error():
    with pytest.raises(TypeError, match=r"TupleBatches.train_dataloader\(\): batches must be dicts .*'cube'.*"
                                        r"'x'.*'mask'.*'labels'.*got a list"):
        next(iter(TupleBatches().train_dataloader()))
