"""A new user's first commands: seeing the composed config before running anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cuvis_graph.cli import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "selector_rx_bce.yaml"


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("command", ["train", "validate", "show"])
def test_cfg_job_prints_the_composed_pipeline_and_runs_nothing(command: str, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, str(PIPELINE), "training=fast", "nodes.selector.params.n_select=7", "--cfg", "job"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    fast = yaml.safe_load((ROOT / "pipelines" / "training" / "fast.yaml").read_text())
    assert printed["nodes"]["selector"]["params"]["n_select"] == 7  # the override
    assert printed["training"]["trainer"]["max_epochs"] == fast["trainer"]["max_epochs"]  # the group
    assert printed["name"] == "selector_rx_bce"
    assert files_under(tmp_path) == []  # nothing written: no run folder, no picture


def test_cfg_job_with_a_sweep_prints_every_job(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", str(PIPELINE), "nodes.selector.params.n_select=3,5", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    jobs = [yaml.safe_load(part) for part in out.split("# job ")[1:]]
    assert [j["nodes"]["selector"]["params"]["n_select"] for j in jobs] == [3, 5]
    assert files_under(tmp_path) == []


def test_cfg_job_reports_a_bad_override_naming_it(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(PIPELINE), "nodes.selector.params.n_select=3=4", "--cfg", "job"]) == 1
    assert "override 'nodes.selector.params.n_select=3=4'" in capsys.readouterr().err
