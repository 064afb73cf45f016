"""Fault catalogue: saved models, prediction and export.

Each case plants one fault (a broken model folder, a planted link, a hostile input, an
interrupted write) and asserts the exit status, the one error line naming the place, and
that nothing outside the folders the command may write changed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal
from safetensors.torch import load_file, save_file

import cuvis_graph.io.output_paths as output_paths
from cuvis_graph import Graph, GraphDataModule, Node, PortSpec
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.export import ExportError, export_onnx
from cuvis_graph.io.prediction import predict_files
from cuvis_graph.io.saving import ModelFormatError, load_graph, save_graph

from .conftest import TreeSnapshot, cli

C = 6
WAVELENGTHS = np.linspace(450.0, 700.0, C)
MODEL_FILES = ["meta.json", "pipeline.yaml", "weights.safetensors"]


def cube(h: int = 8, w: int = 9, seed: int = 0, c: int = C) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2.0 * np.eye(c)
    return (rng.normal(size=(h * w, c)) @ mixing * 20.0 + 1000.0).reshape(h, w, c).astype(np.float32)


def fitted(name: str = "rx", seed: int = 0) -> Graph:
    graph = Graph(name)
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    data = np.stack([cube(seed=seed + i) for i in range(3)])
    dm = GraphDataModule.from_arrays(data, wavelengths=WAVELENGTHS, batch_size=2)
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}},
                run_dir=False)
    return graph


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_graph(fitted(), tmp_path_factory.mktemp("models") / "model")


@pytest.fixture
def model(saved: Path, workdir: Path) -> Path:
    """A fresh copy of the saved model inside the working directory."""
    return Path(shutil.copytree(saved, workdir / "model"))


@pytest.fixture
def scene(workdir: Path) -> Path:
    path = workdir / "scenes" / "good.npy"
    path.parent.mkdir()
    np.save(path, cube(10, 11, seed=7))
    return path


def tensors(graph: Graph) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": t for n, obj in graph.nodes.items() for k, t in obj.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def summary_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {Path(row["file"]).name: row for row in csv.DictReader(fh)}


def predict(model: Path, capsys: pytest.CaptureFixture[str], *args: object):
    return cli(["predict", model, *args, "--no-progress"], capsys)


# -- a broken model folder is refused at load, naming the file and field -----------------------------------
def edit_meta(model: Path, **fields: object) -> None:
    meta = json.loads((model / "meta.json").read_text())
    meta.update(fields)
    (model / "meta.json").write_text(json.dumps(meta))


def refused_at_load(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str], *parts: str) -> None:
    """``predict`` with the broken model fails naming ``parts``; nothing is written anywhere."""
    np.save(workdir / "in.npy", cube())
    snapshot = TreeSnapshot(workdir)
    predict(model, capsys, workdir / "in.npy", "--out", workdir / "out").fails_naming(*parts)
    snapshot.assert_unchanged()


def test_model_folder_missing_meta_json(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (model / "meta.json").unlink()
    refused_at_load(model, workdir, capsys, str(model), "missing meta.json")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_file_that_is_a_symlink_is_refused(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str],
                                                 name: str) -> None:
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    os.replace(model / name, elsewhere / name)
    (model / name).symlink_to(elsewhere / name)
    refused_at_load(model, workdir, capsys, str(model / name), "symbolic link")


@pytest.mark.parametrize(("content", "named"), [("{not json", "not valid JSON"),
                                                ('["a", "list"]', "expected a JSON object")])
def test_meta_json_garbage(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str], content: str,
                           named: str) -> None:
    (model / "meta.json").write_text(content)
    refused_at_load(model, workdir, capsys, str(model / "meta.json"), named)


@pytest.mark.parametrize(("field", "value"), [("n_channels", "six"), ("n_channels", True), ("n_channels", -3),
                                              ("format", "someone-elses-model"), ("format_version", "1"),
                                              ("wavelengths", ["450", "500"]), ("library_version", 7),
                                              ("fitted", ["norm"])])
def test_meta_json_field_of_the_wrong_type(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str],
                                           field: str, value: object) -> None:
    edit_meta(model, **{field: value})
    refused_at_load(model, workdir, capsys, str(model / "meta.json"), f"{field}:")


def test_wavelength_count_disagrees_with_channel_count(model: Path, workdir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    edit_meta(model, wavelengths=[450.0, 500.0])
    refused_at_load(model, workdir, capsys, "meta.json", "wavelengths: 2 values for n_channels 6")


def test_nan_and_inf_weights_are_named_with_their_count(model: Path, workdir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    weights = load_file(model / "weights.safetensors")
    key = next(k for k, t in weights.items() if t.is_floating_point() and t.numel() >= 3)
    weights[key].view(-1)[:2] = torch.tensor([float("nan"), float("inf")], dtype=weights[key].dtype)
    save_file(weights, model / "weights.safetensors")
    refused_at_load(model, workdir, capsys, str(model / "weights.safetensors"), key, f"(2 of {weights[key].numel()})")


def test_weight_of_another_dtype_is_named_with_both(model: Path, workdir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    weights = load_file(model / "weights.safetensors")
    key = next(k for k, t in weights.items() if t.dtype == torch.float64)
    weights[key] = weights[key].to(torch.float16)
    save_file(weights, model / "weights.safetensors")
    refused_at_load(model, workdir, capsys, "weights.safetensors", key, "torch.float16", "torch.float64")


def test_weight_of_another_shape_is_named_with_both(model: Path, workdir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    weights = load_file(model / "weights.safetensors")
    key = next(k for k, t in weights.items() if t.ndim == 1 and t.numel() == C)
    weights[key] = torch.zeros(C + 2, dtype=weights[key].dtype)
    save_file(weights, model / "weights.safetensors")
    # sized at fit time, the tensor is empty in a fresh graph: a probe run on C channels finds it
    refused_at_load(model, workdir, capsys, "weights.safetensors", key, f"{key} [{C + 2}]", f"{C}-channel input")


def test_truncated_weights_file_is_named(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (model / "weights.safetensors").read_bytes()
    (model / "weights.safetensors").write_bytes(data[: len(data) // 2])
    refused_at_load(model, workdir, capsys, str(model / "weights.safetensors"), "truncated or corrupt")


def test_weights_of_another_model_are_named(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Graph("other")
    other.add_node(RXGlobal(), name="solo")
    data = np.stack([cube(seed=i) for i in range(2)])
    other.train(GraphDataModule.from_arrays(data, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}}, run_dir=False)
    other_dir = save_graph(other, workdir / "other")
    shutil.copyfile(other_dir / "weights.safetensors", model / "weights.safetensors")
    refused_at_load(model, workdir, capsys, str(model / "weights.safetensors"), "missing key", "rx.",
                    "unexpected key", "solo.")


def test_model_path_that_is_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "model.zip").write_bytes(b"PK not a folder")
    refused_at_load(workdir / "model.zip", workdir, capsys, str(workdir / "model.zip"), "is a file")


# -- saving is atomic at every instant ----------------------------------------------------------------
class Killed(BaseException):
    """The process dies here (nothing after it runs, not even the rollback)."""


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_save_killed_at_each_rename_leaves_a_complete_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           exchange: bool, kill_at: int) -> None:
    target = save_graph(fitted("old", seed=0), tmp_path / "model")
    old = tensors(load_graph(target))
    new_graph = fitted("new", seed=5)
    new = tensors(new_graph)
    assert not all(torch.equal(old[k], new[k]) for k in old)  # the two models differ
    calls = {"n": 0}
    real_replace, real_exchange = os.replace, output_paths._exchange

    def step() -> None:
        calls["n"] += 1
        if calls["n"] >= kill_at:
            raise Killed

    def replace(a, b):
        step()
        real_replace(a, b)

    def swap(a, b):
        if not exchange:
            return False
        step()
        return real_exchange(a, b)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(output_paths, "_exchange", swap)
    with contextlib.suppress(Killed):
        save_graph(new_graph, target)
    monkeypatch.undo()
    try:
        loaded = tensors(load_graph(target))
    except ModelFormatError as exc:  # only between two plain renames, and then the way back is named
        assert not exchange and kill_at == 2
        assert "was interrupted" in str(exc) and ".model.old-" in str(exc)
        return
    assert_same_tensors(loaded, new if calls["n"] < kill_at else old)


def test_failed_predict_keeps_the_earlier_prediction(model: Path, scene: Path, workdir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert predict(model, capsys, scene, "--out", out).rc == 0
    np.save(workdir / "scenes" / "second.npy", cube(6, 7, seed=9))
    snapshot = TreeSnapshot(workdir)

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cuvis_graph.io.prediction._write_summary", full)
    predict(model, capsys, workdir / "scenes", "--out", out).fails_naming("No space left on device")
    snapshot.assert_unchanged()  # the earlier results, their summary, no staging folder beside them


def test_predict_replaces_an_earlier_prediction_whole(model: Path, scene: Path, workdir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert predict(model, capsys, scene, "--out", out).rc == 0
    other = workdir / "other.npy"
    np.save(other, cube(5, 5, seed=3))
    assert predict(model, capsys, other, "--out", out).rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["other", "summary.csv"]  # no result of the first run
    assert list(summary_rows(out / "summary.csv")) == ["other.npy"]
    assert sorted(p.name for p in workdir.iterdir()) == ["model", "other.npy", "out", "scenes"]


# -- predict --out never writes through a planted link -------------------------------------------------
def test_out_folder_that_is_a_symlink(model: Path, scene: Path, workdir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "elsewhere").mkdir()
    (workdir / "out").symlink_to(workdir / "elsewhere")
    snapshot = TreeSnapshot(workdir)
    predict(model, capsys, scene, "--out", workdir / "out").fails_naming(str(workdir / "out"), "symbolic link")
    snapshot.assert_unchanged()


def test_summary_csv_planted_as_a_symlink(model: Path, scene: Path, workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    precious = workdir / "precious.txt"
    precious.write_text("keep me")
    (workdir / "out").mkdir()
    (workdir / "out" / "summary.csv").symlink_to(precious)
    snapshot = TreeSnapshot(workdir)
    predict(model, capsys, scene, "--out", workdir / "out").fails_naming("summary.csv", "symbolic link")
    snapshot.assert_unchanged()


def test_scores_planted_as_a_symlink_replaces_the_link_not_its_target(model: Path, scene: Path, workdir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert predict(model, capsys, scene, "--out", out).rc == 0
    precious = workdir / "precious.npy"
    np.save(precious, np.arange(4))
    before = precious.read_bytes()
    (out / "good" / "scores.npy").unlink()
    (out / "good" / "scores.npy").symlink_to(precious)
    snapshot = TreeSnapshot(workdir)
    assert predict(model, capsys, scene, "--out", out).rc == 0
    snapshot.assert_unchanged(allowed=("out",))
    assert precious.read_bytes() == before
    scores = out / "good" / "scores.npy"
    assert not scores.is_symlink()
    expected = load_graph(model).predict(torch.from_numpy(np.load(scene)), output="rx")[..., 0].numpy()
    np.testing.assert_array_equal(np.load(scores), expected)


def test_out_folder_of_the_user_is_not_replaced(model: Path, scene: Path, workdir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "out").mkdir()
    (workdir / "out" / "notes.txt").write_text("mine")
    snapshot = TreeSnapshot(workdir)
    predict(model, capsys, scene, "--out", workdir / "out").fails_naming(str(workdir / "out"), "not empty")
    snapshot.assert_unchanged()


def test_out_folder_inside_the_model(model: Path, scene: Path, workdir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = TreeSnapshot(workdir)
    predict(model, capsys, scene, "--out", model / "preds").fails_naming(str(model / "preds"), "saved model folder")
    snapshot.assert_unchanged()


# -- prediction inputs ----------------------------------------------------------------------------------
def test_nan_and_inf_pixels_are_a_per_file_error(model: Path, scene: Path, workdir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = cube(6, 6, seed=2)
    bad[1, 2, 3], bad[4, 0, 0], bad[5, 5, 5] = np.nan, np.inf, -np.inf
    np.save(workdir / "scenes" / "holes.npy", bad)
    snapshot = TreeSnapshot(workdir)
    outcome = predict(model, capsys, workdir / "scenes", "--out", workdir / "out")
    outcome.fails_naming("1 of 2 input(s) could not be scored", str(workdir / "scenes" / "holes.npy"), rc=2)
    expected = f"3 of {bad.size} values are NaN or infinite (first at pixel y=1, x=2, band 3)"
    assert expected in outcome.err and str(workdir / "scenes" / "holes.npy") in outcome.err
    rows = summary_rows(workdir / "out" / "summary.csv")
    assert rows["holes.npy"]["status"] == "error" and expected in rows["holes.npy"]["error"]
    assert rows["good.npy"]["status"] == "ok" and (workdir / "out" / "good" / "scores.npy").is_file()
    assert not (workdir / "out" / "holes").exists()
    snapshot.assert_unchanged(allowed=("out",))


def test_wavelengths_other_than_the_model_are_a_per_file_error(model: Path, scene: Path, workdir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    shifted = WAVELENGTHS.copy()
    shifted[2:] += np.array([3.0, 1.0, 0.0, 12.5])
    np.savez(workdir / "scenes" / "shifted.npz", cube=cube(5, 6), wavelengths=shifted)
    np.savez(workdir / "scenes" / "same.npz", cube=cube(5, 6), wavelengths=WAVELENGTHS.copy())
    snapshot = TreeSnapshot(workdir)
    outcome = predict(model, capsys, workdir / "scenes", "--out", workdir / "out")
    outcome.fails_naming("1 of 3 input(s) could not be scored", str(workdir / "out" / "summary.csv"), rc=2)
    rows = summary_rows(workdir / "out" / "summary.csv")
    message = rows["shifted.npz"]["error"]
    assert rows["shifted.npz"]["status"] == "error" and str(workdir / "scenes" / "shifted.npz") in message
    assert f"band 2 is at {shifted[2]:g} nm, the model was trained at {WAVELENGTHS[2]:g} nm" in message
    assert "max difference 12.5 nm" in message and message in outcome.err
    assert rows["same.npz"]["status"] == "ok" and rows["good.npy"]["status"] == "ok"
    snapshot.assert_unchanged(allowed=("out",))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_threshold_is_a_usage_error(model: Path, scene: Path, workdir: Path, value: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = TreeSnapshot(workdir)
    outcome = predict(model, capsys, scene, "--out", workdir / "out", f"--threshold={value}")
    assert outcome.rc == 2 and "Traceback" not in outcome.err
    assert "argument --threshold: expected a finite number" in outcome.err
    snapshot.assert_unchanged()
    with pytest.raises(CuvisGraphError, match="threshold must be a finite number"):
        predict_files(load_graph(model), [scene], workdir / "out", threshold=float(value), progress=False)
    snapshot.assert_unchanged()


def test_predict_on_an_empty_folder(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty").mkdir()
    snapshot = TreeSnapshot(workdir)
    outcome = predict(model, capsys, workdir / "empty", "--out", workdir / "out")
    outcome.fails_naming("no input could be scored")
    assert f"{workdir / 'empty'}: folder holds no cube files" in outcome.out
    snapshot.assert_unchanged(allowed=("out",))
    assert summary_rows(workdir / "out" / "summary.csv")["empty"]["status"] == "error"


def test_predict_on_a_folder_with_no_readable_input(model: Path, workdir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = workdir / "broken"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"\x93NUMPY garbage")
    (folder / "b.npy").write_bytes(b"")
    snapshot = TreeSnapshot(workdir)
    outcome = predict(model, capsys, folder, "--out", workdir / "out")
    outcome.fails_naming("no input could be scored")
    rows = summary_rows(workdir / "out" / "summary.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"a.npy": "error", "b.npy": "error"}
    assert all(str(folder / k) in r["error"] for k, r in rows.items())
    snapshot.assert_unchanged(allowed=("out",))


# -- export --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["weights.safetensors", "meta.json", "model.onnx", "link", "."])
def test_export_never_writes_into_the_model(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str],
                                            where: str) -> None:
    target = model / where
    if where == "link":
        target = workdir / "link.onnx"
        target.symlink_to(model / "weights.safetensors")
    snapshot = TreeSnapshot(workdir)
    cli(["export", model, "-o", target], capsys).fails_naming(str(target), "saved model folder")
    snapshot.assert_unchanged()
    assert sorted(p.name for p in model.iterdir()) == MODEL_FILES


def test_export_into_a_missing_folder(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = TreeSnapshot(workdir)
    cli(["export", model, "-o", workdir / "nope" / "m.onnx"], capsys).fails_naming(
        str(workdir / "nope"), "does not exist")
    snapshot.assert_unchanged()


def test_export_over_a_file_of_the_user(model: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "report.onnx").write_text("my notes, not a model")
    snapshot = TreeSnapshot(workdir)
    cli(["export", model, "-o", workdir / "report.onnx"], capsys).fails_naming(
        str(workdir / "report.onnx"), "not an ONNX model")
    snapshot.assert_unchanged()


class _NaNScore(Node):
    """log of a negative number: NaN in eager and in ONNX alike."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 2.0)


def test_onnx_parity_counts_nan_as_a_mismatch(workdir: Path) -> None:
    graph = Graph("nan")
    graph.add_node(_NaNScore(), name="broken")
    snapshot = TreeSnapshot(workdir)
    with pytest.raises(ExportError, match=r"output 'broken' is not finite .*onnx \d+, eager \d+ NaN/Inf"):
        export_onnx(graph, workdir / "m.onnx", n_channels=C)
    snapshot.assert_unchanged()


def test_export_over_an_earlier_export_replaces_it(model: Path, workdir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    target = workdir / "model.onnx"  # the default: beside the model folder, never inside it
    assert cli(["export", model], capsys).rc == 0
    first = onnx.load(str(target))
    snapshot = TreeSnapshot(workdir)
    assert cli(["export", model, "-o", target, "--opset", "18"], capsys).rc == 0
    snapshot.assert_unchanged(allowed=("model.onnx",))
    assert first.opset_import[0].version == 17 and onnx.load(str(target)).opset_import[0].version == 18
    assert sorted(p.name for p in model.iterdir()) == MODEL_FILES


def test_predict_never_deletes_an_input_inside_the_out_folder(model: Path, scene: Path, workdir: Path, capsys):
    """Replacing --out whole would delete an input that lies inside it."""
    out = workdir / "predictions"
    assert cli(["predict", model, scene, "--out", out], capsys).rc == 0
    inside = out / "good" / "mine.npy"
    shutil.copy(scene, inside)
    before = TreeSnapshot(workdir)
    cli(["predict", model, inside, "--out", out], capsys).fails_naming(str(out), "holds the input", "mine.npy")
    before.assert_unchanged()


@pytest.mark.parametrize("out", ["", "."])
def test_predict_out_empty_or_the_working_folder(out: str, model: Path, scene: Path, workdir: Path, capsys):
    before = TreeSnapshot(workdir)
    outcome = cli(["predict", model, scene, "--out", out], capsys)
    outcome.fails_naming("out folder")
    before.assert_unchanged()


def test_cubes_in_sub_folders_are_named_and_taken_with_recursive(model: Path, workdir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """B16: a folder input takes its own cube files; those in sub-folders are counted in a note,
    and ``--recursive`` scores them too, into result folders that keep the sub-folder (two
    ``a.npy`` in different folders, and a file named like a sub-folder, never share one)."""
    scenes = workdir / "scenes"
    layout = {"a.npy": 1, "sub.npy": 2, "sub/a.npy": 3, "sub/b.npy": 4, "sub/subsub/c.npy": 5}
    for rel, seed in layout.items():
        (scenes / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(scenes / rel, cube(6, 7, seed=seed))
    snapshot = TreeSnapshot(workdir)
    flat = predict(model, capsys, scenes, "--out", workdir / "flat")
    assert flat.rc == 0, flat.err
    in_subfolders = sum(1 for rel in layout if "/" in rel)
    assert "scored 2 of 2" in flat.out
    assert f"note: {in_subfolders} cube file(s) in sub-folders" in flat.out and "--recursive" in flat.out
    snapshot.assert_unchanged(allowed=("flat",))

    deep = predict(model, capsys, scenes, "--out", workdir / "deep", "--recursive")
    assert deep.rc == 0, deep.err
    assert f"scored {len(layout)} of {len(layout)}" in deep.out and "note:" not in deep.out
    with (workdir / "deep" / "summary.csv").open(newline="") as fh:
        outputs = {Path(row["file"]).relative_to(scenes).as_posix(): Path(row["output"]) for row in csv.DictReader(fh)}
    assert outputs.keys() == layout.keys()
    assert len(set(outputs.values())) == len(layout)  # one result folder each
    folders = list(outputs.values())
    assert not any(a in b.parents for a in folders for b in folders)  # never one inside another's
    graph = load_graph(model)
    for rel, folder in outputs.items():
        assert folder.is_relative_to(workdir / "deep" / Path(rel).parent)  # the sub-folder is kept
        expected = graph.predict(torch.from_numpy(np.load(scenes / rel)), output="rx")[..., 0].numpy()
        np.testing.assert_array_equal(np.load(folder / "scores.npy"), expected)
    snapshot.assert_unchanged(allowed=("flat", "deep"))
