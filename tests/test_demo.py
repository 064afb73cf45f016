"""``make demo`` prints commands that work as printed, with or without an activated venv."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cuvis_graph.cli import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("activated", [False, True])
def test_printed_cli_command_runs(activated: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = Path(sys.executable).parent
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() != bin_dir.resolve()]
    if activated:
        path.insert(0, str(bin_dir))
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.chdir(ROOT)
    command = demo.cli_command()
    assert (command == "cuvis-graph") is activated
    done = subprocess.run(f"{shlex.quote(command) if not activated else command} --version", shell=True,
                          capture_output=True, text=True, env={**os.environ, "PATH": os.pathsep.join(path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the version is printed"


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """``cuvis-graph nodes | head -0``: the reader is gone before anything is written."""
    child = subprocess.Popen([str(Path(sys.executable).parent / "cuvis-graph"), "nodes"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "MPLBACKEND": "Agg"})
    child.stdout.close()  # as `head` does once it has its lines
    err = child.stderr.read().decode()
    assert child.wait(120) == 0, err
    assert "BrokenPipe" not in err and "Traceback" not in err, err
