"""``cuvis-graph train`` with stages: the staged pipeline runs its stages, ``--resume``
continues the run (a completed staged run is not trained again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stages_helpers import PIPELINE, TINY

from cuvis_graph.cli.app import main
from cuvis_graph.io.runs import read_run_json


def test_cli_trains_stages_and_resume_continues_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    overrides = [*TINY, "training.stages.1.max_epochs=1", "training.stages.2.max_epochs=1"]
    assert main(["validate", str(PIPELINE), *overrides]) == 0
    assert "in stages statistics (0) -> selector (1) -> finetune (1)" in capsys.readouterr().out
    assert main(["train", str(PIPELINE), *overrides, "--runs-dir", str(runs)]) == 0
    (run_dir,) = (runs / "selector_rx_staged").iterdir()
    state = json.loads((run_dir / "stage_state.json").read_text())
    assert state["completed_stages"] == ["statistics", "selector", "finetune"]

    capsys.readouterr()
    # a completed run has nothing to resume: said so, nothing written (see tests/faults/test_runs.py)
    assert main(["train", str(PIPELINE), *overrides, "--runs-dir", str(runs), "--resume", "auto"]) == 1
    assert f"run {run_dir}: already completed" in capsys.readouterr().err
    assert list((runs / "selector_rx_staged").iterdir()) == [run_dir]  # the same run, no new one
    assert json.loads((run_dir / "stage_state.json").read_text()) == state  # nothing trained again
    record = read_run_json(run_dir)
    assert [a["status"] for a in record["attempts"]] == ["completed"]


def test_cli_resume_and_multirun_are_refused_together(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-m", str(PIPELINE), "training.seed=1,2", "--resume", "auto",
                 "--runs-dir", str(tmp_path)]) == 1
    assert "cannot be combined with -m" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_trained_run_holds_a_model_that_cli_predict_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np
    import torch

    from cuvis_graph import Graph

    runs = tmp_path / "runs"
    overrides = [*TINY, "training.stages.1.max_epochs=1", "training.stages.2.max_epochs=1"]
    assert main(["train", str(PIPELINE), *overrides, "--runs-dir", str(runs)]) == 0
    (run_dir,) = (runs / "selector_rx_staged").iterdir()
    assert f"model: {run_dir / 'model'}" in capsys.readouterr().out
    assert read_run_json(run_dir)["model"] == "model"
    cube = np.random.default_rng(0).uniform(size=(16, 16, 12)).astype(np.float32)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "scene.npy", cube)
    assert main(["predict", str(run_dir / "model"), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    scores = np.load(tmp_path / "out" / "scene" / "scores.npy")
    expected = Graph.load(run_dir / "model").predict(torch.from_numpy(cube), output="head")
    assert np.array_equal(scores, expected[..., 0].numpy())
