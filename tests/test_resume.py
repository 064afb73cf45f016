"""Resume: a run killed with SIGKILL during epoch 3 and resumed from ``last.ckpt`` ends
bit-identical to an uninterrupted 6-epoch run (weights, optimizer-driven metrics, log)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from runs_helpers import build_graph, config, datamodule, kill_when_marked

from cuvis_graph import Graph
from cuvis_graph.io.runs import read_run_json
from cuvis_graph.train.callbacks import AtomicCheckpointIO

HERE = Path(__file__).parent


def _state(graph) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, node in graph.nodes.items() for k, v in node.state_dict().items()}


def _metric_lines(run_dir: Path) -> list[tuple[str, int, dict]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(d["stage"], d["step"], d["metrics"]) for d in lines]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    graph = build_graph()
    result = graph.train(datamodule(), config(6), run_dir=run_dir)
    return graph, result, run_dir


def test_kill_during_epoch_3_then_resume_is_bit_exact(straight, tmp_path):
    graph0, result0, run0 = straight
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    kill_when_marked(HERE / "resume_child.py", run_dir, marker)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # nobody wrote an end state
    assert read_run_json(run_dir)["status"] == "killed"  # ... and the reader tells the truth
    killed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (killed["epoch"], killed["global_step"]) == (1, 4)  # end of epoch 2 (0-based epoch 1)

    graph = build_graph()
    result = graph.train(datamodule(), config(6), resume=run_dir)  # stale lock of the killed child is replaced
    assert result.fit.passes == 0  # statistics came from the checkpoint
    assert result.metrics == result0.metrics
    assert result.trainer.global_step == result0.trainer.global_step == 12
    s0, s1 = _state(graph0), _state(graph)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), (key, (s0[key] - s1[key]).abs().max(), (s0[key] != s1[key]).nonzero())
    record = read_run_json(run_dir)
    assert record["status"] == "completed"
    assert [a["status"] for a in record["attempts"]] == ["killed", "completed"]
    assert [h["status"] for h in record["history"]][-3:] == ["killed", "running", "completed"]
    assert record["attempts"][1]["resumed_from"].endswith("last.ckpt")
    assert record["initial_metrics"] == read_run_json(run0)["initial_metrics"]
    assert [(s, st, m) for s, st, m in _metric_lines(run_dir)] == _metric_lines(run0)
    print(f"\nkill/resume: killed at epoch 3 (last.ckpt epoch={killed['epoch']} step={killed['global_step']}); "
          f"final val/loss straight={result0.metrics['val/loss']!r} resumed={result.metrics['val/loss']!r}; "
          f"{len(s0)} tensors equal")


def test_resume_auto_finds_latest_run_and_no_checkpoint_starts_fresh(tmp_path, caplog):
    root = tmp_path / "runs"
    first = build_graph().train(datamodule(), config(2), runs_root=root)
    resumed = build_graph().train(datamodule(), config(3), runs_root=root, resume="auto")
    assert resumed.run_dir == first.run_dir
    assert resumed.trainer.current_epoch == 3 and resumed.fit.passes == 0
    with caplog.at_level("WARNING", logger="cuvis_graph"):
        fresh = build_graph("other").train(datamodule(), config(1), runs_root=root, resume="auto")
    assert fresh.fit.passes > 0 and fresh.run_dir.parent.name == "other"
    assert any("no checkpoint found" in r.message for r in caplog.records)


def test_interrupted_checkpoint_write_keeps_previous_last_ckpt(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.arange(1000.0)}, path)

    def half_then_die(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the writer is interrupted mid-file

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


class _CtrlCAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)


def _selector_graph() -> Graph:
    """norm -> Gumbel soft selector -> trainable RX -> logit head, BCE."""
    from cuvis_graph import nodes

    graph = Graph("selector_rx")
    norm = graph.add_node(nodes.MinMaxNormalizer(), name="norm")
    sel = graph.add_node(nodes.SoftChannelSelector(n_select=6, gumbel=True, temperature_decay=0.7), parent=norm,
                         name="sel")
    rx = graph.add_node(nodes.RXGlobal(trainable_stats=True), parent=sel, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    return graph


def test_ctrl_c_then_resume_with_gumbel_selector_is_bit_exact(tmp_path):
    """Gumbel noise draws from the global RNG and the temperature is annealed per epoch:
    both must continue exactly where the interrupted run stopped."""
    straight = _selector_graph()
    r0 = straight.train(datamodule(), config(4), run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _selector_graph().train(datamodule(), config(4), run_dir=tmp_path / "b", callbacks=[_CtrlCAtEpoch(2)])
    assert read_run_json(tmp_path / "b")["status"] == "interrupted"
    resumed = _selector_graph()
    r1 = resumed.train(datamodule(), config(4), resume=tmp_path / "b")
    assert r1.fit.passes == 0 and r1.metrics == r0.metrics
    s0, s1 = _state(straight), _state(resumed)
    assert float(s1["sel.current_temperature"]) < 5.0
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
