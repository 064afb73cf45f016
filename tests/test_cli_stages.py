"""``cuvis-graph train`` with stages: the staged pipeline runs its stages, ``--resume``
continues the run (a completed staged run is not trained again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stages_helpers import PIPELINE, TINY

from cuvis_graph.cli import main
from cuvis_graph.runs import read_run_json


def test_cli_trains_stages_and_resume_continues_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    overrides = [*TINY, "training.stages.1.max_epochs=1", "training.stages.2.max_epochs=1"]
    assert main(["validate", str(PIPELINE), *overrides]) == 0
    assert "in stages statistics (0) -> selector (1) -> finetune (1)" in capsys.readouterr().out
    assert main(["train", str(PIPELINE), *overrides, "--runs-dir", str(runs)]) == 0
    (run_dir,) = (runs / "selector_rx_staged").iterdir()
    state = json.loads((run_dir / "stage_state.json").read_text())
    assert state["completed_stages"] == ["statistics", "selector", "finetune"]

    assert main(["train", str(PIPELINE), *overrides, "--runs-dir", str(runs), "--resume", "auto"]) == 0
    assert list((runs / "selector_rx_staged").iterdir()) == [run_dir]  # the same run, no new one
    assert json.loads((run_dir / "stage_state.json").read_text()) == state  # nothing trained again
    record = read_run_json(run_dir)
    assert [a["status"] for a in record["attempts"]] == ["completed", "completed"]
    assert f"run directory: {run_dir}" in capsys.readouterr().out


def test_cli_resume_and_multirun_are_refused_together(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-m", str(PIPELINE), "training.seed=1,2", "--resume", "auto",
                 "--runs-dir", str(tmp_path)]) == 1
    assert "cannot be combined with -m" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
