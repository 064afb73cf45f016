"""The lock of a run directory: ``<run>/lock`` holds ``{"pid", "host", "since"}`` of the one
process training into it.

The lock is created with ``O_CREAT | O_EXCL`` (two processes cannot both create it), not
written atomically by rename: a rename would silently replace another owner's lock. A lock
whose process is gone (same host, PID not alive) or that cannot be read is stale and is
replaced with a warning; a live owner (or one on another host, where liveness cannot be
told) refuses the second process with :class:`RunLockedError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from cuvis_graph.errors import CuvisGraphError

__all__ = ["RunLock", "RunLockedError", "pid_alive", "owner_alive"]

log = logging.getLogger(__name__)


class RunLockedError(CuvisGraphError):
    """Another live process is training into this run directory."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the lock ``owner`` may still run: its PID lives here, or it is on another host."""
    return owner is not None and (owner.get("host") != socket.gethostname() or pid_alive(int(owner["pid"])))


class RunLock:
    """``<run>/lock`` holding the owner's PID and host (see the module doc)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / "lock"
        self.held = False

    def acquire(self) -> RunLock:
        since = _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner_alive(owner):
                    raise RunLockedError(
                        f"run directory {self.path.parent} is in use by process {owner.get('pid')} on "
                        f"{owner.get('host')} (lock file {self.path}); wait for it or train into a new run"
                    ) from None
                log.warning("removing stale lock %s (owner %s is gone)", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(info)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def owner(self) -> dict[str, Any] | None:
        """``{"pid", "host", "since"}`` of the lock file, ``None`` when absent or unreadable."""
        try:
            owner = json.loads(self.path.read_text())
            int(owner["pid"])
            return owner
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self.owner()
            if owner is None or int(owner["pid"]) == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
