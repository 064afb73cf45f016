"""Run directory layout, run.json lifecycle, failures, Ctrl-C, lock file, callbacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from runs_helpers import BrokenMonitor, RecordingMonitor, build_graph, config, datamodule

from cuvis_graph import VisualizationNode
from cuvis_graph.io.atomic import atomic_write_json
from cuvis_graph.io.run_lock import RunLock, RunLockedError
from cuvis_graph.io.runs import read_run_json


class StatusSpy(pl.Callback):
    """Reads run.json from disk while training runs."""

    def __init__(self, run_dir) -> None:
        self.run_dir, self.seen = run_dir, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen.append(read_run_json(self.run_dir)["status"])


def test_run_directory_layout_and_statuses(tmp_path):
    run_dir = tmp_path / "run"
    spy = StatusSpy(run_dir)
    result = build_graph().train(datamodule(), config(2), run_dir=run_dir, callbacks=[spy])
    assert result.run_dir == run_dir and spy.seen == ["running", "running"]
    record = read_run_json(run_dir)
    assert [h["status"] for h in record["history"]] == ["pending", "running", "completed"]
    assert record["metrics"]["val/loss"] == pytest.approx(result.metrics["val/loss"])
    assert record["best"]["monitor"] == "val/loss" and record["best"]["checkpoint"] == "checkpoints/best.ckpt"
    assert record["started_at"] <= record["ended_at"] and record["failures"] == []
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["training"]["trainer"]["max_epochs"] == 2
    assert list(cfg["pipeline"]["nodes"]) == ["norm", "rx", "head"]
    assert "torch" in cfg["versions"] and "git_commit" in cfg
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x["stage"] == "train") == 2
    assert (run_dir / "logs" / "training.log").read_text().count("completed") == 1
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert "graph_nodes.rx.mean" in ckpt["state_dict"]
    assert not (run_dir / "lock").exists()
    assert not [p for p in run_dir.rglob(".*tmp*")]


def test_default_run_dir_under_runs_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUVIS_GRAPH_RUNS_ROOT", raising=False)
    result = build_graph("defaults").train(datamodule(), config(0))
    assert result.run_dir.parent == tmp_path / "runs" / "defaults"
    assert len(result.run_dir.name) == len("20250101_120000_123")
    assert read_run_json(result.run_dir)["status"] == "completed"
    none = build_graph("nothing").train(datamodule(), config(0), run_dir=False)
    assert none.run_dir is None and not (tmp_path / "runs" / "nothing").exists()
    monkeypatch.setenv("CUVIS_GRAPH_RUNS_ROOT", str(tmp_path / "elsewhere"))
    moved = build_graph("defaults").train(datamodule(), config(0))
    assert moved.run_dir.parent == tmp_path / "elsewhere" / "defaults"


def test_save_top_k_keeps_disk_bounded(tmp_path):
    run_dir = tmp_path / "run"
    build_graph().train(datamodule(), config(4, checkpoint={"save_top_k": 2}), run_dir=run_dir)
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(files) == 3 and "last.ckpt" in files and all(f.startswith("epoch=") for f in files if f != "last.ckpt")


class Explode(pl.Callback):
    """Raises inside the model's training step hook chain at epoch 2 (a model error)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            pl_module.training_step = _boom


def _boom(*args, **kwargs):
    raise FloatingPointError("loss is NaN")


def test_model_exception_marks_failed_with_traceback_and_keeps_last_ckpt(tmp_path):
    run_dir = tmp_path / "run"
    graph = build_graph()
    with pytest.raises(FloatingPointError):
        graph.train(datamodule(), config(3), run_dir=run_dir, callbacks=[Explode()])
    record = read_run_json(run_dir)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "FloatingPointError" and "NaN" in record["error"]["message"]
    assert "FloatingPointError: loss is NaN" in (run_dir / "logs" / "traceback.txt").read_text()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and not (run_dir / "lock").exists()


class CtrlC(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_sigint_marks_interrupted_and_is_resumable(tmp_path):
    run_dir = tmp_path / "run"
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        build_graph().train(datamodule(), config(3), run_dir=run_dir, callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) is previous
    record = read_run_json(run_dir)
    assert record["status"] == "interrupted"
    result = build_graph().train(datamodule(), config(3), resume=run_dir)
    assert result.fit.passes == 0 and result.trainer.current_epoch == 3
    record = read_run_json(run_dir)
    assert record["status"] == "completed"
    assert [a["status"] for a in record["attempts"]] == ["interrupted", "completed"]


def test_failing_monitor_is_isolated(tmp_path):
    run_dir = tmp_path / "run"
    graph = build_graph()
    broken, recorder = BrokenMonitor(), RecordingMonitor()
    graph.register_monitor(broken)
    graph.register_monitor(recorder)
    result = graph.train(datamodule(), config(3), run_dir=run_dir)
    assert broken.calls == 1  # reported once, then skipped
    record = read_run_json(run_dir)
    assert record["status"] == "completed"
    assert record["failures"] == [{"name": "broken", "kind": "monitor", "error": "RuntimeError: backend unreachable"}]
    assert result.failures[0]["name"] == "broken"
    on_disk = [(x["stage"], x["step"], x["metrics"]) for x in map(json.loads, (run_dir / "metrics.jsonl").open())]
    assert recorder.metrics == on_disk and len(on_disk) == 1 + 2 * 3
    assert recorder.closed


class RaisingCallback(pl.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.calls += 1
        raise ValueError("callback bug")


def test_failing_user_callback_is_isolated(tmp_path):
    run_dir = tmp_path / "run"
    cb = RaisingCallback()
    build_graph().train(datamodule(), config(2), run_dir=run_dir, callbacks=[cb])
    record = read_run_json(run_dir)
    assert cb.calls == 1 and record["status"] == "completed"
    assert record["failures"][0]["kind"] == "callback" and "callback bug" in record["failures"][0]["error"]


def test_lock_refuses_live_owner_and_replaces_stale(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        atomic_write_json(run_dir / "lock", {"pid": sleeper.pid, "host": os.uname().nodename})
        with pytest.raises(RunLockedError, match=str(sleeper.pid)):
            build_graph().train(datamodule(), config(0), run_dir=run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    build_graph().train(datamodule(), config(0), run_dir=run_dir)  # the owner is gone: stale lock replaced
    assert read_run_json(run_dir)["status"] == "completed" and not (run_dir / "lock").exists()
    lock = RunLock(run_dir).acquire()
    with pytest.raises(RunLockedError):
        RunLock(run_dir).acquire()
    lock.release()


def test_callbacks_from_config(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(30, callbacks={"early_stopping": {"monitor": "val/loss", "patience": 0, "min_delta": 10.0},
                                "lr_monitor": True, "rich_progress_bar": True})
    cfg.trainer.gradient_clip_val = 1.0
    cfg.trainer.enable_progress_bar = True
    cfg.trainer.accumulate_grad_batches = 2
    result = build_graph().train(datamodule(), cfg, run_dir=run_dir)
    assert result.trainer.current_epoch < 30  # stopped early: no improvement of 10.0
    names = {type(c).__name__ for c in result.trainer.callbacks}
    assert {"EarlyStopping", "LearningRateMonitor", "RichProgressBar"} <= names
    assert any(isinstance(c, ModelCheckpoint) for c in result.trainer.callbacks)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("lr-") for x in lines for k in x["metrics"])


def test_bf16_mixed_precision_on_cpu(tmp_path):
    cfg = config(1)
    cfg.trainer.precision = "bf16-mixed"
    result = build_graph().train(datamodule(), cfg, run_dir=tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))


class BrokenFigure(VisualizationNode):
    def visualize(self, output, batch, parent):
        raise RuntimeError("cannot draw")


def test_failing_visualization_is_listed_in_run_json(tmp_path):
    graph = build_graph()
    graph.add_leaf_node(BrokenFigure(), parent="rx", name="broken_figure")
    graph.train(datamodule(), config(2), run_dir=tmp_path / "run")
    record = read_run_json(tmp_path / "run")
    assert record["status"] == "completed"
    assert record["failures"] == [{"name": "broken_figure", "kind": "visualization",
                                   "error": "RuntimeError: cannot draw"}]
