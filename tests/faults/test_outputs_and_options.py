"""Faults found by trying the commands as a careless user would: outputs over inputs, empty or
odd paths, trainer settings Lightning would only reject after a run folder exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cuvis_graph.data import FolderDataModule
from cuvis_graph.errors import ConfigError

from .conftest import PIPELINES, QUIET, TINY_SYNTHETIC, TreeSnapshot, cli
from .test_yaml_cli import BASE

PIPELINE = PIPELINES / "rx_statistical.yaml"


@pytest.fixture
def pipeline_copy(workdir: Path) -> Path:
    path = workdir / "mine.yaml"
    path.write_text(BASE)  # self-contained: no config groups beside it
    return path


@pytest.mark.parametrize("command", [["show"], ["show", "--format", "png"], ["show", "--format", "mermaid"]])
def test_show_never_writes_over_the_pipeline_it_reads(command, pipeline_copy: Path, tmp_path: Path, capsys) -> None:
    snapshot = TreeSnapshot(tmp_path)
    cli([command[0], pipeline_copy, *command[1:], "-o", pipeline_copy], capsys).fails_naming(
        "-o/--output", str(pipeline_copy), "is the file this command reads")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("command", [["show", str(PIPELINE)], ["show", str(PIPELINE), "--format", "png"], ["nodes"]])
def test_outputs_refuse_links_and_folders(command, workdir: Path, tmp_path: Path, capsys) -> None:
    target = workdir / "target.txt"
    target.write_text("the user's notes\n")
    (workdir / "link.txt").symlink_to(target)
    (workdir / "folder").mkdir()
    snapshot = TreeSnapshot(tmp_path)
    cli([*command, "-o", workdir / "link.txt"], capsys).fails_naming("link.txt", "symbolic link")
    cli([*command, "-o", workdir / "folder"], capsys).fails_naming("folder", "is a folder")
    cli([*command, "-o", ""], capsys).fails_naming("-o/--output", "empty path")
    snapshot.assert_unchanged()  # no stray temporary file beside the folder either


@pytest.mark.parametrize("command", [["show", str(PIPELINE)], ["show", str(PIPELINE), "--format", "png"], ["nodes"]])
def test_outputs_into_a_new_folder_are_written_whole(command, workdir: Path, capsys) -> None:
    out = workdir / "new" / "deeper" / "out.txt"
    outcome = cli([*command, "-o", out], capsys)
    assert outcome.rc == 0, outcome.err
    assert out.stat().st_size > 0 and [p.name for p in out.parent.iterdir()] == ["out.txt"]


def test_runs_dir_empty_is_a_usage_error_and_tilde_is_the_home_folder(workdir: Path, tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = TreeSnapshot(tmp_path)
    outcome = cli(["train", PIPELINE, *TINY_SYNTHETIC, *QUIET, "--runs-dir", ""], capsys)
    assert outcome.rc == 2 and "--runs-dir: an empty path" in outcome.err
    snapshot.assert_unchanged()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outcome = cli(["train", PIPELINE, *TINY_SYNTHETIC, *QUIET, "--runs-dir=~/runs"], capsys)
    assert outcome.rc == 0, outcome.err
    assert (tmp_path / "home" / "runs" / "rx_statistical").is_dir() and not (workdir / "~").exists()


def test_a_100k_character_override_key_is_echoed_short(workdir: Path, capsys) -> None:
    key = "a" * 100_000
    line = cli(["validate", PIPELINE, f"{key}=1"], capsys).fails_naming("unknown key")
    assert len(line) < 1000


@pytest.mark.parametrize(("override", "named"), [
    ("training.trainer.precision=banana", "unknown precision 'banana'"),
    ("training.trainer.devices=0", "devices 0"),
    ("training.trainer.limit_train_batches=-1", "a batch count >= 0"),
    ("training.trainer.accelerator=quantum", "unknown accelerator 'quantum'"),
])
def test_trainer_settings_are_checked_before_a_run_exists(override: str, named: str, workdir: Path, tmp_path: Path,
                                                          capsys) -> None:
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        cli([command, PIPELINE, *TINY_SYNTHETIC, *QUIET, override], capsys).fails_naming("training.trainer", named)
    snapshot.assert_unchanged()


def test_splits_path_that_is_a_folder_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        np.save(data / f"{name}.npy", np.ones((8, 8, 3), np.float32))
    (tmp_path / "splits").mkdir()
    snapshot = TreeSnapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"splits_path: '.*splits' is a folder"):
        FolderDataModule(data, val_fraction=0.5, splits_path=tmp_path / "splits")
    snapshot.assert_unchanged()


def test_the_same_file_twice_in_a_list_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match=r"same file more than once .*a\.npy.*leak"):
        FolderDataModule([tmp_path / "a.npy", tmp_path / "." / "a.npy"], val_fraction=0.5)
