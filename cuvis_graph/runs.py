"""Run directories: layout, ``run.json`` lifecycle, lock file, resume.

Layout of one run (``<root>/<pipeline-name>/<YYYYMMDD_HHMMSS_mmm>/``)::

    run.json             status pending -> running -> completed | failed | interrupted,
                         times, attempts, final / initial / best metrics, failures, error
    config.yaml          resolved pipeline + training config, library versions, git commit
    metrics.jsonl        one JSON line per logged step/epoch (the run's FileMonitor)
    artifacts/<stage>/   figures as PNG by step
    checkpoints/         best.ckpt (or the save_top_k best), last.ckpt; with stages
                         checkpoints/<stage>/ each, plus final.ckpt (see cuvis_graph.training)
    stage_state.json     completed / current stage, each stage's steps, losses, checkpoint
    model/               the trained graph (Graph.save): pipeline.yaml, weights, meta.json
    logs/training.log    log records of the run; logs/traceback.txt on failure
    lock                 {"pid", "host"} of the process training into this directory

Every file here is written to a temporary file and renamed (``os.replace``), so a kill
leaves either the old or the new version, never half of one. ``run.json`` is written at
every status transition.

Resume: ``resume="auto"`` continues the newest run of the pipeline under the root that
has ``checkpoints/last.ckpt``; ``resume=<run dir or .ckpt file>`` continues that one. No
checkpoint -> a fresh run, with a one-line notice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from .errors import CuvisGraphError

__all__ = [
    "Run",
    "RunLock",
    "RunLockedError",
    "open_run",
    "find_latest_run",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "read_run_json",
]

log = logging.getLogger(__name__)

STATUSES = ("pending", "running", "completed", "failed", "interrupted")


class RunLockedError(CuvisGraphError):
    """Another live process is training into this run directory."""


# -- atomic files -------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary sibling file (binary), fsync, then ``os.replace`` it
    onto ``path``: a kill leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        f = float(v)
        out[k] = f if f == f and abs(f) != float("inf") else None
    return out


# -- lock ---------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``<run>/lock`` holding the owner's PID and host; created with ``O_EXCL``.

    A lock whose process is gone (same host, PID not alive) or that cannot be read is
    stale: it is replaced with a warning. A live owner -> :class:`RunLockedError`.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / "lock"
        self.held = False

    def acquire(self) -> RunLock:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and (owner.get("host") != socket.gethostname() or _pid_alive(int(owner["pid"]))):
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

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
            int(owner["pid"])
            return owner
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is None or int(owner["pid"]) == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


# -- finding runs -------------------------------------------------------------------------
def _new_run_dir(root: Path, pipeline: str) -> Path:
    base = root / _safe_name(pipeline)
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now()
    while True:
        path = base / (stamp.strftime("%Y%m%d_%H%M%S_") + f"{stamp.microsecond // 1000:03d}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            stamp += _dt.timedelta(milliseconds=1)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "graph"


def _resumable(path: Path) -> bool:
    """A run with something to continue from: ``last.ckpt`` or a ``stage_state.json``."""
    return (path / "checkpoints" / "last.ckpt").is_file() or (path / "stage_state.json").is_file()


def find_latest_run(root: str | os.PathLike, pipeline: str, with_checkpoint: bool = True) -> Path | None:
    """Newest run directory of ``pipeline`` under ``root`` (a resumable one if asked)."""
    base = Path(root) / _safe_name(pipeline)
    if not base.is_dir():
        return None
    for path in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        if not with_checkpoint or _resumable(path):
            return path
    return None


# -- a run ----------------------------------------------------------------------------------
class Run:
    """One run directory and its ``run.json`` record."""

    def __init__(self, path: Path, pipeline: str, resume_checkpoint: Path | None = None,
                 resuming: bool | None = None) -> None:
        self.path = Path(path).absolute()
        self.pipeline = pipeline
        self.resume_checkpoint = resume_checkpoint
        #: whether this attempt continues earlier progress (a checkpoint or stage state)
        self.resuming = resume_checkpoint is not None if resuming is None else resuming
        self.lock = RunLock(self.path)
        existing = self.path / "run.json"
        self.record: dict[str, Any] = read_run_json(self.path) if existing.is_file() else {
            "run_id": self.path.name, "pipeline": pipeline, "path": str(self.path.resolve()),
            "status": None, "created_at": _now(), "history": [], "attempts": [],
            "metrics": {}, "initial_metrics": {}, "best": None, "failures": [], "error": None,
        }

    # paths
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status(self) -> str | None:
        return self.record.get("status")

    # record
    def save(self) -> None:
        atomic_write_json(self.path / "run.json", self.record)

    def set_status(self, status: str, **fields: Any) -> None:
        """Write the transition to ``run.json`` now (atomically)."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        when = _now()
        self.record["status"] = status
        self.record["history"].append({"status": status, "time": when})
        if self.record["attempts"] and status != "running":
            self.record["attempts"][-1].update(status=status, ended_at=when)
        if status in ("completed", "failed", "interrupted"):
            self.record["ended_at"] = when
        self.record.update(fields)
        self.save()
        log.info("run %s: %s", self.path, status)

    def write_config(self, training: Mapping[str, Any], pipeline: Mapping[str, Any]) -> None:
        """``config.yaml``: pipeline, training config, versions, git commit."""
        data = {"pipeline": dict(pipeline), "training": dict(training), "versions": library_versions(),
                "git_commit": git_commit()}
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(_plain(data), sort_keys=False))

    def trim_metrics(self, after_step: int) -> None:
        """Drop ``metrics.jsonl`` lines logged at or after ``after_step`` (progress lost by a kill,
        that the resumed run logs again)."""
        if not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) >= after_step:
                    continue
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the kill
            keep.append(line)
        atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in keep))

    def write_traceback(self, exc: BaseException) -> Path:
        return atomic_write_text(self.logs_dir / "traceback.txt", "".join(traceback.format_exception(exc)))

    @contextlib.contextmanager
    def log_to_file(self) -> Iterator[None]:
        """Append this process's ``cuvis_graph`` and Lightning log records to ``logs/training.log``."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.logs_dir / "training.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        loggers = [logging.getLogger(n) for n in ("cuvis_graph", "lightning.pytorch", "lightning.fabric")]
        ours = loggers[0]
        old_level = ours.level
        if ours.getEffectiveLevel() > logging.INFO:
            ours.setLevel(logging.INFO)
        for lg in loggers:
            lg.addHandler(handler)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
            ours.setLevel(old_level)
            handler.close()


def open_run(pipeline: str, *, root: str | os.PathLike = "runs", run_dir: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None) -> Run:
    """The run to train into.

    * ``resume="auto"``: newest run of ``pipeline`` under ``root`` with ``last.ckpt`` or
      ``stage_state.json`` (staged training: see :mod:`cuvis_graph.training`);
    * ``resume=<dir>``: that run directory; ``resume=<file.ckpt>``: that checkpoint (its
      run directory is ``<file>/../..``);
    * otherwise ``run_dir`` (created if needed) or a new ``<root>/<pipeline>/<stamp>/``.
    A resume request without a checkpoint starts fresh, with a one-line notice.
    """
    root = Path(root)
    if resume is not None:
        ckpt: Path | None = None
        target: Path | None = None
        if str(resume) == "auto":
            target = Path(run_dir) if run_dir is not None else find_latest_run(root, pipeline)
        else:
            target = Path(resume)
            if target.suffix == ".ckpt":
                ckpt, target = target, target.parent.parent
        if target is not None:
            ckpt = ckpt or target / "checkpoints" / "last.ckpt"
            if ckpt.is_file() or (target / "stage_state.json").is_file():
                log.warning("resuming run %s from %s", target, ckpt if ckpt.is_file() else "its stage state")
                return Run(target, pipeline, resume_checkpoint=ckpt if ckpt.is_file() else None, resuming=True)
        log.warning("resume=%s: no checkpoint found (%s); starting a fresh run", resume, ckpt or root / pipeline)
        if target is not None and str(resume) != "auto":
            run_dir = target
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return Run(path, pipeline)
    return Run(_new_run_dir(root, pipeline), pipeline)


# -- environment ------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("cuvis-graph", "torch", "lightning", "torchmetrics", "numpy", "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the package checkout, ``None`` when not a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _plain(obj: Any) -> Any:
    """Plain YAML-safe data (tuples -> lists, unknown objects -> str)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def pipeline_summary(graph: Any) -> dict[str, Any]:
    """A plain description of the graph (used in ``config.yaml`` when no YAML spec is given):
    name, nodes / leaves with type, parameters and parents, monitors."""
    def entry(name: str, obj: Any, parents: Any) -> dict[str, Any]:
        return {"name": name, "type": type(obj).__name__, "params": _plain(obj.hparams()), "parents": parents}

    nodes = [entry(n, obj, {port: [r.label() for r in refs] for port, refs in graph._wiring.get(n, {}).items()})
             for n, obj in graph.nodes.items()]
    leaves = [entry(n, obj, graph._leaf_parents[n].label()) for n, obj in graph.leaves.items()]
    monitors = [{"type": type(m).__name__, "params": _plain(m.hparams())} for m in graph.monitors]
    return {"name": graph.name, "nodes": nodes, "leaves": leaves, "monitors": monitors}


# -- lifecycle ------------------------------------------------------------------------------
class RunSession:
    """Context manager around one training attempt in ``run``.

    Enter: take the lock, status ``running`` (a new attempt), log to ``logs/training.log``.
    Exit: ``completed``; ``interrupted`` on Ctrl-C (Lightning's graceful shutdown exits
    with ``SystemExit``: re-raised here as ``KeyboardInterrupt``); ``failed`` with the
    error and ``logs/traceback.txt`` on any other exception. Monitor / visualization /
    callback failures of ``hub`` go into ``run.json`` in every case.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.hub: Any = None
        self._stack = contextlib.ExitStack()
        self._sigint: Any = None

    def __enter__(self) -> RunSession:
        run = self.run
        run.lock.acquire()
        self._stack.callback(run.lock.release)
        self._stack.enter_context(run.log_to_file())
        if threading.current_thread() is threading.main_thread():
            self._sigint = signal.getsignal(signal.SIGINT)
        if run.status is None:
            run.set_status("pending")
        run.record["attempts"].append({"status": "running", "started_at": _now(), "pid": os.getpid(), "host": socket.gethostname(),
                                       "resumed_from": str(run.resume_checkpoint) if run.resume_checkpoint else None})
        run.record.setdefault("started_at", run.record["attempts"][0]["started_at"])
        run.set_status("running", error=None, ended_at=None)
        return self

    def finish(self, metrics: Mapping[str, Any], initial: Mapping[str, Any] | None = None,
               best: Mapping[str, Any] | None = None, **extra: Any) -> None:
        """Store results (before ``completed`` is written on exit)."""
        self.run.record["metrics"] = _finite(metrics)
        if initial:
            self.run.record["initial_metrics"] = _finite(initial)
        if best is not None:
            self.run.record["best"] = dict(best)
        self.run.record.update(extra)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        run = self.run
        try:
            if self.hub is not None:
                known = {(f["name"], f["error"]) for f in run.record["failures"]}
                run.record["failures"].extend(
                    {k: f[k] for k in ("name", "kind", "error")} for f in self.hub.failures
                    if (f["name"], f["error"]) not in known)
            if exc is None:
                run.set_status("completed")
            elif isinstance(exc, KeyboardInterrupt) or (
                    isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)):
                run.set_status("interrupted", error={"type": "KeyboardInterrupt", "message": "interrupted by the user"})
            else:
                path = run.write_traceback(exc)
                log.error("run %s failed: %s: %s (traceback in %s)", run.path, type(exc).__name__, exc, path)
                run.set_status("failed", error={"type": type(exc).__name__, "message": str(exc),
                                                "traceback": str(path.relative_to(run.path))})
        finally:
            if self._sigint is not None:
                signal.signal(signal.SIGINT, self._sigint)
            self._stack.close()
        if isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt(f"training interrupted; resume with resume={str(run.path)!r}") from None
        return False
