"""``train``: one run, a resumed run with its recorded overrides, or a sweep (``-m``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from cuvis_graph.cli.output import artifact_lines, format_metrics, out
from cuvis_graph.cli.pipeline_commands import load_pipeline_args
from cuvis_graph.errors import CuvisGraphError

__all__ = ["cmd_train"]


def _save_predictions(pipeline: Any, run_dir: Path) -> Path:
    """Sink outputs of the graph over the datamodule's prediction data -> ``predictions.npz``."""
    import numpy as np
    import torch

    from cuvis_graph.core.inference import InferenceSession

    dm = pipeline.datamodule
    loader = dm.predict_dataloader() if hasattr(dm, "predict_dataloader") else dm.val_dataloader()
    arrays: dict[str, list[np.ndarray]] = {}
    session = None  # compiled once, for the batches of this loader
    for batch in loader:
        session = session or InferenceSession.for_batch(pipeline.graph, batch)
        outputs = session.predict(batch)
        for name, tensor in outputs.items():
            arrays.setdefault(name, []).append(tensor.detach().cpu().numpy())
        if isinstance(batch.get("mask"), torch.Tensor):
            arrays.setdefault("mask", []).append(batch["mask"].numpy())
    from cuvis_graph.io.atomic import atomic_write

    return atomic_write(run_dir / "predictions.npz",
                        lambda fh: np.savez_compressed(fh, **{k: np.concatenate(v) for k, v in arrays.items()}))


def cmd_train(args: argparse.Namespace) -> int:
    from cuvis_graph.io.spec import expand_sweeps

    if args.multirun and args.resume:
        raise CuvisGraphError("--resume continues one run; it cannot be combined with -m/--multirun")
    jobs = expand_sweeps(args.overrides, args.pipeline) if args.multirun else [list(args.overrides)]
    # validate every job before anything is written
    pipelines = [load_pipeline_args(args, job) for job in jobs]
    if args.resume:
        jobs, pipelines = _as_started(args, jobs[0], pipelines[0])
    if args.multirun:
        return _sweep(args, jobs, pipelines)
    _train_one(args, pipelines[0], jobs[0])
    return 0


def _sweep(args: argparse.Namespace, jobs: list[list[str]], pipelines: list[Any]) -> int:
    """``-m``: every job into ``<runs>/<pipeline>/sweep_<stamp>/NNN``; ``summary.csv`` rewritten
    after each job (so a killed sweep leaves a truthful one); a failed job does not stop the rest."""
    from cuvis_graph.cli.sweeps import SweepJob, format_summary, write_summary
    from cuvis_graph.core.names import shorten
    from cuvis_graph.io.run_folders import new_sweep_dir
    from cuvis_graph.io.runs import read_run_json

    first = pipelines[0]
    folder = new_sweep_dir(args.runs_dir or first.training.run.root, first.name)
    sweep = [SweepJob(i, job, run_dir=folder / f"{i:03d}") for i, job in enumerate(jobs)]
    write_summary(folder, sweep)
    out(f"multirun: {len(jobs)} job(s) in {folder}")
    for i, (job, entry) in enumerate(zip(jobs, sweep, strict=True)):
        pipeline, pipelines[i] = pipelines[i], None  # free the previous job's data as we go
        out(f"\n[{i + 1}/{len(jobs)}] {' '.join(job) or '(no overrides)'}")
        args.run_dir = entry.run_dir
        try:
            _train_one(args, pipeline, job)
        except CuvisGraphError as exc:
            entry.error = shorten(str(exc).splitlines()[0], 200)
            print(f"job {i} failed: {entry.error}", file=sys.stderr, flush=True)
        finally:  # also when Ctrl-C or SIGTERM stops the sweep: the summary tells where it stopped
            try:
                record = read_run_json(entry.run_dir)
                entry.status, entry.metrics, entry.best = str(record["status"]), record.get("metrics") or {}, \
                    record.get("best")
            except CuvisGraphError:
                entry.status = "failed" if entry.error else "not started"
            write_summary(folder, sweep)
    out("\nsweep summary:")
    out(format_summary(sweep))
    out(f"summary: {folder / 'summary.csv'}")
    failed = [e.index for e in sweep if e.status != "completed"]
    if failed:
        raise CuvisGraphError(f"{len(failed)} of {len(sweep)} sweep jobs did not complete (jobs "
                              f"{', '.join(map(str, failed[:10]))}); see {folder / 'summary.csv'}")
    return 0


def _override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~").removeprefix("training.")


def _as_started(args: argparse.Namespace, overrides: list[str], pipeline: Any) -> tuple[list[list[str]], list[Any]]:
    """A resumed run continues with the overrides it was started with: the run's recorded
    overrides, then those given now (a key given again replaces its recorded value; the
    resume then refuses any change but attempt-level ones such as max_epochs, naming it)."""
    from cuvis_graph.io.run_resume import resume_target

    run = resume_target(pipeline.name, args.runs_dir or pipeline.training.run.root, args.resume,
                        getattr(args, "run_dir", None))
    if run is None:
        return [overrides], [pipeline]
    try:
        recorded = (yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8")) or {}).get(
            "pipeline", {}).get("overrides") or []
    except (OSError, yaml.YAMLError, AttributeError):
        recorded = []  # the resume's own checks name an unreadable config.yaml
    given = {_override_key(o) for o in overrides}
    kept = [str(o) for o in recorded if _override_key(str(o)) not in given]
    if not kept:
        return [overrides], [pipeline]
    out(f"resuming run {run.path} with its recorded overrides: {' '.join(kept)}")
    effective = kept + list(overrides)
    return [effective], [load_pipeline_args(args, effective)]


def _train_one(args: argparse.Namespace, pipeline: Any, overrides: list[str]) -> tuple[Path, dict[str, float]]:
    from cuvis_graph.train.distributed import RUN_DIR_ENV, worker_rank

    spec = dict(pipeline.config)
    if overrides:
        spec["overrides"] = list(overrides)
    root = args.runs_dir or pipeline.training.run.root
    resume = getattr(args, "resume", None)
    run_dir_arg = getattr(args, "run_dir", None)
    joined = (os.environ.get(RUN_DIR_ENV) or run_dir_arg) if worker_rank() > 0 else None
    if joined:  # a DDP rank > 0 (started by Lightning or on another node): rank 0 owns the run and the output
        pipeline.graph.train(pipeline.datamodule, pipeline.training, run_dir=joined, pipeline_spec=spec)
        return Path(joined), {}
    importlib.import_module("cuvis_graph.train.entry")  # Lightning loads before the run folder exists
    run_dir, result = _open_and_train(pipeline, spec, root, resume, run_dir_arg)  # (SIGTERM raises: cli.app)
    if args.save_predictions:
        path = _save_predictions(pipeline, run_dir)
        out(f"predictions: {path}")
    out(f"run directory: {run_dir}")
    if result.model_dir is not None:
        plugins = "".join(f" --plugin {plugin}" for plugin in getattr(args, "plugin", None) or [])
        out(f"model: {result.model_dir}  (cuvis-graph predict {result.model_dir} INPUT... --out DIR{plugins})")
    for line in artifact_lines(pipeline.graph, run_dir):
        out(line)
    out("metrics (after statistical init -> final):" if result.initial_metrics else "final metrics:")
    out(format_metrics(result.metrics, before=result.initial_metrics))
    for failure in result.failures:
        out(f"note: {failure.get('kind', 'side effect')} '{failure.get('name')}' failed and was disabled: "
             f"{failure.get('error')}")
    return run_dir, result.metrics


def _open_and_train(pipeline: Any, spec: dict[str, Any], root: Any, resume: Any, run_dir_arg: Any) -> tuple[Path, Any]:
    """Open the run (a new folder, or the one resumed) and train it; a new folder whose attempt
    never started is removed again."""
    from cuvis_graph.io.run_folders import remove_unstarted_run
    from cuvis_graph.io.run_resume import open_run, resume_target

    # a resumed run is opened (and announced) by graph.train; a new one here, to name it in errors
    existed = run_dir_arg is not None and Path(run_dir_arg).exists()
    run = (resume_target(pipeline.name, root, resume, run_dir_arg) if resume else None) or \
        open_run(pipeline.name, root=root, run_dir=run_dir_arg, resume=resume)
    run_dir = run.path
    try:  # (the session writes pipeline.yaml once it accepts the attempt)
        result = pipeline.graph.train(pipeline.datamodule, pipeline.training, run_dir=run_dir, pipeline_spec=spec,
                                      resume=(run.resume_checkpoint or run_dir) if run.resuming else None)
    except BaseException as exc:
        if not (run_dir / "run.json").is_file():  # stopped before the attempt started: no run to name
            if not run.resuming and not existed:
                remove_unstarted_run(run_dir)
            raise
        if isinstance(exc, CuvisGraphError) and str(exc).startswith(f"run {run_dir}"):
            raise  # already names the run (e.g. a refused resume)
        if isinstance(exc, CuvisGraphError):
            raise CuvisGraphError(f"run {run_dir} failed: {exc}") from exc
        if isinstance(exc, Exception):  # reported with the run directory; --debug shows the chain
            raise CuvisGraphError(f"run {run_dir} failed: {type(exc).__name__}: {exc} "
                                  f"(traceback in {run_dir / 'logs' / 'traceback.txt'})") from exc
        raise
    return run_dir, result
