"""SIGTERM that lands where Python cannot raise: inside a weakref callback or ``__del__``.

The interpreter prints such an exception ("Exception ignored in ...") and goes on; Lightning
then stops at its next batch with a ``SystemExit`` of code 0. The run must still end as
``terminated`` with exit status 143, never as ``failed`` (or worse, exit 0).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cuvis_graph.errors import ConfigError
from cuvis_graph.io.run_resume import open_run
from cuvis_graph.io.runs import RunSession, Terminated, read_run_json
from cuvis_graph.train.lightning import GraphModule

from .conftest import PIPELINES, QUIET, TINY_SYNTHETIC, TreeSnapshot, cli

TRAIN = ["train", PIPELINES / "selector_rx_bce.yaml", *TINY_SYNTHETIC, *QUIET, "nodes.selector.params.n_select=3",
         "training.trainer.accelerator=cpu", "--runs-dir", "runs"]


class _SigtermOnCollect:
    """Sends SIGTERM to this process from ``__del__``, where a raised exception is only printed."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next instruction: still in __del__


@pytest.fixture
def swallowed(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """The exceptions the interpreter swallowed (instead of printing them)."""
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
    return seen


def test_sigterm_swallowed_mid_training_still_stops_the_run_as_terminated(workdir, capsys, monkeypatch, swallowed):
    step = GraphModule.training_step
    calls = []

    def training_step(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == 3:
            _SigtermOnCollect()  # collected at once: SIGTERM inside __del__
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GraphModule, "training_step", training_step)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=1000"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    assert [type(e) for e in swallowed] == [Terminated]  # the case under test did happen
    assert outcome.rc == 143, outcome.err[-2000:]
    assert "terminated by SIGTERM" in outcome.err and "Traceback" not in outcome.err
    assert read_run_json(run_dir)["status"] == "terminated"
    assert len(calls) <= 4  # stopped at the next batch, not 1000 epochs later
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_run_stopped_by_systemexit_after_a_swallowed_sigterm_is_terminated(tmp_path, swallowed):
    run = open_run("p", root=tmp_path)
    with pytest.raises(Terminated, match=f"--resume {run.path}"), RunSession(run):
        _SigtermOnCollect()
        assert [type(e) for e in swallowed] == [Terminated]
        raise SystemExit  # what Lightning raises on its own SIGTERM flag (code None: exit status 0)
    assert read_run_json(run.path)["status"] == "terminated"


def test_a_resume_is_announced_once(workdir, capsys, caplog):
    assert cli([*TRAIN, "training.trainer.max_epochs=1"], capsys).rc == 0
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    caplog.clear()
    outcome = cli([*TRAIN, "training.trainer.max_epochs=2", "--resume", run_dir], capsys)
    assert outcome.rc == 0, outcome.err
    assert [r.getMessage() for r in caplog.records].count(
        f"resuming run {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'}") == 1
    assert read_run_json(run_dir)["epochs"] == 2


def _log(run_dir):
    """``(stage, step, epoch, temperature)`` of every line of the run's ``metrics.jsonl``."""
    lines = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(j["stage"], j["step"], j["metrics"].get("epoch"), j["metrics"].get("train/selector/temperature"))
            for j in lines]


def test_extending_a_completed_run_continues_its_epochs_as_an_uninterrupted_run(workdir, tmp_path, capsys):
    """A completed 1-epoch run resumed to 3 epochs trains epochs 2 and 3 (the selector's temperature
    schedule at epochs 1 and 2, steps counted on), ending where a 3-epoch run ends."""
    deterministic = "training.trainer.deterministic=true"
    assert cli([*TRAIN, "training.trainer.max_epochs=3", deterministic, "--runs-dir", tmp_path / "ref"], capsys).rc == 0
    (reference,) = (tmp_path / "ref" / "selector_rx_bce").iterdir()
    assert cli([*TRAIN, "training.trainer.max_epochs=1", deterministic], capsys).rc == 0
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    resumed = cli([*TRAIN, "training.trainer.max_epochs=3", deterministic, "--resume", run_dir], capsys)
    assert resumed.rc == 0, resumed.err
    assert _log(run_dir) == _log(reference)
    temperatures = [t for stage, *_, t in _log(reference) if t is not None]
    assert len(set(temperatures)) == 3  # the schedule moved every epoch: the comparison can tell
    ours, theirs = (load_file(d / "model" / "weights.safetensors") for d in (run_dir, reference))
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: ConfigError("training.stages: refused")])
def test_an_attempt_stopped_before_it_started_leaves_no_run_folder(stop, workdir, capsys, monkeypatch):
    """Ctrl-C (or an error) after the run folder was made but before the attempt started (while the
    graph is checked): no orphan folder holding only pipeline.yaml, and the error names no run."""
    from cuvis_graph.train import entry

    def stopped(*args, **kwargs):
        raise stop()

    monkeypatch.setattr(entry, "compile_graph", stopped)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=1"], capsys)
    assert outcome.rc == (130 if stop is KeyboardInterrupt else 1)
    assert list((workdir / "runs" / "selector_rx_bce").iterdir()) == []
    assert "runs/selector_rx_bce/" not in outcome.err
    mine = workdir / "mine"
    mine.mkdir()  # a folder the user made for the run stays
    assert cli([*TRAIN, "training.trainer.max_epochs=1", "--run-dir", mine], capsys).rc == outcome.rc
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_sigterm_before_the_attempt_started_exits_143_and_leaves_no_run_folder(workdir, capsys, monkeypatch):
    from cuvis_graph.train import entry
    check = entry.compile_graph

    def terminated(*args, **kwargs):
        # (without a handler here the signal would end pytest itself)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "SIGTERM is not handled yet"
        os.kill(os.getpid(), signal.SIGTERM)  # while the graph is checked: the folder exists, no session yet
        return check(*args, **kwargs)

    monkeypatch.setattr(entry, "compile_graph", terminated)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=1"], capsys)
    assert outcome.rc == 143 and "terminated" in outcome.err and "Traceback" not in outcome.err
    assert list((workdir / "runs" / "selector_rx_bce").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_during_predict_exits_143_and_leaves_the_output_as_it_was(workdir, capsys, monkeypatch):
    """SIGTERM stops ``predict`` the way Ctrl-C does: the unfinished output folder is removed, an
    earlier output stays as it was, exit status 143."""
    from cuvis_graph.data import readers
    from cuvis_graph.io.saving import save_graph

    from .test_models import cube, fitted

    model = save_graph(fitted(), workdir / "model")
    scenes = workdir / "scenes"
    scenes.mkdir()
    for i in range(3):
        np.save(scenes / f"s{i}.npy", cube(seed=10 + i))
    out = workdir / "out"
    assert cli(["predict", model, scenes / "s0.npy", "--out", out, "--no-progress"], capsys).rc == 0
    earlier = TreeSnapshot(workdir)
    original, calls = readers.read_cube, []

    def read_cube(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # (without a handler here the signal would end pytest itself)
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "SIGTERM is not handled"
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(readers, "read_cube", read_cube)
    outcome = cli(["predict", model, scenes, "--out", out, "--no-progress"], capsys)
    assert outcome.rc == 143 and "terminated" in outcome.err and "Traceback" not in outcome.err
    assert len(calls) == 2
    assert TreeSnapshot(workdir).entries == earlier.entries  # the earlier output as it was, nothing unfinished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_refused_second_train_into_a_run_folder_leaves_its_pipeline_file_alone(workdir, capsys):
    """``--run-dir`` of an existing run with another pipeline is refused, and the run's
    pipeline.yaml still holds the pipeline it was trained with (it is written once the attempt
    is accepted, never before)."""
    run_dir = workdir / "mine"
    assert cli([*TRAIN, "training.trainer.max_epochs=1", "--run-dir", run_dir], capsys).rc == 0
    before = (run_dir / "pipeline.yaml").read_text()
    assert "n_select: 3" in before
    other = cli([*TRAIN, "training.trainer.max_epochs=1", "nodes.selector.params.n_select=4", "--run-dir", run_dir],
                capsys)
    other.fails_naming("n_select: 3 -> 4", "train a new run (into another --run-dir)")
    assert (run_dir / "pipeline.yaml").read_text() == before


def test_run_dir_naming_a_file_or_someone_elses_folder_is_refused_and_left_alone(workdir, capsys):
    """``--run-dir`` of a file, or of a folder holding files that are not a run's (the user's own
    config.yaml would be overwritten), is refused naming it and what it holds; nothing changes."""
    (workdir / "notes.txt").write_text("mine")
    theirs = workdir / "experiment"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("my: own config\n")
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "--run-dir", workdir / "notes.txt"], capsys).fails_naming(
        f"run folder {workdir / 'notes.txt'}: is a file")
    cli([*TRAIN, "--run-dir", theirs], capsys).fails_naming(
        f"run folder {theirs}: holds files that are not a run's (config.yaml)")
    assert TreeSnapshot(workdir).entries == before.entries


def test_a_sweep_stopped_by_sigterm_leaves_a_summary_that_says_where_it_stopped(workdir, capsys, monkeypatch):
    step = GraphModule.training_step
    calls = []

    def training_step(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == 2:  # the first job, mid-training
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GraphModule, "training_step", training_step)
    outcome = cli(["train", "-m", *TRAIN[1:], "training.trainer.max_epochs=50", "training.seed=1,2"], capsys)
    assert outcome.rc == 143 and "terminated by SIGTERM" in outcome.err
    (sweep,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    with (sweep / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "terminated"), ("1", "pending")]
    assert read_run_json(sweep / "000")["status"] == "terminated" and not (sweep / "001").exists()
