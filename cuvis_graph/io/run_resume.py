"""The run an attempt trains into: a new run folder, or the run a resume request names.

Resume: ``resume="auto"`` continues the newest run of the pipeline under the root that
has ``checkpoints/last.ckpt`` (or a ``stage_state.json``); ``resume=<run dir or .ckpt
file>`` continues that one. A folder that is not a run, a checkpoint outside a run folder,
a run trained with another pipeline or a run with nothing left to train are refused
(:class:`~cuvis_graph.io.resume_check.ResumeError`) before anything is written. So is a
run whose checkpoint is gone although its ``stage_state.json`` records one written
(deleted by hand): training it again from the start would discard its epochs without
saying so. A run that never had a checkpoint (stopped during the statistical init) starts
over.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cuvis_graph.io.resume_check import ResumeError
from cuvis_graph.io.run_folders import find_latest_run, make_named_run_folder, new_run_dir
from cuvis_graph.io.runs import Run

__all__ = ["open_run", "resume_target"]

log = logging.getLogger(__name__)


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
            staged = _stage_state(run.path).get("stages") not in (None, ["train"])
            log.warning("resuming run %s from %s", run.path, run.resume_checkpoint or (
                "its stage state" if staged else "the start: no epoch had been checkpointed"))
            return run
        log.warning("resume=auto: no checkpoint found for %s under %s; starting a fresh run", pipeline, root)
    if run_dir is not None:
        path = Path(run_dir)
        make_named_run_folder(path)
        return Run(path, pipeline)
    return Run(new_run_dir(root, pipeline), pipeline)


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
