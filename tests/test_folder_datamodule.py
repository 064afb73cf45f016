"""FolderDataModule: reproducible file splits, lazy reads, mixed scene sizes, training over it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal
from spectral.io import envi

from cuvis_graph import Graph, TrainingConfig
from cuvis_graph.data import FolderDataModule, ReaderError
from cuvis_graph.errors import ConfigError

C = 4
WAVELENGTHS = np.array([450.0, 550.0, 650.0, 750.0])


def _cube(seed: int, h: int, w: int, c: int = C) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return (rng.normal(size=(h * w, c)) @ mixing * 20 + 1000).reshape(h, w, c).astype(np.float32)


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, np.ndarray]:
    """Six .npz scenes (two sizes) with masks and wavelengths; returns {name: cube}."""
    root = tmp_path / "scenes"
    root.mkdir()
    cubes = {}
    for i in range(6):
        h, w = (6, 7) if i % 2 == 0 else (5, 9)
        cube = _cube(i, h, w)
        mask = (np.arange(h * w).reshape(h, w) % 11 == i).astype(np.uint8)
        np.savez(root / f"scene_{i}.npz", data=cube, map=mask, wavelengths=WAVELENGTHS)
        cubes[f"scene_{i}.npz"] = cube
    return cubes


def _root(tmp_path: Path) -> Path:
    return tmp_path / "scenes"


def test_split_is_reproducible_disjoint_and_written(tmp_path: Path, folder: dict) -> None:
    a = FolderDataModule(_root(tmp_path), val_fraction=0.34, test_fraction=0.17, seed=3,
                         splits_path=tmp_path / "a" / "splits.json")
    b = FolderDataModule(_root(tmp_path), val_fraction=0.34, test_fraction=0.17, seed=3,
                         splits_path=tmp_path / "b" / "splits.json")
    saved_a = json.loads((tmp_path / "a" / "splits.json").read_text())
    saved_b = json.loads((tmp_path / "b" / "splits.json").read_text())
    assert {k: saved_a[k] for k in ("train", "val", "test")} == {k: saved_b[k] for k in ("train", "val", "test")}
    assert a.splits == b.splits
    parts = [set(a.splits[k]) for k in ("train", "val", "test")]
    assert [len(p) for p in parts] == [3, 2, 1]  # round(6 * .34) = 2, round(6 * .17) = 1
    assert set.union(*parts) == set(folder) and sum(map(len, parts)) == len(folder)
    # the seed matters (at least one of a few seeds gives another split)
    others = [FolderDataModule(_root(tmp_path), val_fraction=0.34, test_fraction=0.17, seed=s).splits
              for s in range(4, 8)]
    assert any(o != a.splits for o in others)
    assert not any(_root(tmp_path).glob("*.json"))  # nothing written into the data folder


def test_saved_split_is_reused(tmp_path: Path, folder: dict, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["scene_0.npz", "scene_1.npz"], "val": ["scene_5.npz"], "test": []}))
    with caplog.at_level(logging.WARNING):
        dm = FolderDataModule(_root(tmp_path), val_fraction=0.5, seed=99, splits_path=path)
    assert dm.splits == {"train": ["scene_0.npz", "scene_1.npz"], "val": ["scene_5.npz"], "test": []}
    assert "3 file(s) not in the saved split" in caplog.text
    dm.setup("fit")
    assert [p.name for p in dm.train_set.files] == ["scene_0.npz", "scene_1.npz"]
    path.write_text(json.dumps({"train": ["scene_9.npz"], "val": [], "test": []}))
    with pytest.raises(ConfigError, match=r"splits_path: .*splits\.json' names files that are not in"):
        FolderDataModule(_root(tmp_path), splits_path=path)
    path.write_text(json.dumps({"train": ["scene_0.npz", "scene_1.npz"], "val": ["scene_1.npz"], "test": []}))
    with pytest.raises(ConfigError, match=r"more than one split .*scene_1\.npz"):
        FolderDataModule(_root(tmp_path), splits_path=path)
    path.write_text(json.dumps({"seed": 1, "val_fraction": 0.5, "train": ["scene_0.npz"], "val": [], "test": []}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        FolderDataModule(_root(tmp_path), val_fraction=0.5, seed=2, splits_path=path)
    assert "made with seed=1 (configured 2)" in caplog.text


def test_items_are_read_lazily_and_match_the_files(tmp_path: Path) -> None:
    root = tmp_path / "npy"
    root.mkdir()
    cubes = [_cube(i, 8, 6) for i in range(3)]
    for i, cube in enumerate(cubes):
        np.save(root / f"{i}.npy", cube)
    dm = FolderDataModule(root, batch_size=2)
    spec = dm.data_spec()
    assert spec.n_channels == C and spec.batch_keys == frozenset({"cube"}) and spec.wavelengths is None
    dm.setup("fit")
    assert isinstance(dm.train_set.open(0).data, np.memmap)
    batches = list(dm.train_dataloader())
    assert sum(b["cube"].shape[0] for b in batches) == 3
    stats = list(dm.statistics_dataloader())
    np.testing.assert_array_equal(torch.cat([b["cube"] for b in stats]).numpy(), np.stack(cubes))


def test_train_rx_over_a_folder_of_mixed_sizes(tmp_path: Path, folder: dict) -> None:
    dm = FolderDataModule(_root(tmp_path), val_fraction=0.34, seed=1, batch_size=2)
    spec = dm.data_spec()
    assert spec.n_channels == C and spec.batch_keys == frozenset({"cube", "mask", "wavelengths"})
    np.testing.assert_array_equal(np.array(spec.wavelengths), WAVELENGTHS)
    dm.setup("fit")
    for batch in dm.statistics_dataloader():  # never mixes scene sizes; carries masks and wavelengths
        assert batch["cube"].shape[1:3] == batch["mask"].shape[1:] and batch["cube"].shape[-1] == C
        assert torch.equal(batch["wavelengths"], torch.tensor(WAVELENGTHS, dtype=torch.float32))

    graph = Graph("folder_rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    graph.train(dm, TrainingConfig(trainer=dict(max_epochs=0, enable_progress_bar=False)), run_dir=False)

    pixels = np.concatenate([folder[n].reshape(-1, C) for n in dm.splits["train"]]).astype(np.float64)
    np.testing.assert_array_equal(norm.min.numpy(), pixels.min(0))
    np.testing.assert_array_equal(norm.max.numpy(), pixels.max(0))
    lo, hi = norm.min.numpy().astype(np.float64), norm.max.numpy().astype(np.float64)
    scaled = (pixels - lo) / (hi - lo + norm.eps)
    np.testing.assert_allclose(rx.mean.numpy(), scaled.mean(0), rtol=0, atol=1e-6)
    # scores of a validation scene against numpy's float64 RX with the training statistics
    val_cube = folder[dm.splits["val"][0]]
    inv = np.linalg.inv(np.cov(scaled, rowvar=False))
    d = (val_cube.reshape(-1, C) - lo) / (hi - lo + norm.eps) - scaled.mean(0)
    expected = np.einsum("pi,ij,pj->p", d, inv, d).reshape(val_cube.shape[:2])
    np.testing.assert_allclose(graph.predict(val_cube)["rx"].numpy()[..., 0], expected, rtol=1e-4)


def test_bad_bands_and_channel_checks(tmp_path: Path) -> None:
    root = tmp_path / "envi"
    root.mkdir()
    bbl = [1, 0, 1, 1]
    cubes = [_cube(i, 5, 5) for i in range(2)]
    for i, cube in enumerate(cubes):
        envi.save_image(str(root / f"s{i}.hdr"), cube, ext=".img",
                        metadata={"wavelength": list(WAVELENGTHS), "bbl": bbl})
    dm = FolderDataModule(root, drop_bad_bands=True)
    spec = dm.data_spec()
    assert spec.n_channels == 3
    np.testing.assert_array_equal(np.array(spec.wavelengths), WAVELENGTHS[[0, 2, 3]])
    dm.setup("fit")
    assert dm.train_set.bands is not None and isinstance(dm.train_set.open(0).data, np.memmap)
    np.testing.assert_array_equal(dm.train_set[1]["cube"].numpy(), cubes[1][..., [0, 2, 3]])

    np.save(root / "wide.npy", _cube(9, 5, 5, c=C + 1))
    with pytest.raises(ReaderError, match=r"wide\.npy: has 5 channels, but .*s0\.hdr has 4"):
        FolderDataModule(root).data_spec()
