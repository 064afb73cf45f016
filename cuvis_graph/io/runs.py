"""A run's record: ``run.json`` and its lifecycle over the attempts of one run folder.

Layout of one run (``<root>/<pipeline-name>/<YYYYMMDD_HHMMSS_mmm>/``, see
:mod:`cuvis_graph.io.run_folders`)::

    run.json             status pending -> running -> completed | failed | interrupted (SIGINT)
                         | terminated (SIGTERM); times, attempts, final / initial / best metrics,
                         failures, error
    config.yaml          resolved pipeline + training config, library versions, git commit
                         (:mod:`cuvis_graph.io.run_config`)
    metrics.jsonl        one JSON line per logged step/epoch (the run's FileMonitor)
    artifacts/<stage>/   figures as PNG by step
    checkpoints/         best.ckpt (or the save_top_k best), last.ckpt; with stages
                         checkpoints/<stage>/ each, plus final.ckpt (see cuvis_graph.train.training)
    stage_state.json     completed / current stage, each stage's steps, losses, checkpoint
    model/               the trained graph (Graph.save): pipeline.yaml, weights, meta.json
    logs/training.log    log records of the run; logs/traceback.txt on failure
    lock                 {"pid", "host"} of the process training into this directory
                         (:mod:`cuvis_graph.io.run_lock`)

Every file here is written atomically (:mod:`cuvis_graph.io.atomic`), so a kill leaves
either the old or the new version, never half of one. ``run.json`` is written at every
status transition.

The record tells the truth: a ``running`` record whose lock is not held by a live process
(the process was killed with SIGKILL, ran out of memory, or could not write its outcome)
is reported by :func:`read_run_json`, the one reader, as ``killed`` (its process is gone)
or ``failed`` (it lives on but ended the attempt); the next writer stores that.

Which run an attempt trains into (a new folder or the one a resume names):
:mod:`cuvis_graph.io.run_resume`; whether it may continue it:
:mod:`cuvis_graph.io.resume_check`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import socket
import threading
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.atomic import atomic_write_json, atomic_write_text
from cuvis_graph.io.resume_check import check_continuation
from cuvis_graph.io.run_config import write_pipeline_file, write_run_config
from cuvis_graph.io.run_lock import RunLock, owner_alive, pid_alive

__all__ = ["Run", "RunSession", "RunRecordError", "Terminated", "read_run_json", "sigterm_raises", "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("pending", "running", "completed", "failed", "interrupted", "terminated", "killed")
ENDED = ("completed", "failed", "interrupted", "terminated", "killed")


class RunRecordError(CuvisGraphError):
    """A run's ``run.json`` (or the folder it should be in) cannot be read or written."""


class Terminated(BaseException):
    """SIGTERM arrived during training (a ``BaseException``, like ``KeyboardInterrupt``)."""


# -- the record ---------------------------------------------------------------------------
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
    if owner_alive(RunLock(run_dir).owner()):
        return  # alive (or on another host, where we cannot tell)
    attempt = record["attempts"][-1] if record["attempts"] and isinstance(record["attempts"][-1], dict) else {}
    pid, host = attempt.get("pid"), attempt.get("host")
    gone = not isinstance(pid, int) or (host == socket.gethostname() and not pid_alive(pid))
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
        write_run_config(self.path, training, pipeline)

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


# -- lifecycle ------------------------------------------------------------------------------
def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` (main thread, where no other handler is set), so
    that what a command made before its :class:`RunSession` started can be removed; a session
    started within takes the signal over for its attempt."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class RunSession:
    """Context manager around one training attempt in ``run``.

    Enter: take the lock; when the run has earlier attempts, refuse (writing nothing) a
    pipeline that differs from the recorded one or a completed run with nothing left to
    train; status ``running`` (a new attempt), ``config.yaml``, log to ``logs/training.log``;
    SIGTERM raises :class:`Terminated` (Lightning alone would stop and report success); a
    raise the interpreter swallowed (a SIGTERM that lands in a weakref callback or ``__del__``)
    is raised again by :meth:`raise_if_terminated`, which training calls before every batch.
    Exit: ``completed``; ``interrupted`` on Ctrl-C (Lightning's graceful shutdown exits
    with ``SystemExit``: re-raised here as ``KeyboardInterrupt``); ``terminated`` on
    SIGTERM; ``failed`` with the error and ``logs/traceback.txt`` on any other exception,
    as far as the disk allows (when even ``run.json`` cannot be written, its stale
    ``running`` is told as it is by :func:`read_run_json`). Monitor / visualization /
    callback failures of ``hub`` go into ``run.json`` in every case.
    """

    def __init__(self, run: Run, training: Mapping[str, Any] | None = None,
                 pipeline: Mapping[str, Any] | None = None, pipeline_file: bool = False) -> None:
        self.run = run
        self.training, self.pipeline = training, pipeline
        self.pipeline_file = pipeline_file  # write pipeline.yaml (a run started from a pipeline file)
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
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None) or current is _raise_terminated:
                signal.signal(signal.SIGTERM, self._on_sigterm)
                self._stack.callback(signal.signal, signal.SIGTERM, current or signal.SIG_DFL)
        if run.status is None:
            run.set_status("pending")
        run.record["attempts"].append({"status": "running", "started_at": _now(), "pid": os.getpid(),
                                       "host": socket.gethostname(), "resumed_from": str(run.resume_checkpoint)
                                       if run.resume_checkpoint else None})
        run.record.setdefault("started_at", run.record["attempts"][0]["started_at"])
        run.set_status("running", error=None, ended_at=None)
        if self.training is not None:
            run.write_config(self.training, self.pipeline or {})
        if self.pipeline_file and self.pipeline and not run.resuming:  # once the attempt is accepted
            write_pipeline_file(run.path, self.pipeline)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._terminated:  # a second SIGTERM during the shutdown is ignored
            self._terminated = True
            raise Terminated("SIGTERM")

    def raise_if_terminated(self) -> None:
        """Raise :class:`Terminated` once SIGTERM arrived (its own raise may have been swallowed)."""
        if self._terminated:
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
        if exc is not None and not interrupted and self._terminated and not isinstance(exc, Terminated):
            exc = Terminated("SIGTERM")  # what SIGTERM stopped by another way (Lightning's own SystemExit)
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
            raise KeyboardInterrupt(f"training interrupted; continue it with --resume {run.path} "
                                    f"(in Python: resume={str(run.path)!r})") from None
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
