"""Fault catalogue, data: what cannot be right in the files or arrays is refused where it enters.

Each case writes a tiny scene into ``tmp_path`` (``.npy``/``.npz``, ``.mat`` through
``scipy.io.savemat``, ENVI through ``spectral`` or a hand-written header) and trains on it
with ``cuvis-graph train`` and a ``FolderDataModule`` pipeline (or the Python API for
in-memory arrays). It asserts the exit status, the one error line naming the file (or
sample, or field) with the numbers, and that nothing outside the run folder changed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from spectral.io import envi

from cuvis_graph.data import FolderDataModule, GraphDataModule
from cuvis_graph.data.checks import DataError
from cuvis_graph.errors import CuvisGraphError

from .conftest import PIPELINES, TreeSnapshot, cli

C = 4
RX_NODES = {"rx": {"type": "RXGlobal", "params": {"eps": 1.0e-9}}}
RX_METRICS = {"metrics": {"type": "AnomalyDetectionMetrics", "params": {"from_logits": False}, "parent": "rx"}}


def scene(seed: int = 0, h: int = 8, w: int = 8, c: int = C) -> np.ndarray:
    """A well-conditioned ``[h, w, c]`` float32 cube."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(h * w, c)) @ (rng.normal(size=(c, c)) + 2 * np.eye(c)) + 50).reshape(h, w, c) \
        .astype(np.float32)


def anomalies(h: int = 8, w: int = 8) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[2, 3] = mask[5, 6] = 1
    return mask


def pipeline(tmp_path: Path, data: str | Path, *, nodes: dict | None = None, leaves: dict | None = None,
             max_epochs: int = 0, **params: object) -> Path:
    """A pipeline YAML training on ``data`` (a folder) with a FolderDataModule validated on the training files."""
    spec = {"name": "faults", "data": {"type": "FolderDataModule",
                                       "params": {"folder": str(data), "val_on_train": True, **params}},
            "training": {"trainer": {"max_epochs": max_epochs, "enable_progress_bar": False,
                                     "accelerator": "cpu"}},
            "nodes": nodes or RX_NODES, "leaves": RX_METRICS if leaves is None else leaves}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train(tmp_path: Path, capsys, *args: str, **kwargs: object):
    """``cuvis-graph train`` on ``tmp_path/scenes``: the outcome, after checking nothing but ``runs/`` changed."""
    path = pipeline(tmp_path, tmp_path / "scenes", **kwargs)
    snapshot = TreeSnapshot(tmp_path)
    outcome = cli(["train", path, "--runs-dir", tmp_path / "runs", *args], capsys)
    snapshot.assert_unchanged(allowed=("runs",))
    return outcome


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    return folder


# -- non-finite values ------------------------------------------------------------------------------
def test_nan_pixels_in_a_npy_file_name_the_file_and_count(tmp_path: Path, scenes: Path, capsys) -> None:
    cube = scene()
    cube[1, 2, 0] = cube[4, 4, 3] = np.nan
    cube[6, 1, 2] = np.inf
    np.save(scenes / "a.npy", cube)
    expected = int((~np.isfinite(cube)).sum())
    out = train(tmp_path, capsys, leaves={})
    out.fails_naming("a.npy", f"{expected} non-finite values", "2 NaN, 1 Inf", "[1, 2, 0]")


def test_inf_in_a_mat_file_names_the_file(tmp_path: Path, scenes: Path, capsys) -> None:
    cube = scene().astype(np.float64)
    cube[0, 0, 1] = 1e300  # finite in float64, +Inf in the float32 batch
    scipy.io.savemat(scenes / "s.mat", {"data": cube, "map": anomalies()})
    train(tmp_path, capsys).fails_naming("s.mat", "1 non-finite values", "0 NaN, 1 Inf")


def test_nan_in_a_mat_scene_datamodule_names_the_file(tmp_path: Path, capsys) -> None:
    cube = scene()
    cube[3, 3, :] = np.nan
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"data": cube, "map": anomalies()})
    snapshot = TreeSnapshot(tmp_path)
    out = cli(["train", PIPELINES / "rx_statistical.yaml", "data=abu_mat", f"data.params.path={path}",
               "training.trainer.enable_progress_bar=false", "--runs-dir", tmp_path / "runs"], capsys)
    out.fails_naming("scene.mat", "sample 0", f"{C} non-finite values")
    snapshot.assert_unchanged(allowed=("runs",))


def test_nan_in_memory_arrays_name_the_sample() -> None:
    cubes = np.stack([scene(0), scene(1), scene(2)])
    cubes[1, 0, 5, 2] = np.nan
    with pytest.raises(DataError, match=r"^sample 1: 1 non-finite values .*\[0, 5, 2\]"):
        GraphDataModule.from_arrays(cubes)


# -- byte order, header size ------------------------------------------------------------------------
def _envi(folder: Path, cube: np.ndarray, byteorder: int = 0) -> Path:
    header = folder / "s.hdr"
    envi.save_image(str(header), cube, ext=".img", interleave="bsq", byteorder=byteorder, force=True,
                    metadata={"wavelength": [str(w) for w in np.linspace(450, 750, cube.shape[-1])]})
    return header


def test_envi_wrong_byte_order_suggests_the_other(tmp_path: Path, scenes: Path, capsys) -> None:
    # values whose swapped bytes are NaN/Inf: 0x7f/0xff as the low byte (little endian).
    cube = np.full((8, 8, C), np.frombuffer(b"\x7f\x80\x20\x41", "<f4")[0], dtype="<f4")
    cube[::2] += 1.0  # (any small change keeps the low byte 0x7f)
    header = _envi(scenes, cube, byteorder=0)
    text = header.read_text().replace("byte order = 0", "byte order = 1")
    header.write_text(text)
    assert np.isfinite(cube).all() and not np.isfinite(cube.byteswap()).all()
    train(tmp_path, capsys, leaves={}).fails_naming("s.hdr", "non-finite values", "says 'byte order = 1'",
                                         "as 'byte order = 0' every value is finite")


@pytest.mark.parametrize("change", ["lines = 8", "lines = 9", "samples = 7"])
def test_envi_header_shape_not_matching_the_data_file(tmp_path: Path, scenes: Path, capsys, change: str) -> None:
    header = _envi(scenes, scene())
    key = change.split(" =")[0]
    text = "\n".join(change if line.startswith(key + " ") else line for line in header.read_text().splitlines())
    header.write_text(text + "\n")
    if change == "lines = 8":  # the header is right; the data file is too large
        with open(scenes / "s.img", "ab") as fh:
            fh.write(b"\0" * 16)
    size = (scenes / "s.img").stat().st_size
    described = {"lines = 8": 8 * 8, "lines = 9": 9 * 8, "samples = 7": 8 * 7}[change] * C * 4
    train(tmp_path, capsys, leaves={}).fails_naming("s.hdr", f"= {described} bytes", f"has {size} bytes")


# -- wavelengths -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("wavelengths", "words"), [
    ([450.0, np.nan, 650.0, 750.0], ("index 1", "nan")),
    ([450.0, 550.0, 550.0, 750.0], ("index 2", "duplicates index 1")),
    ([450.0, 650.0, 550.0, 750.0], ("not increasing", "index 2 (550 nm)")),
])
def test_bad_wavelengths_in_a_file_are_refused(tmp_path: Path, scenes: Path, capsys, wavelengths, words) -> None:
    np.savez(scenes / "w.npz", data=scene(), map=anomalies(), wavelengths=np.array(wavelengths))
    train(tmp_path, capsys).fails_naming("w.npz", *words)


def test_configured_wavelengths_not_increasing_name_the_field(tmp_path: Path, scenes: Path, capsys) -> None:
    np.savez(scenes / "w.npz", data=scene(), map=anomalies())
    out = train(tmp_path, capsys, wavelengths=[700.0, 600.0, 500.0, 400.0])
    out.fails_naming("data.params", "wavelengths", "not increasing", "index 1 (600 nm)")
    assert not (tmp_path / "runs").exists()


def test_bad_wavelengths_of_in_memory_arrays_are_refused() -> None:
    with pytest.raises(DataError, match=r"^wavelengths: wavelength at index 3 \(400 nm\) duplicates index 2"):
        GraphDataModule.from_arrays(scene(), anomalies(), wavelengths=[100.0, 200.0, 400.0, 400.0])


# -- masks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "shown"), [(0.5, "0.5"), (-1.0, "-1"), (np.nan, "nan")])
def test_mask_values_other_than_labels_are_refused(tmp_path: Path, scenes: Path, capsys, bad, shown) -> None:
    mask = anomalies().astype(np.float32)
    mask[0, :3] = bad
    np.savez(scenes / "m.npz", data=scene(), map=mask)
    train(tmp_path, capsys).fails_naming("m.npz", "3 pixels", f"({shown})", "0 = background")


def test_mask_of_in_memory_arrays_names_the_sample() -> None:
    masks = np.stack([anomalies(), anomalies()]).astype(np.int64)
    masks[1, 4, 4] = -3
    with pytest.raises(DataError, match=r"^sample 1: mask holds 1 pixels .*\(-3\)"):
        GraphDataModule.from_arrays(np.stack([scene(0), scene(1)]), masks)


def test_mask_with_class_ids_is_accepted(tmp_path: Path) -> None:
    """The documented rule: 0 = background, any positive integer = anomaly or class id (e.g. 255)."""
    mask = anomalies() * 255
    np.savez(tmp_path / "m.npz", data=scene(), map=mask)
    dm = FolderDataModule(tmp_path, val_on_train=True)
    dm.setup()
    np.testing.assert_array_equal(dm.train_set[0]["mask"].numpy(), mask.astype(np.int64))


# -- truncated files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npy", ".mat"])
def test_truncated_training_file_names_the_file(tmp_path: Path, scenes: Path, capsys, suffix: str) -> None:
    path = scenes / f"cut{suffix}"
    if suffix == ".npy":
        np.save(path, scene(h=16, w=16))
    else:
        scipy.io.savemat(path, {"data": scene(h=16, w=16), "map": anomalies(16, 16)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    train(tmp_path, capsys).fails_naming(f"cut{suffix}", "truncated")


def test_truncated_mat_scene_datamodule_names_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cut.mat"
    scipy.io.savemat(path, {"map": anomalies(16, 16), "data": scene(h=16, w=16)})  # the cube is cut
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    snapshot = TreeSnapshot(tmp_path)
    out = cli(["train", PIPELINES / "rx_statistical.yaml", "data=abu_mat", f"data.params.path={path}",
               "training.trainer.enable_progress_bar=false", "--runs-dir", tmp_path / "runs"], capsys)
    line = out.fails_naming("cut.mat", "truncated")
    assert "could not read bytes" not in line.split("cut.mat", 1)[0]
    snapshot.assert_unchanged(allowed=("runs",))


# -- integer range -----------------------------------------------------------------------------------
def test_integers_beyond_float32_range_warn_with_the_maximum(tmp_path: Path, scenes: Path, capsys,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cube = (scene() * 1000).astype(np.int64)
    cube[3, 3, 1] = 2 ** 24 + 3  # rounds to 2^24 + 4 in float32
    np.save(scenes / "big.npy", cube)
    with caplog.at_level(logging.WARNING):
        out = train(tmp_path, capsys, leaves={})
    assert out.rc == 0, out.err[-2000:]
    records = [r.getMessage() for r in caplog.records if "float32's exact range" in r.getMessage()]
    assert len(records) == 1, records
    assert "big.npy" in records[0] and str(2 ** 24 + 3) in records[0]


def test_in_range_integers_do_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    np.save(tmp_path / "ok.npy", (scene() * 100).astype(np.int32))
    dm = FolderDataModule(tmp_path)
    dm.setup()
    with caplog.at_level(logging.WARNING):
        item = dm.train_set[0]
    assert item["cube"].dtype.is_floating_point and not caplog.records


# -- a scene without anomalies ---------------------------------------------------------------------
def test_scene_without_anomalies_trains_with_undefined_metrics_as_null(tmp_path: Path, scenes: Path, capsys,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    np.savez(scenes / "clean.npz", data=scene(h=12, w=12), map=np.zeros((12, 12), np.uint8))
    nodes = {"norm": {"type": "MinMaxNormalizer"},
             "rx": {"type": "RXGlobal", "params": {"eps": 1.0e-6, "trainable_stats": True}, "parent": "norm"},
             "head": {"type": "RXLogitHead", "parent": "rx"}}
    leaves = {"bce": {"type": "AnomalyBCEWithLogits", "params": {"pos_weight": 5.0}, "parent": "head"},
              "metrics": {"type": "AnomalyDetectionMetrics", "parent": "head"}}
    with caplog.at_level(logging.WARNING):
        out = train(tmp_path, capsys, nodes=nodes, leaves=leaves, max_epochs=1)
    assert out.rc == 0, out.err[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed", record
    for key in ("val/metrics/auroc", "val/metrics/average_precision"):
        assert record["metrics"][key] is None, record["metrics"]
    assert record["metrics"]["val/metrics/specificity"] is not None
    assert np.isfinite(record["metrics"]["val/loss"])
    assert (run_dir / "model").is_dir() and any((run_dir / "model").iterdir())
    notes = [r.getMessage() for r in caplog.records if "undefined" in r.getMessage()]
    assert any("'auroc'" in n and "one class" in n and "0 anomalous and 144 background" in n for n in notes), notes


def test_errors_are_cuvis_graph_errors() -> None:
    """Data errors reach the CLI as one line (they are CuvisGraphError) and stay ValueErrors in Python."""
    assert issubclass(DataError, CuvisGraphError) and issubclass(DataError, ValueError)


def test_a_mask_of_another_shape_is_named_not_dropped(tmp_path: Path) -> None:
    from cuvis_graph.data import read_cube
    from cuvis_graph.data.readers import ReaderError

    path = tmp_path / "a.npz"
    np.savez(path, cube=np.ones((8, 8, 4), np.float32), mask=np.zeros((4, 4), np.uint8))
    with pytest.raises(ReaderError, match=r"a\.npz.*'mask' looks like the ground-truth mask but has shape \(4, 4\), "
                                          r"the cube 'cube' \(8, 8, 4\)"):
        read_cube(path)


def test_a_data_range_beyond_float32_is_named_at_the_normalizer(tmp_path: Path) -> None:
    """max - min of values near +-3e38 overflows float32: the normalizer says so, naming itself."""
    from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

    from cuvis_graph import Graph, TrainingConfig
    from cuvis_graph.core.statistics import StatisticsError
    from cuvis_graph.data import GraphDataModule

    rng = np.random.default_rng(0)
    cubes = (rng.uniform(-1, 1, (2, 8, 8, 4)) * 3e38).astype(np.float32)
    graph = Graph("huge")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(), parent=norm, name="rx")
    with pytest.raises(StatisticsError, match=r"node 'norm'.*overflows float32"):
        graph.train(GraphDataModule.from_arrays(cubes, batch_size=1), TrainingConfig(trainer={"max_epochs": 0}),
                    runs_root=tmp_path / "runs")
