"""Atomic files (cuvis_graph.io.atomic): every writer of the package leaves the old file whole
when its rename fails, and no temporary file behind; readers never see half a file."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cuvis_graph import Graph, GraphDataModule
from cuvis_graph.io import output_paths
from cuvis_graph.io.atomic import (
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

ROOT = Path(__file__).resolve().parents[1]


# -- the writers ----------------------------------------------------------------------------------
def _graph(version: int) -> Graph:
    from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

    graph = Graph("atomic")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=10.0 ** -(3 + version)), parent=norm, name="rx")
    return graph


@functools.cache
def _fitted(version: int) -> Graph:
    """``_graph(version)`` with its statistics from 4 scenes ``[6, 7, 5]`` of seed ``version``."""
    cubes = np.random.default_rng(version).normal(size=(4, 6, 7, 5)).astype(np.float32)
    graph = _graph(version)
    graph.train(GraphDataModule.from_arrays(cubes, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}}, run_dir=False)
    return graph


def _run_json(folder: Path, version: int) -> Path:
    from cuvis_graph.io.runs import Run

    run = Run(folder / "run", "pipeline")
    run.record["metrics"] = {"val/loss": float(version)}
    run.save()
    return run.path / "run.json"


def _trimmed_metrics(folder: Path, version: int) -> Path:
    from cuvis_graph.io.runs import Run

    run = Run(folder, "pipeline")
    if not run.metrics_path.exists():
        run.metrics_path.write_text("".join(json.dumps({"step": s, "metrics": {}}) + "\n" for s in range(6)))
    run.trim_metrics(after_step=4 - 2 * version)
    return run.metrics_path


def _traceback(folder: Path, version: int) -> Path:
    from cuvis_graph.io.runs import Run

    return Run(folder, "pipeline").write_traceback(ValueError(f"failure {version}"))


def _run_config(folder: Path, version: int) -> Path:
    from cuvis_graph.io.run_config import write_run_config

    return write_run_config(folder, {"trainer": {"max_epochs": version}}, {"name": "pipeline"})


def _stage_state(folder: Path, version: int) -> Path:
    from cuvis_graph.train.stage_state import StageState

    state = StageState(folder, ["warmup", "main"])
    state.record_statistics(passes=version, levels=[["norm"]], batches=2)
    return state.path


def _checkpoint(folder: Path, version: int) -> Path:
    from cuvis_graph.train.callbacks import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((3,), float(version))}},
                                         folder / "last.ckpt")
    return folder / "last.ckpt"


def _pipeline_yaml(folder: Path, version: int) -> Path:
    from cuvis_graph.io.spec import graph_to_yaml

    graph_to_yaml(_graph(version), folder / "pipeline.yaml")
    return folder / "pipeline.yaml"


def _splits(folder: Path, version: int) -> Path:
    from cuvis_graph.data.splits import write_splits_file

    return write_splits_file(folder / "splits.json", {"train": [f"scene_{version}.npy"], "val": [], "test": []})


def _figure(folder: Path, version: int) -> Path:
    import matplotlib.pyplot as plt

    from cuvis_graph.monitors.file import FileMonitor

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, version + 1])
    try:
        monitor = FileMonitor(root=folder)
        monitor.log_artifact(fig, "scores", step=3, stage="val")
    finally:
        plt.close(fig)
    return monitor.artifacts[-1]


def _artifact_data(folder: Path, version: int) -> Path:
    from cuvis_graph.monitors.file import FileMonitor

    monitor = FileMonitor(root=folder)
    monitor.log_artifact_data({"threshold": float(version)}, "scores", step=3, stage="val")
    return monitor.artifacts[-1]


def _graph_png(folder: Path, version: int) -> Path:
    from cuvis_graph.core.plan import DataSpec
    from cuvis_graph.io.render import to_png

    graph = _graph(version)
    return Path(to_png(graph, graph.compile(DataSpec(n_channels=5 + version)), folder / "graph.png"))


def _scores_npy(folder: Path, version: int) -> Path:
    from cuvis_graph.io.prediction import _save_npy

    return _save_npy(folder / "scores.npy", np.full((2, 3), version, dtype=np.float32))


def _sweep_summary(folder: Path, version: int) -> Path:
    from cuvis_graph.cli.sweeps import SweepJob, write_summary

    return write_summary(folder, [SweepJob(0, [f"training.optimizer.lr={version}"], status="completed",
                                           metrics={"val/loss": float(version)})])


def _nodes_catalog(folder: Path, version: int) -> Path:
    from cuvis_graph.cli.app import main

    target = folder / "nodes.txt"
    rc = main(["nodes", "-o", str(target), *(["--markdown"] if version else [])])
    if rc:
        raise OSError(f"cuvis-graph nodes exited with {rc}")
    return target


def _train_predictions(folder: Path, version: int) -> Path:
    from cuvis_graph.cli.train_commands import _save_predictions

    cubes = np.random.default_rng(version).normal(size=(2, 6, 7, 5)).astype(np.float32)
    datamodule = GraphDataModule.from_arrays(cubes, batch_size=2, val_on_train=True)
    datamodule.setup("predict")
    path = _save_predictions(SimpleNamespace(graph=_fitted(0), datamodule=datamodule), folder)
    with np.load(path) as saved:
        assert saved["rx"].shape[:3] == (2, 6, 7)  # the scores of both scenes were written
    return path


def _onnx(folder: Path, version: int) -> Path:
    pytest.importorskip("onnx")
    from cuvis_graph.io.export import export_onnx_report

    target, _ = export_onnx_report(_fitted(version), folder / "model.onnx", check=False)
    return target


def _saved_model(folder: Path, version: int) -> Path:
    from cuvis_graph.io.saving import save_graph

    return save_graph(_graph(version), folder / "model")


WRITERS: dict[str, Callable[[Path, int], Path]] = {
    "atomic_write_text": lambda d, v: atomic_write_text(d / "a.txt", f"version {v}\n"),
    "atomic_write_bytes": lambda d, v: atomic_write_bytes(d / "a.bin", bytes([v]) * 64),
    "atomic_write_json": lambda d, v: atomic_write_json(d / "a.json", {"version": v}),
    "atomic_write": lambda d, v: atomic_write(d / "a.npy", lambda fh: np.save(fh, np.full(3, v))),
    "run.json": _run_json,
    "metrics.jsonl trimmed": _trimmed_metrics,
    "logs/traceback.txt": _traceback,
    "config.yaml": _run_config,
    "stage_state.json": _stage_state,
    "checkpoint": _checkpoint,
    "graph_to_yaml": _pipeline_yaml,
    "splits.json": _splits,
    "monitor figure": _figure,
    "monitor artifact data": _artifact_data,
    "show png": _graph_png,
    "predict scores.npy": _scores_npy,
    "sweep summary.csv": _sweep_summary,
    "nodes -o": _nodes_catalog,
    "train predictions.npz": _train_predictions,
    "onnx export": _onnx,
    "saved model folder": _saved_model,
}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(writer: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write = WRITERS[writer]
    target = write(tmp_path, 0)
    before = _files(tmp_path)
    assert before, "the writer wrote nothing"

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device (rename refused)")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(output_paths, "_exchange", refuse)  # the one other rename: swapping whole folders
    with pytest.raises(OSError, match="rename refused|exited with 1"):
        write(tmp_path, 1)
    monkeypatch.undo()
    assert _files(tmp_path) == before  # the old version, byte for byte, and nothing beside it

    write(tmp_path, 1)  # the same write, renames allowed: the file does change (the check above can fail)
    after = _files(tmp_path)
    assert after.keys() == before.keys(), "a temporary file was left behind"
    changed = [k for k in after if after[k] != before[k]]
    rel = target.relative_to(tmp_path).as_posix()
    assert changed and all(k == rel or k.startswith(rel + "/") for k in changed), changed


def test_an_exception_inside_the_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "report.csv", "a,b\n1,2\n")

    def half(fh) -> None:
        fh.write(b"a,b\n3,")
        raise RuntimeError("the data ran out")

    with pytest.raises(RuntimeError, match="ran out"):
        atomic_write(target, half)
    assert _files(tmp_path) == {"report.csv": b"a,b\n1,2\n"}


def test_atomic_path_suffix_and_refused_json(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "sub" / "model.onnx", suffix=".onnx") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".model.onnx.tmp-") and tmp.suffix == ".onnx"
        tmp.write_bytes(b"onnx")
    assert _files(tmp_path) == {"sub/model.onnx": b"onnx"}
    atomic_write_json(tmp_path / "m.json", {"loss": 1.5})
    with pytest.raises(ValueError, match="Out of range float"):  # NaN is not JSON: refused, old file kept
        atomic_write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"loss": 1.5}
    assert sorted(_files(tmp_path)) == ["m.json", "sub/model.onnx"]


# -- concurrent readers ---------------------------------------------------------------------------
_WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    target, mode, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    from cuvis_graph.io.atomic import atomic_write_json
    for i in range(rounds):
        data = {"round": i, "values": [i] * 40000}
        if mode == "atomic":
            atomic_write_json(target, data)
        else:  # written in place, in two pieces, as a plain open(..., "w") may
            text = json.dumps(data, indent=2) + "\\n"
            with open(target, "w") as fh:
                fh.write(text[: len(text) // 2])
                fh.flush()
                time.sleep(0.002)
                fh.write(text[len(text) // 2:])
""")


def _read_while_written(target: Path, mode: str, rounds: int) -> tuple[int, int, set[int]]:
    """Start a writer process rewriting ``target`` ``rounds`` times; read it meanwhile. Returns
    (complete reads, partial reads, rounds seen)."""
    atomic_write_json(target, {"round": -1, "values": []})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), mode, str(rounds)], env=env)
    complete = partial = 0
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while writer.poll() is None and time.monotonic() < deadline:
        try:
            data = json.loads(target.read_text())
        except ValueError:
            partial += 1
            continue
        assert data["values"] == [data["round"]] * len(data["values"])
        complete += 1
        seen.add(data["round"])
    writer.wait(timeout=30)
    assert writer.returncode == 0
    return complete, partial, seen


def test_concurrent_readers_never_see_a_partial_json(tmp_path: Path) -> None:
    complete, partial, seen = _read_while_written(tmp_path / "run.json", "atomic", rounds=150)
    assert partial == 0
    assert complete > 0 and len(seen) > 1  # the reader did overlap the rewrites
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_the_reader_detects_a_write_in_place(tmp_path: Path) -> None:
    """The control of the test above: the same reader does see half files of an in-place writer."""
    _, partial, _ = _read_while_written(tmp_path / "run.json", "in-place", rounds=150)
    assert partial > 0
