"""Run directories: layout, ``run.json`` lifecycle, lock file, resume.

Layout of one run (``<root>/<pipeline-name>/<YYYYMMDD_HHMMSS_mmm>/``)::

    run.json             status pending -> running -> completed | failed | interrupted (SIGINT)
                         | terminated (SIGTERM); times, attempts, final / initial / best metrics,
                         failures, error
    config.yaml          resolved pipeline + training config, library versions, git commit
    metrics.jsonl        one JSON line per logged step/epoch (the run's FileMonitor)
    artifacts/<stage>/   figures as PNG by step
    checkpoints/         best.ckpt (or the save_top_k best), last.ckpt; with stages
                         checkpoints/<stage>/ each, plus final.ckpt (see cuvis_graph.train.training)
    stage_state.json     completed / current stage, each stage's steps, losses, checkpoint
    model/               the trained graph (Graph.save): pipeline.yaml, weights, meta.json
    logs/training.log    log records of the run; logs/traceback.txt on failure
    lock                 {"pid", "host"} of the process training into this directory

Every file here is written to a temporary file and renamed (``os.replace``), so a kill
leaves either the old or the new version, never half of one. ``run.json`` is written at
every status transition.

The record tells the truth: a ``running`` record whose lock is not held by a live process
(the process was killed with SIGKILL, ran out of memory, or could not write its outcome)
is reported by :func:`read_run_json`, the one reader, as ``killed`` (its process is gone)
or ``failed`` (it lives on but ended the attempt); the next writer stores that.

Resume: ``resume="auto"`` continues the newest run of the pipeline under the root that
has ``checkpoints/last.ckpt``; ``resume=<run dir or .ckpt file>`` continues that one. A
folder that is not a run, a checkpoint outside a run folder, a run trained with another
pipeline or a run with nothing left to train are refused before anything is written. So is
a run whose checkpoint is gone although its ``stage_state.json`` records one written (deleted
by hand): training it again from the start would discard its epochs without saying so. A run
that never had a checkpoint (stopped during the statistical init) starts over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.plain import plain

__all__ = [
    "Run",
    "RunLock",
    "RunLockedError",
    "RunRecordError",
    "ResumeError",
    "Terminated",
    "open_run",
    "resume_target",
    "new_sweep_dir",
    "find_latest_run",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "read_run_json",
]

log = logging.getLogger(__name__)

STATUSES = ("pending", "running", "completed", "failed", "interrupted", "terminated", "killed")
ENDED = ("completed", "failed", "interrupted", "terminated", "killed")


class RunLockedError(CuvisGraphError):
    """Another live process is training into this run directory."""


class RunRecordError(CuvisGraphError):
    """A run's ``run.json`` (or the folder it should be in) cannot be read or written."""


class ResumeError(CuvisGraphError):
    """A resume request that cannot continue the run it names."""


class Terminated(BaseException):
    """SIGTERM arrived during training (a ``BaseException``, like ``KeyboardInterrupt``)."""


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
    """The record of ``run_dir``, told truthfully: a stale ``running`` (see the module doc) is
    returned as ``killed`` / ``failed``. :class:`RunRecordError` when it cannot be read."""
    path = Path(run_dir) / "run.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunRecordError(f"{path}: no such file; {Path(run_dir)} is not a run folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{path}: cannot be read ({exc}); restore it or start a new run") from None
    except ValueError as exc:
        raise RunRecordError(f"{path}: not valid JSON ({exc}; truncated?); restore it or start a new run") from None
    if not isinstance(record, dict):
        raise RunRecordError(f"{path}: expected a JSON object, found {type(record).__name__}; not a run record")
    for field, kind in (("status", (str, type(None))), ("history", list), ("attempts", list),
                        ("failures", list)):
        if field not in record:
            raise RunRecordError(f"{path}: field '{field}' is missing; not a run record of cuvis-graph")
        if not isinstance(record[field], kind):
            raise RunRecordError(f"{path}: field '{field}' has the wrong type ({type(record[field]).__name__})")
    if record["status"] not in (*STATUSES, None):
        raise RunRecordError(f"{path}: field 'status' is {record['status']!r}, not one of {', '.join(STATUSES)}")
    _tell_stale(Path(run_dir), record)
    return record


def _tell_stale(run_dir: Path, record: dict[str, Any]) -> None:
    """``running`` without a live lock owner -> ``killed`` (process gone) or ``failed``."""
    if record["status"] != "running":
        return
    owner = RunLock(run_dir).owner()
    if owner is not None and (owner.get("host") != socket.gethostname() or _pid_alive(int(owner["pid"]))):
        return  # alive (or on another host, where we cannot tell)
    attempt = record["attempts"][-1] if record["attempts"] and isinstance(record["attempts"][-1], dict) else {}
    pid, host = attempt.get("pid"), attempt.get("host")
    gone = not isinstance(pid, int) or (host == socket.gethostname() and not _pid_alive(pid))
    status = "killed" if gone else "failed"
    message = (f"process {pid} on {host} ended without recording an outcome (killed: SIGKILL, out of memory "
               "or power loss)" if gone else
               f"process {pid} on {host} ended the attempt without recording its outcome (run.json could "
               "not be written, e.g. a full disk)")
    when = _now()
    record.update(status=status, error={"type": status, "message": message, "detected_at": when})
    record["history"].append({"status": status, "time": when, "detected": True})
    if attempt:
        attempt["status"] = status


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

    def owner(self) -> dict[str, Any] | None:
        """``{"pid", "host", "since"}`` of the lock file, ``None`` when absent or unreadable."""
        return self._owner()

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
def new_sweep_dir(root: str | os.PathLike, pipeline: str) -> Path:
    """A new ``<root>/<pipeline>/sweep_<stamp>/`` for the runs of one ``-m`` sweep."""
    return _new_run_dir(Path(root), pipeline, prefix="sweep_")


def _new_run_dir(root: Path, pipeline: str, prefix: str = "") -> Path:
    base = _inside(root, _safe_name(pipeline))
    _make_dir(base, root)
    stamp = _dt.datetime.now()
    while True:
        path = base / (prefix + stamp.strftime("%Y%m%d_%H%M%S_") + f"{stamp.microsecond // 1000:03d}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            stamp += _dt.timedelta(milliseconds=1)
        except OSError as exc:
            raise RunRecordError(f"runs root {root}: cannot create the run folder {path} ({exc.strerror}); "
                                 "pass --runs-dir (training.run.root) a writable folder") from None


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refused unless it resolves to a folder inside ``root``."""
    path = root / name
    if path.resolve().parent != root.resolve():
        raise RunRecordError(f"pipeline name {name!r}: the run folder {path} would leave the runs root {root}; "
                             "rename the pipeline")
    return path


def _make_dir(path: Path, root: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunRecordError(f"runs root {root}: {path} or a folder above it is a file, not a folder; pass "
                             "--runs-dir (training.run.root) a folder") from None
    except OSError as exc:
        raise RunRecordError(f"runs root {root}: cannot create {path} ({exc.strerror}); pass --runs-dir "
                             "(training.run.root) a writable folder") from None


def _safe_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe if safe.strip(".") else "graph"


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
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(plain(data), sort_keys=False))

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
      ``stage_state.json`` (staged training: see :mod:`cuvis_graph.train.training`); none -> a
      fresh run, with a one-line notice;
    * ``resume=<dir>``: that run folder (it must hold a ``run.json``); without a checkpoint
      its attempt starts over in the same folder;
    * ``resume=<file.ckpt>``: that checkpoint, in the run folder it was written into;
    * otherwise ``run_dir`` (created if needed) or a new ``<root>/<pipeline>/<stamp>/``.
    Resume requests that name no run are refused (:class:`ResumeError`), writing nothing.
    """
    root = Path(root)
    if resume is not None:
        run = resume_target(pipeline, root, resume, run_dir)
        if run is not None:
            return run
        log.warning("resume=auto: no checkpoint found for %s under %s; starting a fresh run", pipeline, root)
    if run_dir is not None:
        path = Path(run_dir)
        _make_dir(path, path.parent)
        return Run(path, pipeline)
    return Run(_new_run_dir(root, pipeline), pipeline)


def resume_target(pipeline: str, root: str | os.PathLike, resume: str | os.PathLike,
                  run_dir: str | os.PathLike | None = None) -> Run | None:
    """The run a resume request names, checked, writing nothing (see :func:`open_run`);
    ``None`` for ``"auto"`` when ``pipeline`` has no run to continue under ``root``."""
    if str(resume) != "auto":
        return _resume_run(Path(resume), pipeline)
    target = Path(run_dir) if run_dir is not None else find_latest_run(Path(root), pipeline)
    if target is not None and (target / "run.json").is_file():
        return _resume_run(target, pipeline)
    return None


def _resume_run(target: Path, pipeline: str) -> Run:
    """The run ``target`` (a run folder or a ``.ckpt`` file in one) names, checked."""
    ckpt: Path | None = None
    if target.suffix == ".ckpt" or target.is_file():
        ckpt = target
        if not ckpt.is_file():
            raise ResumeError(f"--resume {ckpt}: no such checkpoint file")
        folder = next((p for p in list(ckpt.resolve().parents)[:3] if (p / "run.json").is_file()), None)
        if folder is None:
            raise ResumeError(f"--resume {ckpt}: the checkpoint is not inside a run folder (no run.json in the 3 "
                              "folders above it); resume needs the run it was written into")
        target = folder
    elif not target.is_dir():
        raise ResumeError(f"--resume {target}: no such run folder")
    elif not (target / "run.json").is_file():
        raise ResumeError(f"--resume {target}: not a run folder (no run.json); pass a folder written by "
                          "'cuvis-graph train' (runs/<pipeline>/<stamp>) or 'auto'")
    run = Run(target, pipeline)  # reads run.json: refuses a corrupt one
    if ckpt is not None:
        staged = (target / "stage_state.json").is_file() and json.loads(
            (target / "stage_state.json").read_text(encoding="utf-8")).get("stages") not in (None, ["train"])
        if staged:
            raise ResumeError(f"--resume {ckpt}: run {target} trains in stages, which resume from their own "
                              f"checkpoints; pass the run folder {target}")
    else:
        last = run.last_checkpoint
        ckpt = last if last.is_file() else None
        lost = _lost_checkpoint(target)
        if lost is not None:
            raise ResumeError(f"run {target} has no checkpoint to continue from ({lost}); train without --resume "
                              "for a new run, or restore the file")
    if ckpt is not None:
        from cuvis_graph.train.checkpoints import load_checkpoint

        load_checkpoint(ckpt)  # refuses a truncated file or one that needs pickle, before anything is written
    run.resume_checkpoint = ckpt
    run.resuming = ckpt is not None or (target / "stage_state.json").is_file()
    staged = _stage_state(target).get("stages") not in (None, ["train"])
    log.warning("resuming run %s from %s", target, ckpt or ("its stage state" if staged else
                                                            "the start: no epoch had been checkpointed"))
    return run


def _stage_state(run_dir: Path) -> dict[str, Any]:
    """``stage_state.json`` of ``run_dir`` (``{}`` when absent or unreadable)."""
    try:
        state = json.loads((run_dir / "stage_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _lost_checkpoint(run_dir: Path) -> str | None:
    """Why the checkpoint a resume of ``run_dir`` continues from is gone: its stage state records
    a ``last.ckpt`` written (or the stage's folder keeps other checkpoints) but the file is
    missing. ``None`` when it is there, or when the stage never had one (e.g. killed during the
    statistical init): then the stage starts over and loses nothing."""
    state = _stage_state(run_dir)
    stages = state.get("stages") or ["train"]
    single = stages == ["train"]
    current = "train" if single else state.get("current_stage")
    info = (state.get("stage_info") or {}).get(current) if current else None
    if not isinstance(info, dict):
        return None
    folder = run_dir / "checkpoints" if single else run_dir / "checkpoints" / str(current)
    last = folder / "last.ckpt"
    if last.is_file():
        return None
    where = os.path.relpath(last, run_dir)
    step = info.get("last_checkpoint_step")
    if step is not None:
        return f"{where} is missing; stage '{current}' had checkpointed its training up to step {step}"
    kept = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if kept:
        return f"{where} is missing; only {', '.join(kept)} is left of stage '{current}'"
    if single and info.get("status") == "completed" and info.get("steps"):
        return f"{where} is missing; the run had trained {info['steps']} step(s)"
    return None


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


def pipeline_summary(graph: Any) -> dict[str, Any]:
    """The graph's pipeline mapping (used in ``config.yaml`` when no YAML spec is given): the
    same serializer as ``graph.to_yaml()`` (:func:`cuvis_graph.io.spec.writer.graph_spec`),
    with the class name and ``str`` standing in for what a pipeline file could not hold.
    Its ``params`` are every constructor parameter (defaults included)."""
    from cuvis_graph.io.spec.writer import graph_spec

    return graph_spec(graph, strict=False)


# -- lifecycle ------------------------------------------------------------------------------
class RunSession:
    """Context manager around one training attempt in ``run``.

    Enter: take the lock; when the run has earlier attempts, refuse (writing nothing) a
    pipeline that differs from the recorded one or a completed run with nothing left to
    train; status ``running`` (a new attempt), ``config.yaml``, log to ``logs/training.log``;
    SIGTERM raises :class:`Terminated` (Lightning alone would stop and report success).
    Exit: ``completed``; ``interrupted`` on Ctrl-C (Lightning's graceful shutdown exits
    with ``SystemExit``: re-raised here as ``KeyboardInterrupt``); ``terminated`` on
    SIGTERM; ``failed`` with the error and ``logs/traceback.txt`` on any other exception,
    as far as the disk allows (when even ``run.json`` cannot be written, its stale
    ``running`` is told as it is by :func:`read_run_json`). Monitor / visualization /
    callback failures of ``hub`` go into ``run.json`` in every case.
    """

    def __init__(self, run: Run, training: Mapping[str, Any] | None = None,
                 pipeline: Mapping[str, Any] | None = None) -> None:
        self.run = run
        self.training, self.pipeline = training, pipeline
        self.hub: Any = None
        self._stack = contextlib.ExitStack()
        self._sigint: Any = None
        self._terminated = False

    def __enter__(self) -> RunSession:
        run = self.run
        run.lock.acquire()
        self._stack.callback(run.lock.release)
        try:
            if self.training is not None and run.record["attempts"]:
                check_continuation(run, self.training, self.pipeline or {})
        except BaseException:
            self._stack.close()
            raise
        try:
            self._start()
        except BaseException as exc:
            if not self.__exit__(type(exc), exc, exc.__traceback__):
                raise
        return self

    def _start(self) -> None:
        run = self.run
        self._stack.enter_context(run.log_to_file())
        if threading.current_thread() is threading.main_thread():
            self._sigint = signal.getsignal(signal.SIGINT)
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, self._on_sigterm)
                self._stack.callback(signal.signal, signal.SIGTERM, signal.SIG_DFL)
        if run.status is None:
            run.set_status("pending")
        run.record["attempts"].append({"status": "running", "started_at": _now(), "pid": os.getpid(),
                                       "host": socket.gethostname(), "resumed_from": str(run.resume_checkpoint)
                                       if run.resume_checkpoint else None})
        run.record.setdefault("started_at", run.record["attempts"][0]["started_at"])
        run.set_status("running", error=None, ended_at=None)
        if self.training is not None:
            run.write_config(self.training, self.pipeline or {})

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._terminated:  # a second SIGTERM during the shutdown is ignored
            self._terminated = True
            raise Terminated("SIGTERM")

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
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt))
        try:
            if self.hub is not None:
                known = {(f["name"], f["error"]) for f in run.record["failures"]}
                run.record["failures"].extend(
                    {k: f[k] for k in ("name", "kind", "error")} for f in self.hub.failures
                    if (f["name"], f["error"]) not in known)
            if exc is None:
                run.set_status("completed")
            elif interrupted:
                run.set_status("interrupted", error={"type": "KeyboardInterrupt", "message": "interrupted by the user"})
            elif isinstance(exc, Terminated):
                run.set_status("terminated", error={"type": "SIGTERM", "message": "terminated by SIGTERM"})
            else:
                self._record_failure(exc)
        finally:
            if self._sigint is not None:
                signal.signal(signal.SIGINT, self._sigint)
            self._stack.close()
        if interrupted:
            raise KeyboardInterrupt(f"training interrupted; resume with resume={str(run.path)!r}") from None
        if isinstance(exc, Terminated):
            raise Terminated(f"run {run.path} terminated by SIGTERM; continue it with --resume {run.path}") from None
        return False

    def _record_failure(self, exc: BaseException) -> None:
        """``failed`` with the error; a full disk may refuse the traceback or even ``run.json``
        (then the stale ``running`` is told by the next reader)."""
        run = self.run
        try:
            path: Path | None = run.write_traceback(exc)
        except OSError:
            path = None
        log.error("run %s failed: %s: %s (traceback in %s)", run.path, type(exc).__name__, exc, path)
        error = {"type": type(exc).__name__, "message": str(exc),
                 "traceback": str(path.relative_to(run.path)) if path is not None else None}
        try:
            run.set_status("failed", error=error)
        except OSError as write_error:
            log.error("run %s: could not record the failure in run.json (%s)", run.path, write_error)


# -- resume checks ----------------------------------------------------------------------------
#: training settings an attempt may change on resume (length, display, devices)
ATTEMPT_KEYS = re.compile(r"^training\.(trainer\.(max_epochs|enable_progress_bar|accelerator|devices|strategy|"
                          r"num_sanity_val_steps|log_every_n_steps)|stages\.\d+\.max_epochs|run\..*|"
                          r"callbacks\.rich_progress_bar)$")


def check_continuation(run: Run, training: Mapping[str, Any], pipeline: Mapping[str, Any]) -> None:
    """Refuse (:class:`ResumeError`) to continue ``run`` with another pipeline than the one in
    its ``config.yaml`` (naming the first differing keys), or a completed run with nothing
    left to train."""
    recorded_path = run.path / "config.yaml"
    if recorded_path.is_file():
        try:
            recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ResumeError(f"{recorded_path}: cannot be read ({str(exc).splitlines()[0]}); the run's pipeline "
                              "is unknown, so it cannot be continued; start a new run") from None
        new = yaml.safe_load(yaml.safe_dump(plain({"pipeline": pipeline, "training": training})))
        old, now = _comparable(recorded), _comparable(new)
        diffs = [f"{k}: {old.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in sorted(old.keys() | now.keys())
                 if old.get(k, _MISSING) != now.get(k, _MISSING)
                 and not _new_field(k, old, now, full_params="training" not in pipeline)]
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise ResumeError(f"run {run.path}: the pipeline differs from the one the run was trained with: "
                              f"{'; '.join(diffs[:3])}{more}; resume with the run's own pipeline "
                              f"({run.path / 'pipeline.yaml'}) or train without --resume for a new run")
    if run.resuming and run.record.get("status") == "completed":
        stages = [s.get("name") for s in training.get("stages") or []]
        if stages:
            done = all(s in (run.record.get("completed_stages") or []) for s in stages)
            left, more = f"all stages ({', '.join(map(str, stages))}) are done", ""
        else:
            epochs, wanted = int(run.record.get("epochs") or 0), int(training["trainer"]["max_epochs"])
            done = epochs >= wanted
            left = f"{epochs} epoch(s) trained of training.trainer.max_epochs={wanted}"
            more = "raise training.trainer.max_epochs to train on, or "
        if done:
            raise ResumeError(f"run {run.path}: already completed, {left}; nothing to resume ({more}train "
                              "without --resume for a new run)")


_MISSING = object()


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"nodes.rx.params.eps": 1e-6, "training.optimizer.lr": ...}`` of what must match."""
    pipeline = {k: v for k, v in dict(config.get("pipeline") or {}).items() if k not in ("overrides", "training")}
    flat = _flatten(pipeline, "") | _flatten({"training": config.get("training") or {}}, "")
    return {k: v for k, v in flat.items() if not ATTEMPT_KEYS.match(k)}


def _containers(flat: Mapping[str, Any]) -> set[str]:
    return {key.rsplit(".", i)[0] for key in flat for i in range(1, key.count(".") + 1)} | set(flat)


def _new_field(key: str, old: Mapping[str, Any], now: Mapping[str, Any], full_params: bool) -> bool:
    """``key`` is on one side only, in a section recorded in full that both sides have: the
    training config, or (``full_params``: the record of a graph trained from Python, which
    has no ``training`` section) the node / leaf / monitor parameters ``nodes.<name>.params``:
    a field a newer (or older) cuvis-graph added at its default, not a change of the run. (A
    pipeline file's ``params`` hold only what the file wrote, so there a missing key is a change.)"""
    if (key in old) == (key in now) or "." not in key:
        return False
    parent = key.rsplit(".", 1)[0]
    full = parent.startswith("training.") or (full_params and _PARAMS.match(parent) is not None)
    return full and parent in _containers(old) and parent in _containers(now)


_PARAMS = re.compile(r"(nodes|leaves|monitors)\.[^.]+\.params(\.|$)")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value:
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}
