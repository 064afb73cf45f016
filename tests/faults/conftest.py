"""The fault catalogue's harness: run a command, check its one-line error, prove nothing else changed.

Every case in ``tests/faults/`` asserts three things:

* the exit status;
* the message: exactly one ``error: ...`` line on stderr (a warning line may precede it), no
  traceback, naming the place (file, YAML field, node, port);
* nothing outside the folders the command may write was created or changed
  (:class:`TreeSnapshot` before and after).

Cases run the CLI in-process through :func:`cli` (fast); those that need a process of their
own (kill -9, SIGTERM, concurrent runs) use :func:`cli_process`, the real ``cuvis-graph``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cuvis_graph.cli.app import main

TINY_SYNTHETIC = ["data.params.n_train=2", "data.params.n_val=1", "data.params.n_test=0",
                  "data.params.height=8", "data.params.width=8", "data.params.n_bands=6",
                  "data.params.batch_size=1"]
QUIET = ["training.trainer.enable_progress_bar=false"]
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@dataclass
class Outcome:
    """What a command did: exit status, stdout, stderr."""

    rc: int
    out: str
    err: str

    def error_line(self) -> str:
        """The single ``error:`` line; fails the test when there are none or several, or a traceback."""
        assert "Traceback" not in self.err, self.err[-3000:]
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, f"expected one 'error:' line, got {len(lines)}:\n{self.err[-3000:]}"
        assert len(lines[0]) < 2000, f"error line of {len(lines[0])} characters"
        return lines[0]

    def fails_naming(self, *parts: str, rc: int = 1) -> str:
        """Assert exit status ``rc`` and one error line containing every part; return the line."""
        assert self.rc == rc, f"exit status {self.rc}, expected {rc}\nstdout:\n{self.out[-2000:]}\nstderr:\n{self.err[-3000:]}"
        line = self.error_line()
        for part in parts:
            assert part in line, f"{part!r} not in {line!r}"
        return line


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Run ``cuvis-graph ARGS`` in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(rc, captured.out, captured.err)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a real ``cuvis-graph`` process: headless, offline, no colour."""
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}
    return env


CLI_COMMAND = [sys.executable, "-c", "import sys; from cuvis_graph.cli.app import main; sys.exit(main())"]


def cli_process(args: list[str], cwd: Path, timeout: float = 240, **popen: object) -> Outcome:
    """Run the real ``cuvis-graph ARGS`` as its own process (for signals and concurrency)."""
    done = subprocess.run([*CLI_COMMAND, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)
    return Outcome(done.returncode, done.stdout, done.stderr)


class TreeSnapshot:
    """Every file and folder under ``root`` with its size and content hash (symlinks as their target)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.entries = self._scan()

    def _scan(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            base = Path(dirpath)
            for name in dirnames + filenames:
                path = base / name
                rel = str(path.relative_to(self.root))
                if path.is_symlink():
                    entries[rel] = "link:" + os.readlink(path)
                elif path.is_dir():
                    entries[rel] = "dir"
                else:
                    entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        return entries

    def changes(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Paths created, removed or changed since the snapshot, outside the ``allowed`` prefixes."""
        now = self._scan()
        changed = sorted({k for k in self.entries.keys() | now.keys() if self.entries.get(k) != now.get(k)})
        return [c for c in changed if not any(c == a or c.startswith(a.rstrip("/") + "/") for a in allowed)]

    def assert_unchanged(self, allowed: tuple[str, ...] = ()) -> None:
        """Fail naming every path created, removed or changed outside ``allowed``."""
        changes = self.changes(allowed)
        assert not changes, f"changed outside the allowed folders under {self.root}: {changes[:20]}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for the command, inside the test's tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work
