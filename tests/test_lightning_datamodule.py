"""A plain Lightning ``LightningDataModule`` (not a GraphDataModule) with dict batches: the
graph learns the channel count from its first training batch, fits and trains; bad batches
get one clear error naming the datamodule's loader."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    TrainablePCA,
)
from torch.utils.data import DataLoader

from cuvis_graph import CompileError, Graph, TrainerConfig, TrainingConfig
from cuvis_graph.data.checks import DataError
from cuvis_graph.data.datamodule import spec_from_first_batch

CONFIG = TrainingConfig(trainer=TrainerConfig(max_epochs=1, enable_progress_bar=False))


def _items(seed: int, n: int, keys: tuple[str, str] = ("cube", "mask")) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    cubes = rng.normal(size=(n, 8, 9, 5)).astype(np.float32)
    masks = (rng.random((n, 8, 9)) < 0.05).astype(np.int64)
    return [{keys[0]: torch.from_numpy(c), keys[1]: torch.from_numpy(m)} for c, m in zip(cubes, masks, strict=True)]


class PlainDataModule(pl.LightningDataModule):
    def __init__(self, keys: tuple[str, str] = ("cube", "mask"), items: list | None = None) -> None:
        super().__init__()
        self.train_items = items if items is not None else _items(0, 6, keys)
        self.val_items = _items(1, 2, keys)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_items, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_items, batch_size=2)


def _graph() -> Graph:
    graph = Graph("plain_dm")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    return graph


def test_a_lightning_datamodule_validates_and_trains_with_statistics_of_its_loader() -> None:
    datamodule = PlainDataModule()
    graph = _graph()
    spec = spec_from_first_batch(datamodule)
    assert spec.n_channels == 5 and spec.batch_keys == frozenset({"cube", "mask"})
    graph.validate(datamodule)
    result = graph.train(datamodule, CONFIG, run_dir=False)
    assert np.isfinite(result.metrics["val/loss"])
    # the normalizer's statistics are the per-channel min/max of exactly the loader's pixels
    pixels = torch.stack([item["cube"] for item in datamodule.train_items]).reshape(-1, 5).double()
    state = graph["norm"].state_dict()
    np.testing.assert_array_equal(state["min"].double().reshape(-1).numpy(), pixels.min(0).values.numpy())
    np.testing.assert_array_equal(state["max"].double().reshape(-1).numpy(), pixels.max(0).values.numpy())


def test_a_channel_mismatch_with_the_first_batch_is_a_compile_error() -> None:
    graph = Graph("too_many")
    graph.add_node(RXGlobal(), name="rx")
    graph.add_node(TrainablePCA(n_components=7), parent="rx", name="pca")  # K = 7 > C = 1 of RX's scores
    with pytest.raises(CompileError, match="pca"):
        graph.validate(PlainDataModule())


@pytest.mark.parametrize("case, message", [
    ("tensors", "batches must be dicts"),
    ("x_keys", "need the key 'cube'"),
    ("empty", "the training loader is empty"),
])
def test_bad_batches_of_a_lightning_datamodule_get_one_error_naming_its_loader(case: str, message: str) -> None:
    if case == "tensors":
        datamodule = PlainDataModule(items=[torch.zeros(8, 9, 5) for _ in range(4)])
    elif case == "x_keys":
        datamodule = PlainDataModule(keys=("x", "labels"))
    else:
        datamodule = PlainDataModule(items=[])
    with pytest.raises((DataError, TypeError), match=message) as info:
        _graph().validate(datamodule)
    assert "PlainDataModule.train_dataloader()" in str(info.value)
