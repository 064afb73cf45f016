"""A :class:`~cuvis_graph.data.GraphDataModule` as Lightning's ``LightningDataModule``.

Datamodules are Lightning-free (a pipeline validates without importing Lightning); the
Trainer receives this view. Hooks and loaders are the datamodule's own; every other
attribute (``data_spec``, ``statistics_dataloader``, ``batch_size``, ...) is read from it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

__all__ = ["LightningDataView", "as_lightning_datamodule"]


class LightningDataView(pl.LightningDataModule):
    """Lightning's hooks forwarded to ``data`` (a GraphDataModule or any object with them)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.data = data

    def __getattr__(self, name: str) -> Any:
        if name == "data" or name.startswith("__"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def teardown(self, stage: str) -> None:
        self.data.teardown(stage)

    def train_dataloader(self) -> Any:
        return self.data.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.data.predict_dataloader()


def as_lightning_datamodule(datamodule: Any) -> pl.LightningDataModule:
    """``datamodule`` itself when it is a LightningDataModule, else a :class:`LightningDataView`."""
    if datamodule is None or isinstance(datamodule, pl.LightningDataModule):
        return datamodule
    return LightningDataView(datamodule)
