"""``FolderDataModule(on_bad_file=...)``: a truncated file and a file with another channel
count fail the scan by default; with ``skip`` they are left out of every split, warned about,
and recorded in ``splits.json`` and ``run.json``, and the statistics equal those of the good
files alone (numpy float64 reference)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import RXGlobal

from cuvis_graph import Graph
from cuvis_graph.data import FolderDataModule, ReaderError
from cuvis_graph.errors import ConfigError
from cuvis_graph.io.runs import read_run_json

ROOT = Path(__file__).parent.parent
CLI = Path(sys.executable).parent / "cuvis-graph"
C = 4
WAVELENGTHS = np.array([450.0, 550.0, 650.0, 750.0])
GOOD = [f"scene_{i}.npz" for i in range(4)]
TRUNCATED, OTHER_CHANNELS = "a_truncated.npy", "b_five_channels.npz"


def _cube(seed: int, c: int = C) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return (rng.normal(size=(6 * 7, c)) @ mixing * 20 + 1000).reshape(6, 7, c).astype(np.float32)


def _mask(seed: int) -> np.ndarray:
    return (np.arange(42).reshape(6, 7) % 13 == seed).astype(np.uint8)


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """Four good .npz scenes, one truncated .npy, one .npz with 5 channels."""
    root = tmp_path / "scenes"
    root.mkdir()
    for i, name in enumerate(GOOD):
        np.savez(root / name, data=_cube(i), map=_mask(i), wavelengths=WAVELENGTHS)
    np.save(root / TRUNCATED, _cube(10))
    data = (root / TRUNCATED).read_bytes()
    (root / TRUNCATED).write_bytes(data[: len(data) - 40])
    np.savez(root / OTHER_CHANNELS, data=_cube(11, c=5), map=_mask(11))
    return root


def _good_pixels(root: Path) -> np.ndarray:
    return np.concatenate([np.load(root / n)["data"].reshape(-1, C).astype(np.float64) for n in GOOD])


def test_fail_is_the_default_and_names_the_file(scenes: Path) -> None:
    with pytest.raises(ReaderError, match=rf"{TRUNCATED}: truncated"):
        FolderDataModule(scenes).data_spec()
    (scenes / TRUNCATED).unlink()
    with pytest.raises(ReaderError, match="channels"):
        FolderDataModule(scenes).data_spec()


def test_on_bad_file_is_checked() -> None:
    with pytest.raises(ConfigError, match="on_bad_file: must be 'fail' or 'skip'"):
        FolderDataModule(ROOT, on_bad_file="ignore")


def test_skip_leaves_bad_files_out_of_every_split_with_a_warning(scenes: Path, tmp_path: Path, caplog) -> None:
    splits_path = tmp_path / "out" / "splits.json"
    with caplog.at_level(logging.WARNING, logger="cuvis_graph.data.folder"):
        dm = FolderDataModule(scenes, val_fraction=0.34, seed=2, splits_path=splits_path, on_bad_file="skip")
        dm.setup("fit")
    assert dm.n_channels == C and "mask" in dm.batch_keys
    assert [s["file"] for s in dm.skipped_files] == [TRUNCATED, OTHER_CHANNELS]
    reasons = {s["file"]: s["reason"] for s in dm.skipped_files}
    assert reasons[TRUNCATED].startswith("truncated")
    assert "has 5 channels, but 4 of 5 files have 4" in reasons[OTHER_CHANNELS]
    for name, reason in reasons.items():
        assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records), name
    used = [n for k in ("train", "val", "test") for n in dm.splits[k]]
    assert sorted(used) == GOOD
    saved = json.loads(splits_path.read_text())
    assert saved["skipped"] == dm.skipped_files
    assert sorted(n for k in ("train", "val", "test") for n in saved[k]) == GOOD
    # reusing the split keeps the skipped files out, and says so
    again = FolderDataModule(scenes, splits_path=splits_path, on_bad_file="skip")
    assert again.splits == dm.splits and again.skipped_files == dm.skipped_files


def test_skipped_files_reach_run_json_and_statistics_are_the_good_files(scenes: Path, tmp_path: Path) -> None:
    dm = FolderDataModule(scenes, on_bad_file="skip", batch_size=2)
    graph = Graph("rx_folder")
    graph.add_node(RXGlobal(), name="rx")
    result = graph.train(dm, {"trainer": {"max_epochs": 0, "accelerator": "cpu", "enable_progress_bar": False}},
                         run_dir=tmp_path / "run")
    record = read_run_json(result.run_dir)
    assert record["status"] == "completed"
    assert record["data"]["skipped_files"] == dm.skipped_files
    assert {s["file"] for s in record["data"]["skipped_files"]} == {TRUNCATED, OTHER_CHANNELS}
    pixels = _good_pixels(scenes)
    rx = graph.nodes["rx"]
    np.testing.assert_allclose(rx.mean.numpy(), pixels.mean(0), rtol=1e-12)
    inverse = np.linalg.inv(np.cov(pixels, rowvar=False))
    np.testing.assert_allclose(rx.covariance_inverse.numpy(), inverse, rtol=1e-6, atol=1e-9 * np.abs(inverse).max())


def test_skip_other_wavelengths_and_other_bad_bands(tmp_path: Path) -> None:
    root = tmp_path / "wl"
    root.mkdir()
    bbl = np.array([0, 1, 1, 1])
    for i in range(3):
        np.savez(root / f"s{i}.npz", data=_cube(i), wavelengths=WAVELENGTHS, bbl=bbl)
    np.savez(root / "shifted.npz", data=_cube(5), wavelengths=WAVELENGTHS + 5.0, bbl=bbl)
    np.savez(root / "other_bbl.npz", data=_cube(6), wavelengths=WAVELENGTHS, bbl=np.array([1, 0, 1, 1]))
    with pytest.raises(ReaderError, match="flags other bad bands"):
        FolderDataModule(root, drop_bad_bands=True).data_spec()
    dm = FolderDataModule(root, drop_bad_bands=True, on_bad_file="skip")
    dm.data_spec()
    reasons = {s["file"]: s["reason"] for s in dm.skipped_files}
    assert set(reasons) == {"shifted.npz", "other_bbl.npz"}
    assert "flags other bad bands than 4 of 5 files" in reasons["other_bbl.npz"]
    assert "wavelengths differ from those of 3 of 4 files" in reasons["shifted.npz"]
    assert "max difference 5 nm" in reasons["shifted.npz"]
    assert dm.n_channels == 3 and np.array_equal(dm.wavelengths, WAVELENGTHS[1:].astype(np.float32))
    assert sorted(dm.splits["train"]) == ["s0.npz", "s1.npz", "s2.npz"]


def test_non_finite_values_still_fail_when_read_in_skip_mode(tmp_path: Path) -> None:
    root = tmp_path / "nan"
    root.mkdir()
    for i in range(2):
        np.savez(root / f"s{i}.npz", data=_cube(i))
    cube = _cube(3)
    cube[1, 2, 0] = np.nan
    np.savez(root / "s2.npz", data=cube)
    dm = FolderDataModule(root, on_bad_file="skip")
    dm.setup("fit")
    assert dm.skipped_files == []  # the scan reads headers only
    with pytest.raises(ReaderError, match=r"s2\.npz: .*non-finite"):
        for i in range(len(dm.train_set)):
            dm.train_set[i]


# -- through the CLI ---------------------------------------------------------------------------
def _train(scenes: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUVIS_GRAPH_DDP")}
    return subprocess.run(
        [str(CLI), "train", str(ROOT / "pipelines" / "rx_statistical.yaml"), "data.type=FolderDataModule",
         "~data.params", f"+data.params.folder={scenes}", "+data.params.batch_size=2",
         "training.trainer.accelerator=cpu", "training.trainer.enable_progress_bar=false", *extra,
         "--runs-dir", str(tmp_path / "runs")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_cli_train_skips_bad_files_and_records_them(scenes: Path, tmp_path: Path) -> None:
    failed = _train(scenes, tmp_path)
    assert failed.returncode != 0
    assert f"{TRUNCATED}: truncated" in failed.stdout + failed.stderr

    proc = _train(scenes, tmp_path, "+data.params.on_bad_file=skip")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"{TRUNCATED}: skipped" in output and f"{OTHER_CHANNELS}: skipped" in output
    runs = sorted((tmp_path / "runs" / "rx_statistical").iterdir())
    record = read_run_json(runs[-1])
    assert record["status"] == "completed"
    assert [s["file"] for s in record["data"]["skipped_files"]] == [TRUNCATED, OTHER_CHANNELS]
    model = Graph.load(runs[-1] / "model")
    pixels = _good_pixels(scenes)
    lo, hi = pixels.min(0), pixels.max(0)  # the normalizer's fitted range, over the good files only
    assert torch.equal(model.nodes["norm"].min, torch.as_tensor(lo, dtype=torch.float32))
    assert torch.equal(model.nodes["norm"].max, torch.as_tensor(hi, dtype=torch.float32))
