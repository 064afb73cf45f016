"""File-based prediction: ``predict_files`` and ``cuvis-graph predict`` on .npy/.npz/.mat/ENVI inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.io
import torch
from cuvis_graph.nodes import BinaryDecider, MinMaxNormalizer, RXGlobal, RXLogitHead

from cuvis_graph import Graph, GraphDataModule
from cuvis_graph.cli.app import main
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.prediction import DEFAULT_QUANTILE, false_color, predict_files, score_outputs
from cuvis_graph.io.saving import load_graph, save_graph

C = 6
WAVELENGTHS = np.linspace(450.0, 700.0, C)


def cubes(n: int, h: int, w: int, c: int = C, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2.0 * np.eye(c)
    return (rng.normal(size=(n * h * w, c)) @ mixing * 20.0 + 1000.0).reshape(n, h, w, c).astype(np.float32)


def trained(graph: Graph) -> Graph:
    dm = GraphDataModule.from_arrays(cubes(4, 8, 9), wavelengths=WAVELENGTHS, batch_size=2)
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}},
                run_dir=False)
    return graph


def rx_graph(decider: float | None = None) -> Graph:
    graph = Graph("rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    if decider is not None:
        graph.add_node(BinaryDecider(threshold=decider), parent=rx, name="decide")
    return trained(graph)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_graph(rx_graph(), tmp_path / "model")


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """3 good .npy scenes, a corrupt .npy and a wrong-channel .npy in one folder."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, (h, w) in enumerate([(10, 12), (16, 16), (7, 20)]):
        np.save(folder / f"good{i}.npy", cubes(1, h, w, seed=10 + i)[0])
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY garbage, not an array")
    np.save(folder / "wrong.npy", cubes(1, 8, 8, c=C - 2, seed=3)[0])
    (folder / "notes.txt").write_text("not a cube")  # ignored: not a cube suffix
    return folder


def read_summary(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {Path(row["file"]).name: row for row in csv.DictReader(fh)}


def eager_scores(graph: Graph, cube: np.ndarray, node: str = "rx") -> np.ndarray:
    return graph.predict(torch.from_numpy(np.asarray(cube, dtype=np.float32)), output=node)[..., 0].numpy()


def test_cli_predict_folder_with_bad_files(model_dir: Path, scenes: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    mat = tmp_path / "scene.mat"
    mat_cube = (cubes(1, 9, 11, seed=7)[0]).astype(np.int16)
    scipy.io.savemat(mat, {"data": mat_cube, "map": np.zeros((9, 11), np.uint8)})
    out = tmp_path / "out"

    status = main(["predict", str(model_dir), str(scenes), str(mat), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()

    assert status == 2
    summary = read_summary(out / "summary.csv")
    assert str(out / "summary.csv") in captured.out
    assert set(summary) == {"good0.npy", "good1.npy", "good2.npy", "corrupt.npy", "wrong.npy", "scene.mat"}
    for bad in ("corrupt.npy", "wrong.npy"):
        assert summary[bad]["status"] == "error"
        assert str(scenes / bad) in summary[bad]["error"]
        assert str(scenes / bad) in captured.err
        assert not (out / Path(bad).stem).exists()
    assert f"model expects C={C} channels (wavelengths 450–700 nm), the data has {C - 2}" in summary["wrong.npy"]["error"]

    graph = load_graph(model_dir)
    inputs = {f"good{i}": np.load(scenes / f"good{i}.npy") for i in range(3)} | {"scene": mat_cube}
    for stem, cube in inputs.items():
        row = summary[f"{stem}.mat" if stem == "scene" else f"{stem}.npy"]
        assert row["status"] == "ok" and row["error"] == ""
        scores = np.load(out / stem / "scores.npy")
        expected = eager_scores(graph, cube)
        assert scores.dtype == np.float32 and scores.shape == cube.shape[:2]
        np.testing.assert_array_equal(scores, expected)
        # default mask: above the image's own 0.99 quantile (numpy reference)
        mask = np.load(out / stem / "mask.npy")
        np.testing.assert_array_equal(mask, (expected > np.quantile(expected, DEFAULT_QUANTILE)).astype(np.uint8))
        assert int(row["anomaly_pixels"]) == int(mask.sum()) >= 1
        assert row["shape"] == "x".join(map(str, cube.shape))
        for key, ref in (("score_min", expected.min()), ("score_mean", expected.astype(np.float64).mean()),
                         ("score_max", expected.max()), ("score_std", expected.astype(np.float64).std())):
            assert float(row[key]) == pytest.approx(float(ref), rel=1e-6)
        image = matplotlib.image.imread(out / stem / "overlay.png")
        assert image.shape[1] >= 900  # a readable figure, not a thumbnail (see test_figures_readable.py)
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave nothing behind


def test_threshold_and_explicit_files(model_dir: Path, tmp_path: Path) -> None:
    cube = cubes(1, 12, 10, seed=21)[0]
    np.savez(tmp_path / "a.npz", cube=cube, wavelengths=WAVELENGTHS)
    graph = load_graph(model_dir)
    expected = eager_scores(graph, cube)
    threshold = float(np.median(expected))
    summary = predict_files(graph, [tmp_path / "a.npz"], tmp_path / "out", threshold=threshold, progress=False)
    assert [r.status for r in summary.results] == ["ok"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a" / "mask.npy"), (expected > threshold).astype(np.uint8))
    assert summary.results[0].threshold == threshold
    assert summary.score_output == "rx.scores"


def test_decider_in_the_graph_gives_the_mask(tmp_path: Path) -> None:
    graph = rx_graph(decider=0.0)
    cube = cubes(1, 14, 9, seed=5)[0]
    scores = eager_scores(graph, cube)
    threshold = float(np.quantile(scores, 0.9))
    graph.nodes["decide"].threshold = threshold
    np.save(tmp_path / "s.npy", cube)
    assert score_outputs(graph, C) == (("rx", "scores"), ("decide", "decisions"))
    summary = predict_files(graph, [tmp_path / "s.npy"], tmp_path / "out", threshold=1e30, progress=False)
    assert summary.mask_source == "decider 'decide'"
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "s" / "scores.npy"), scores)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "s" / "mask.npy"), (scores > threshold).astype(np.uint8))


def test_score_output_is_the_last_per_pixel_score() -> None:
    graph = Graph("head")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    graph.add_node(RXLogitHead(), parent=rx, name="head")
    assert score_outputs(graph, C) == (("head", "logits"), None)
    assert score_outputs(graph, C, output="rx") == (("rx", "scores"), None)
    with pytest.raises(CuvisGraphError, match="no node 'rxx'.*did you mean 'rx'"):
        score_outputs(graph, C, output="rxx")
    only_norm = Graph("norm")
    only_norm.add_node(MinMaxNormalizer(), name="norm")
    with pytest.raises(CuvisGraphError, match=r"no per-pixel score output \[B,H,W,1\]"):
        score_outputs(only_norm, C)


def test_envi_input(model_dir: Path, tmp_path: Path) -> None:
    envi = pytest.importorskip("spectral.io.envi")
    cube = cubes(1, 11, 13, seed=8)[0]
    envi.save_image(str(tmp_path / "scene.hdr"), cube, dtype=np.float32, interleave="bil",
                    metadata={"wavelength": [str(w) for w in WAVELENGTHS]})
    graph = load_graph(model_dir)
    summary = predict_files(graph, [tmp_path / "scene.hdr"], tmp_path / "out", progress=False)
    assert summary.results[0].status == "ok", summary.results[0].error
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "scene" / "scores.npy"), eager_scores(graph, cube))


def test_missing_input_and_same_stems(model_dir: Path, tmp_path: Path) -> None:
    cube = cubes(1, 8, 8, seed=4)[0]
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "a.npy", cube)
    np.save(tmp_path / "x" / "a.npy", cube[::-1].copy())
    graph = load_graph(model_dir)
    summary = predict_files(graph, [tmp_path / "a.npy", tmp_path / "x" / "a.npy", tmp_path / "absent.npy"],
                            tmp_path / "out", progress=False)
    assert [r.status for r in summary.results] == ["ok", "ok", "error"]
    assert "absent.npy: no such file" in summary.results[2].error
    first, second = (np.load(r.output_dir / "scores.npy") for r in summary.results[:2])
    np.testing.assert_array_equal(first, eager_scores(graph, cube))
    np.testing.assert_array_equal(second, eager_scores(graph, cube[::-1].copy()))
    assert summary.results[0].output_dir != summary.results[1].output_dir


def test_false_color_picks_bands_by_wavelength() -> None:
    cube = np.zeros((4, 5, C), np.float32)
    for band in range(C):
        cube[..., band] = np.arange(20).reshape(4, 5) * (band + 1)
    rgb = false_color(cube, WAVELENGTHS)  # 450..700 nm: R=640, G=550, B=460 nearest
    assert rgb.shape == (4, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    wl = np.asarray(WAVELENGTHS)
    picks = [int(np.argmin(np.abs(wl - nm))) for nm in (640, 550, 460)]
    for i, band in enumerate(picks):
        ref = cube[..., band].astype(np.float64)
        lo, hi = np.percentile(ref, [2, 98])
        np.testing.assert_allclose(rgb[..., i], np.clip((ref - lo) / (hi - lo), 0, 1))


def test_cli_fatal_errors(tmp_path: Path, scenes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["predict", str(tmp_path / "nomodel"), str(scenes), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "no such model directory" in err and "Traceback" not in err
    model = save_graph(rx_graph(), tmp_path / "model")
    np.save(tmp_path / "only_wrong.npy", cubes(1, 8, 8, c=3)[0])
    status = main(["predict", str(model), str(tmp_path / "only_wrong.npy"), "--out", str(tmp_path / "o"),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "no input could be scored" in err
    assert read_summary(tmp_path / "o" / "summary.csv")["only_wrong.npy"]["status"] == "error"
