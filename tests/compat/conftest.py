"""Tiny data for the cuvis.ai snippets: a datamodule written the cuvis.ai way."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cuvis_graph.data import GraphDataModule


class DictDataset(Dataset):
    """Items ``{"x": [H, W, C], "labels": [H, W]}`` (cuvis.ai's alternative key names)."""

    def __init__(self, cubes: torch.Tensor, masks: torch.Tensor) -> None:
        self.cubes, self.masks = cubes, masks

    def __len__(self) -> int:
        return len(self.cubes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.cubes[index], "labels": self.masks[index]}


class CuvisStyleDataModule(GraphDataModule):
    """``setup`` assigns ``train_dataset`` / ``val_dataset``; the loaders are overridden;
    nothing is declared (channels and keys come from the first batch)."""

    def __init__(self, n_train: int = 10, n_val: int = 4, channels: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cubes = torch.rand(n_train + n_val, 8, 8, channels, generator=g)
        self.masks = torch.zeros(n_train + n_val, 8, 8, dtype=torch.long)
        self.masks[:, 2:4, 2:4] = 1
        self.cubes[:, 2:4, 2:4, :] += 2.0
        self.n_train = n_train

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = DictDataset(self.cubes[:self.n_train], self.masks[:self.n_train])
        self.val_dataset = DictDataset(self.cubes[self.n_train:], self.masks[self.n_train:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=2, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=2, shuffle=False)


@pytest.fixture
def datamodule() -> CuvisStyleDataModule:
    return CuvisStyleDataModule()


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CUVIS_GRAPH_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)


#: A value for each primary argument that ARGUMENT_ALIASES renames.
ALIAS_VALUES = {"log_frequency": 3, "cmap": "viridis", "bins": 7, "max_points": 11, "n_components": 2,
                "weights": {"a": 1.0}, "root": "somewhere"}


@pytest.fixture
def alias_cases() -> list[tuple[str, type, str, str, object]]:
    """``(class name, class, alternative, primary, value)`` for every entry of ARGUMENT_ALIASES
    whose class is in the catalog or the monitors."""
    import cuvis_graph.nodes as nodes

    import cuvis_graph.monitors as monitors
    from cuvis_graph.core.aliases import ARGUMENT_ALIASES

    cases = []
    for cls_name, table in ARGUMENT_ALIASES.items():
        cls = getattr(nodes, cls_name, None) or getattr(monitors, cls_name, None)
        if cls is not None:
            cases += [(cls_name, cls, alternative, primary, ALIAS_VALUES[primary])
                      for alternative, primary in table.items()]
    return cases
