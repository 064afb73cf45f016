"""Shared test setup: offline W&B, headless matplotlib, small in-memory datamodules."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cuvis_graph.data import ArrayDataModule, GraphDataModule  # noqa: E402


def make_cubes(n: int = 5, h: int = 6, w: int = 7, c: int = 4, offset: float = 1000.0,
               seed: int = 0) -> np.ndarray:
    """``[n, h, w, c]`` float32 cubes with correlated channels around ``offset``."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2.0 * np.eye(c)
    pixels = rng.normal(size=(n * h * w, c)) @ mixing * 20.0 + offset
    return pixels.reshape(n, h, w, c).astype(np.float32)


@pytest.fixture
def tiny_cubes() -> np.ndarray:
    """Five 6x7 cubes with 4 correlated channels (float32, offset 1000)."""
    return make_cubes()


@pytest.fixture
def tiny_datamodule(tiny_cubes: np.ndarray) -> ArrayDataModule:
    """``GraphDataModule.from_arrays`` over :func:`tiny_cubes`, batch size 2, no masks."""
    return GraphDataModule.from_arrays(tiny_cubes, batch_size=2)


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run directories of ``graph.train`` go to a temporary folder, never into the checkout."""
    if "CUVIS_GRAPH_RUNS_ROOT" not in os.environ:
        monkeypatch.setenv("CUVIS_GRAPH_RUNS_ROOT", str(tmp_path_factory.mktemp("runs")))
