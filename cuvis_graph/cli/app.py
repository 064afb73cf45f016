"""The ``cuvis-graph`` command line.

::

    cuvis-graph train    PIPELINE.yaml [OVERRIDES...] [-m] [--runs-dir DIR] [--resume auto|RUN_DIR|CKPT]
                         [--save-predictions]
    cuvis-graph validate PIPELINE.yaml [OVERRIDES...]
    cuvis-graph show     PIPELINE.yaml [OVERRIDES...] [--format text|mermaid|png] [-o FILE]
    cuvis-graph nodes    [--markdown] [-o FILE]
    cuvis-graph test     RUN_OR_MODEL [DATA OVERRIDES...] [--split auto|test|val] [-o FILE]
    cuvis-graph predict  MODEL_DIR INPUT... --out DIR [--threshold X]
    cuvis-graph export   MODEL_DIR --format onnx [-o FILE]

Overrides are Hydra overrides: ``training.trainer.max_epochs=3``,
``nodes.rx.params.eps=1e-9``, config groups next to the pipeline file (``data=abu_mat``,
``training=fast``), ``+key=value`` to add a key. With ``-m/--multirun`` comma-separated
values (``a=1,2``, ``range(...)``, ``choice(...)``) are swept: every combination is
validated first, then each trains into its own run directory. Under DDP
(``training.trainer.devices=2 training.trainer.strategy=ddp``) Lightning runs the command
again for ranks 1..N-1; those join rank 0's run directory and print nothing.

``--plugin FILE.py|MODULE`` (repeatable, every command but ``runs``) imports the user's own
code first, so that the types it registers can be named (``type: MyNode``). A pipeline or a
saved model never imports code itself; a model says which ``--plugin`` it needs.

Errors exit with status 1 and one message naming the place (YAML path, node, override);
``--debug`` adds the traceback. Nothing is written before the pipeline validates.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.train.distributed import RUN_DIR_ENV, worker_rank

__all__ = ["main", "build_parser"]

PROG = "cuvis-graph"


# -- helpers ----------------------------------------------------------------------------------
def _out(text: str = "") -> None:
    print(text, flush=True)


_THRESHOLD_FREE = ("auroc", "average_precision")


def _metric_order(key: str) -> tuple[str, int, str]:
    """Split (``val/``, ``test/``...) first, then threshold-free metrics (AUROC, AP), then the rest."""
    split, _, rest = key.partition("/")
    return split, 0 if rest.endswith(_THRESHOLD_FREE) else 1, rest


def _value(v: float | None) -> str:
    return "undefined" if v is None else format(v, ".6g")


def _format_metrics(metrics: dict[str, float | None], indent: str = "  ",
                    before: dict[str, float | None] | None = None) -> str:
    """One line per metric, threshold-free first; ``before -> after`` where ``before`` has it."""
    if not metrics:
        return f"{indent}(none)"
    width = max(len(k) for k in metrics)
    lines = []
    for k, v in sorted(metrics.items(), key=lambda kv: _metric_order(kv[0])):
        shown = f"{_value(before[k])} -> {_value(v)}" if before and k in before else _value(v)
        lines.append(f"{indent}{k:<{width}}  {shown}")
    return "\n".join(lines)


def _artifact_lines(graph: Any, run_dir: Path) -> list[str]:
    """Where to look next: figures, TensorBoard (with the command), W&B files."""
    lines = []
    figures = sorted((run_dir / "artifacts").rglob("*.png")) if (run_dir / "artifacts").is_dir() else []
    if figures:
        lines.append(f"figures: {run_dir / 'artifacts'} ({len(figures)} PNG)")
    for monitor in getattr(graph, "monitors", []):
        kind = type(monitor).__name__
        if kind == "TensorBoardMonitor" and getattr(monitor, "root", None) is not None:
            lines.append(f"tensorboard: tensorboard --logdir {monitor.root} --host 127.0.0.1")
        elif kind == "WandBMonitor" and getattr(monitor, "save_dir", None) is not None:
            lines.append(f"wandb: {monitor.save_dir} (offline runs: wandb sync {monitor.save_dir}/wandb/offline-run-*)")
    return lines


def _load(args: argparse.Namespace, overrides: Sequence[str] | None = None, check: bool = True) -> Any:
    from cuvis_graph.io.spec import load_pipeline

    return load_pipeline(args.pipeline, list(args.overrides if overrides is None else overrides),
                         allow_modules=args.allow_module or [], check=check)


def _save_predictions(pipeline: Any, run_dir: Path) -> Path:
    """Sink outputs of the graph over the datamodule's prediction data -> ``predictions.npz``."""
    import numpy as np
    import torch

    dm = pipeline.datamodule
    loader = dm.predict_dataloader() if hasattr(dm, "predict_dataloader") else dm.val_dataloader()
    arrays: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        outputs = pipeline.graph.predict(batch)
        for name, tensor in outputs.items():
            arrays.setdefault(name, []).append(tensor.detach().cpu().numpy())
        if isinstance(batch.get("mask"), torch.Tensor):
            arrays.setdefault("mask", []).append(batch["mask"].numpy())
    path = run_dir / "predictions.npz"
    tmp = run_dir / ".predictions.tmp.npz"
    np.savez_compressed(tmp, **{k: np.concatenate(v) for k, v in arrays.items()})
    tmp.replace(path)
    return path


# -- commands ---------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    graph = pipeline.graph
    dm = pipeline.datamodule
    spec = dm.data_spec() if hasattr(dm, "data_spec") else None
    channels = f", {spec.n_channels} channels" if spec is not None and spec.n_channels else ""
    stages = pipeline.training.resolved_stages()
    epochs = sum(stage.max_epochs for stage in stages)
    mode = "statistical initialization only" if epochs == 0 else f"{epochs} epoch(s) of training"
    if pipeline.training.stages:
        mode += " in stages " + " -> ".join(f"{s.name} ({s.max_epochs})" for s in stages)
    n, m = len(graph.nodes), len(graph.leaves)
    _out(f"OK: {args.pipeline}: pipeline '{pipeline.name}' is valid: {n} node{'s' * (n != 1)}, "
         f"{m} lea{'ves' if m != 1 else 'f'}, data {type(dm).__name__}{channels}, {mode}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs [DIR]``: the runs under DIR, newest first; ``--watch`` refreshes while one is running."""
    import time

    from cuvis_graph.cli.run_list import format_runs, run_rows

    while True:
        rows = run_rows(args.folder)
        if args.watch and sys.stdout.isatty():
            print("\033[2J\033[H", end="")  # clear the terminal between refreshes
        _out(format_runs(rows, args.folder))
        if not args.watch or not any(r.status == "running" for r in rows):
            return 0
        time.sleep(args.interval)
        _out()


def cmd_print_config(args: argparse.Namespace) -> int:
    """``--cfg job``: the composed pipeline as YAML (every sweep job with ``-m``); nothing runs."""
    from cuvis_graph.io.spec import expand_sweeps, load_config

    multirun = bool(getattr(args, "multirun", False))
    jobs = expand_sweeps(args.overrides, args.pipeline) if multirun else [list(args.overrides)]
    for i, job in enumerate(jobs):
        config, _ = load_config(args.pipeline, job, allow_modules=args.allow_module or [])
        if multirun:
            _out(f"# job {i + 1}/{len(jobs)}: {' '.join(job) or '(no overrides)'}")
        _out(yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip("\n"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cuvis_graph.errors import CompileError
    from cuvis_graph.io import render
    from cuvis_graph.io.output_paths import check_output_file
    from cuvis_graph.io.runs import atomic_write_text
    from cuvis_graph.io.spec import SpecError

    pipeline = _load(args, check=False)
    dm = pipeline.datamodule
    data = dm.data_spec() if hasattr(dm, "data_spec") else None
    try:
        plan = pipeline.graph.compile(dm)
    except CompileError as exc:
        raise SpecError(pipeline.source, exc.problems) from None
    if args.format == "png":
        output = check_output_file(f"{Path(args.pipeline).stem}.png" if args.output is None else args.output, "-o/--output",
                                   (Path(args.pipeline),))
        render.to_png(pipeline.graph, plan, output, data)
        _out(f"wrote {output}")
        return 0
    text = render.to_mermaid(pipeline.graph, plan, data) if args.format == "mermaid" else render.to_text(
        pipeline.graph, plan, data)
    if args.output is not None:
        output = check_output_file(args.output, "-o/--output", (Path(args.pipeline),))
        atomic_write_text(output, text if text.endswith("\n") else text + "\n")
        _out(f"wrote {output}")
    else:
        _out(text.rstrip("\n"))
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from cuvis_graph.core.catalog import catalog_markdown, catalog_text
    from cuvis_graph.io.output_paths import check_output_file
    from cuvis_graph.io.runs import atomic_write_text

    text = catalog_markdown() if args.markdown else catalog_text()
    if args.output is not None:
        output = check_output_file(args.output, "-o/--output")
        atomic_write_text(output, text)
        _out(f"wrote {output}")
    else:
        _out(text.rstrip("\n"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cuvis_graph.io.spec import expand_sweeps

    if args.multirun and args.resume:
        raise CuvisGraphError("--resume continues one run; it cannot be combined with -m/--multirun")
    jobs = expand_sweeps(args.overrides, args.pipeline) if args.multirun else [list(args.overrides)]
    # validate every job before anything is written
    pipelines = [_load(args, job) for job in jobs]
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
    from cuvis_graph.io.runs import new_sweep_dir, read_run_json

    first = pipelines[0]
    folder = new_sweep_dir(args.runs_dir or first.training.run.root, first.name)
    sweep = [SweepJob(i, job, run_dir=folder / f"{i:03d}") for i, job in enumerate(jobs)]
    write_summary(folder, sweep)
    _out(f"multirun: {len(jobs)} job(s) in {folder}")
    for i, (job, entry) in enumerate(zip(jobs, sweep, strict=True)):
        pipeline, pipelines[i] = pipelines[i], None  # free the previous job's data as we go
        _out(f"\n[{i + 1}/{len(jobs)}] {' '.join(job) or '(no overrides)'}")
        args.run_dir = entry.run_dir
        try:
            _train_one(args, pipeline, job)
        except CuvisGraphError as exc:
            entry.error = shorten(str(exc).splitlines()[0], 200)
            print(f"job {i} failed: {entry.error}", file=sys.stderr, flush=True)
        try:
            record = read_run_json(entry.run_dir)
            entry.status, entry.metrics, entry.best = str(record["status"]), record.get("metrics") or {}, \
                record.get("best")
        except CuvisGraphError:
            entry.status = "failed"
        write_summary(folder, sweep)
    _out("\nsweep summary:")
    _out(format_summary(sweep))
    _out(f"summary: {folder / 'summary.csv'}")
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
    from cuvis_graph.io.runs import resume_target

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
    _out(f"resuming run {run.path} with its recorded overrides: {' '.join(kept)}")
    effective = kept + list(overrides)
    return [effective], [_load(args, effective)]


def _train_one(args: argparse.Namespace, pipeline: Any, overrides: list[str]) -> tuple[Path, dict[str, float]]:
    from cuvis_graph.io.runs import atomic_write_text, open_run

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
    run = open_run(pipeline.name, root=root, run_dir=run_dir_arg, resume=resume)
    run_dir = run.path
    if not run.resuming:
        atomic_write_text(run_dir / "pipeline.yaml", pipeline.resolved_yaml())  # re-runnable as it is
    try:
        result = pipeline.graph.train(pipeline.datamodule, pipeline.training, run_dir=run_dir, pipeline_spec=spec,
                                      resume=(run.resume_checkpoint or run_dir) if run.resuming else None)
    except CuvisGraphError as exc:
        if str(exc).startswith(f"run {run_dir}"):  # already names the run (e.g. a refused resume)
            raise
        raise CuvisGraphError(f"run {run_dir} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - reported with the run directory; --debug shows the chain
        raise CuvisGraphError(f"run {run_dir} failed: {type(exc).__name__}: {exc} "
                              f"(traceback in {run_dir / 'logs' / 'traceback.txt'})") from exc
    if args.save_predictions:
        path = _save_predictions(pipeline, run_dir)
        _out(f"predictions: {path}")
    _out(f"run directory: {run_dir}")
    if result.model_dir is not None:
        plugins = "".join(f" --plugin {plugin}" for plugin in getattr(args, "plugin", None) or [])
        _out(f"model: {result.model_dir}  (cuvis-graph predict {result.model_dir} INPUT... --out DIR{plugins})")
    for line in _artifact_lines(pipeline.graph, run_dir):
        _out(line)
    _out("metrics (after statistical init -> final):" if result.initial_metrics else "final metrics:")
    _out(_format_metrics(result.metrics, before=result.initial_metrics))
    for failure in result.failures:
        _out(f"note: {failure.get('kind', 'side effect')} '{failure.get('name')}' failed and was disabled: "
             f"{failure.get('error')}")
    return run_dir, result.metrics


def config_groups(folder: Path) -> dict[str, list[str]]:
    """Hydra config groups next to a pipeline: sub-folder -> its ``*.yaml`` options."""
    if not folder.is_dir():
        return {}
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(folder.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}


def _config_groups_help(argv: Sequence[str]) -> str:
    """After ``train|validate|show [PIPELINE] --help``: the config groups a pipeline there can swap
    (those next to PIPELINE, else in ./pipelines)."""
    if not argv or argv[0] not in ("train", "validate", "show"):
        return ""
    pipeline = next((a for a in argv[1:] if a.endswith((".yaml", ".yml")) and not a.startswith("-")), None)
    folder = Path(pipeline).parent if pipeline else Path("pipelines")
    groups = config_groups(folder)
    if not groups:
        return ""
    where = f"next to {pipeline}" if pipeline else f"in {folder}/ (name a pipeline to see its own)"
    lines = [f"\nconfig groups {where} (swap one with GROUP=OPTION, e.g. "
             f"{next(iter(groups))}={groups[next(iter(groups))][0]}):"]
    lines += [f"  {group}: {', '.join(options)}" for group, options in groups.items()]
    return "\n".join(lines)


def _path_arg(text: str) -> str:
    """argparse type: a path that is not empty; ``~`` expanded (as a shell would)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return os.path.expanduser(text)


def _finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``/``inf`` are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    """Score cube files with a saved model; 0 all ok, 2 some inputs failed, 1 none succeeded."""
    from cuvis_graph.io.prediction import predict_files
    from cuvis_graph.io.saving import load_graph

    graph = load_graph(args.model_dir, allow_modules=args.allow_module or [])
    summary = predict_files(graph, args.inputs, args.out, threshold=args.threshold, quantile=args.quantile,
                            output=args.output, progress=not args.no_progress, recursive=args.recursive)
    n_ok, n_failed = len(summary.ok), len(summary.failed)
    _out(f"scored {n_ok} of {n_ok + n_failed} input(s) with '{summary.score_output}' (mask: {summary.mask_source})")
    if summary.not_taken:
        _out(f"note: {summary.not_taken} cube file(s) in sub-folders of the input folders were not taken; "
             "add --recursive to score them too")
    for result in summary.failed:
        _out(f"  failed: {result.error}")
    _out(f"summary: {summary.summary_path}")
    if n_failed and not n_ok:
        raise CuvisGraphError(f"no input could be scored; see {summary.summary_path}")
    if n_failed:  # partial failure: exit status 2 with one error line (the rest was written)
        print(f"error: {n_failed} of {n_ok + n_failed} input(s) could not be scored (first: "
              f"{summary.failed[0].path}); see {summary.summary_path}", file=sys.stderr, flush=True)
        return 2
    return 0


def _test_data_config(args: argparse.Namespace, run: Path | None, model: Path) -> tuple[dict[str, Any], str]:
    """The pipeline mapping ``build_pipeline`` turns into the test datamodule: the saved model's
    nodes and leaves, with the ``data`` section of the run's ``pipeline.yaml`` (else the default
    data), a config group ``data=NAME`` from ``--config-dir``, then the other data overrides."""
    from cuvis_graph.io.spec import load_config, read_pipeline_file

    config = read_pipeline_file(model / "pipeline.yaml")
    config.pop("data", None)
    source = "the default data"
    if run is not None and (run / "pipeline.yaml").is_file():
        data = read_pipeline_file(run / "pipeline.yaml").get("data")
        if data:
            config["data"], source = data, f"the data of {run / 'pipeline.yaml'}"
    overrides = []
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~").split(".")[0] != "data":
            raise CuvisGraphError(f"test: override '{item}' is not a data override (data.params.KEY=VALUE, "
                                  "data=GROUP); the model's nodes and leaves are evaluated as saved")
        if key == "data" and value:
            folder = Path(args.config_dir or "pipelines")
            group = folder / "data" / f"{value}.yaml"
            if not group.is_file():
                raise CuvisGraphError(f"test: {item}: no config group file {group} (set --config-dir to the folder "
                                      "holding data/)")
            config["data"], source = read_pipeline_file(group), f"config group {group}"
        else:
            overrides.append(item)
    composed, _ = load_config(config, overrides, args.allow_module or [])
    return composed, source + (f" with {' '.join(overrides)}" if overrides else "")


def cmd_test(args: argparse.Namespace) -> int:
    """Evaluate a trained graph's losses and metric leaves on labelled data."""
    from cuvis_graph.core.graph import quiet_lightning
    from cuvis_graph.io.saving import load_graph
    from cuvis_graph.io.spec import build_pipeline
    from cuvis_graph.train.training import evaluate_graph

    target = Path(args.target)
    run = target if (target / "run.json").is_file() else (target.parent if (target.parent / "run.json").is_file()
                                                           else None)
    model = target / "model" if run == target else target
    if not (model / "pipeline.yaml").is_file():
        raise CuvisGraphError(f"test: {target} is neither a run folder with model/ nor a saved model "
                              "(pipeline.yaml, weights.safetensors)")
    graph = load_graph(model, allow_modules=args.allow_module or [])
    config, source = _test_data_config(args, run, model)
    datamodule = build_pipeline(config, str(model / "pipeline.yaml"), args.allow_module or [],
                                check=False).datamodule
    quiet_lightning()
    metrics = evaluate_graph(graph, datamodule, args.split)
    split = next(iter(metrics)).split("/", 1)[0] if metrics else args.split
    _out(f"model: {model}")
    _out(f"data: {type(datamodule).__name__} from {source}; split '{split}'"
         + (" (the data has no test split)" if split == "val" and args.split == "auto" else ""))
    _out("metrics:")
    _out(_format_metrics(metrics))
    if args.output:
        from cuvis_graph.io.runs import atomic_write_json

        finite = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
        atomic_write_json(args.output, {"model": str(model), "split": split, "metrics": finite})
        _out(f"wrote {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cuvis_graph.io.export import export_onnx_report
    from cuvis_graph.io.saving import load_graph

    graph = load_graph(args.model_dir, allow_modules=args.allow_module or [])
    model = Path(args.model_dir).resolve()
    output = Path(args.output) if args.output else model.with_name(f"{model.name}.onnx")  # never inside the model
    path, report = export_onnx_report(graph, output, opset=args.opset, n_channels=args.n_channels, check=True)
    _out(f"wrote {path} (opset {args.opset}; onnxruntime vs eager: {report})")
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Declarative graph pipelines for hyperspectral ML: validate, show and train "
                               "YAML pipelines.",
        epilog="Run '%(prog)s COMMAND --help' for each command's options.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    plugged = argparse.ArgumentParser(add_help=False, parents=[common])
    plugged.add_argument("--plugin", action="append", metavar="FILE.py|MODULE",
                         help="import FILE.py (or the module MODULE) first, so that the types it registers with "
                              "@register can be named (type: MyNode); repeatable")
    piped = argparse.ArgumentParser(add_help=False, parents=[plugged])
    piped.add_argument("pipeline", help="pipeline YAML file (config groups are looked up next to it)")
    piped.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                       help="Hydra overrides: key=value, group=option, +key=value (add), ~key (delete)")
    piped.add_argument("--allow-module", action="append", metavar="MODULE",
                       help="allow '_target_' classes from MODULE (and its submodules); repeatable")
    piped.add_argument("--cfg", choices=["job"], metavar="job",
                       help="print the composed pipeline (config groups and overrides applied) and exit "
                            "without running (Hydra's --cfg job)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", parents=[piped], help="validate, then train a pipeline into a run directory",
                           description="Validate the pipeline, then fit statistics and train it with Lightning.\n"
                                       "Each run goes to <runs root>/<pipeline name>/<YYYYMMDD_HHMMSS_mmm>/ with\n"
                                       "config.yaml (the resolved config), pipeline.yaml (re-runnable), run.json,\n"
                                       "metrics.jsonl, artifacts/ and checkpoints/. The end prints the run directory\n"
                                       "and the final metrics. Nothing is written unless the pipeline validates.",
                           epilog="examples:\n  cuvis-graph train pipelines/rx_statistical.yaml\n"
                                  "  cuvis-graph train pipelines/selector_rx_bce.yaml training=fast "
                                  "nodes.selector.params.n_select=10\n"
                                  "  cuvis-graph train pipelines/rx_real_mat.yaml data.params.path=scene.mat\n"
                                  "  cuvis-graph train -m pipelines/selector_rx_bce.yaml "
                                  "training.optimizer.lr=0.01,0.001",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    one_run = train.add_mutually_exclusive_group()
    one_run.add_argument("-m", "--multirun", action="store_true",
                         help="sweep comma-separated override values; one run directory per combination")
    one_run.add_argument("--run-dir", metavar="DIR", type=_path_arg,
                         help="train into DIR (created if needed) instead of a new folder under --runs-dir; on a "
                              "cluster give every process the same DIR on shared storage: rank 0 writes it, the "
                              "other ranks join it (docs/distributed.md)")
    train.add_argument("--resume", metavar="auto|RUN_DIR|CKPT",
                       help="continue a run from its last checkpoint / current stage, or from CKPT (a .ckpt file "
                            "in the run); 'auto': the newest run of this pipeline. The pipeline must be the run's "
                            "own (training.trainer.max_epochs may grow)")
    train.add_argument("--runs-dir", metavar="DIR", type=_path_arg, help="root of the run directories (default: training.run.root, "
                                                         "'runs')")
    train.add_argument("--save-predictions", action="store_true",
                       help="also store the sink outputs over the prediction data as predictions.npz")
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("runs", parents=[common], help="list the runs under a folder, newest first",
                          description="List the runs under FOLDER (default: runs) from their run.json files: start, "
                                      "pipeline, status (a dead 'running' reads as 'killed'), duration, key metrics, "
                                      "folder.")
    runs.add_argument("folder", nargs="?", default=os.environ.get("CUVIS_GRAPH_RUNS_ROOT", "runs"), type=_path_arg,
                      help="folder to search (default: $CUVIS_GRAPH_RUNS_ROOT or runs)")
    runs.add_argument("--watch", action="store_true", help="refresh while a run is going")
    runs.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh interval (default 2)")
    runs.set_defaults(func=cmd_runs)

    validate = sub.add_parser("validate", parents=[piped], help="check a pipeline without training",
                              description="Compose, validate and compile the pipeline against the datamodule's "
                                          "declared spec (channels, batch keys); reads no data. Exit status 0 "
                                          "when valid, 1 with every problem listed otherwise.")
    validate.set_defaults(func=cmd_validate)

    show = sub.add_parser("show", parents=[piped], help="draw the graph (text, mermaid or png)",
                          description="The graph with node types and port shapes (C from the datamodule).")
    show.add_argument("--format", choices=("text", "mermaid", "png"), default="text", help="output format")
    show.add_argument("-o", "--output", metavar="FILE", help="write here (png default: <pipeline name>.png)")
    show.set_defaults(func=cmd_show)

    nodes = sub.add_parser("nodes", parents=[plugged], help="list the registered node, leaf, monitor and data types",
                           description="The registry: each type's ports, parameters (type, default) and summary.")
    nodes.add_argument("--markdown", action="store_true", help="Markdown instead of plain text")
    nodes.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    nodes.set_defaults(func=cmd_nodes)

    test = sub.add_parser("test", parents=[plugged], help="evaluate a trained graph's metrics on labelled data",
                          description="Load a trained graph (a run folder: its model/; or a model folder) and\n"
                                      "evaluate its loss and metric leaves on the test split of the data, or on\n"
                                      "the validation split when there is no test split (the output says which).\n"
                                      "The data are the run's own (its pipeline.yaml), else the default synthetic\n"
                                      "scenes, changed by data overrides as in 'train'. The numbers are those the\n"
                                      "end of training records in run.json for the same weights (test_best/... for\n"
                                      "the best checkpoint the run ships as model/, test/... for final weights).",
                          epilog="examples:\n  cuvis-graph test runs/selector_rx_bce/20250101_120000_000\n"
                                 "  cuvis-graph test runs/selector_rx_bce/20250101_120000_000 data.params.n_test=8\n"
                                 "  cuvis-graph test model/ data=abu_mat data.params.path=scene.mat",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    test.add_argument("target", metavar="RUN_OR_MODEL", help="a run folder or a folder written by graph.save()")
    test.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                      help="data overrides: data.params.KEY=VALUE, data=GROUP (a file GROUP.yaml in "
                           "<config-dir>/data/)")
    test.add_argument("--split", choices=("auto", "test", "val"), default="auto",
                      help="which split to evaluate (default auto: test, else val)")
    test.add_argument("-o", "--output", metavar="FILE", help="also write the metrics (full precision) as JSON")
    test.add_argument("--config-dir", metavar="DIR", help="folder holding the config groups for data=GROUP "
                                                          "(default: ./pipelines)")
    test.add_argument("--allow-module", action="append", metavar="MODULE",
                      help="allow '_target_' classes from MODULE (and its submodules); repeatable")
    test.set_defaults(func=cmd_test)

    predict = sub.add_parser("predict", parents=[plugged], help="score cube files with a saved model",
                             description="Load a model saved with graph.save(DIR) and score every input\n"
                                         "(.npy, .npz, .mat, ENVI .hdr; files or folders). Writes\n"
                                         "<out>/<stem>/scores.npy, mask.npy, overlay.png and <out>/summary.csv.\n"
                                         "A file that cannot be read, has the wrong channel count, NaN/Inf values\n"
                                         "or other wavelengths than the model's is reported and skipped. An\n"
                                         "existing --out is replaced whole, only if it holds an earlier prediction.\n"
                                         "Exit status 0 when every input was scored, 2 when some\n"
                                         "failed, 1 on a fatal error (bad model directory, nothing scored).",
                             epilog="example:\n  cuvis-graph predict model/ scenes/ extra.mat --out predictions/",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by graph.save()")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="cube files or folders of cube files")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder")
    predict.add_argument("--threshold", type=_finite_float, metavar="X",
                         help="mask = score > X (default: the graph's decider, else the per-image quantile)")
    predict.add_argument("--quantile", type=float, default=0.99, metavar="Q",
                         help="without decider or --threshold: mask = score > the Q-quantile of the image's "
                              "scores (default 0.99)")
    predict.add_argument("--output", metavar="NODE", help="score output 'node' or 'node.port' (default: the "
                                                          "last per-pixel score before any decider)")
    predict.add_argument("--recursive", action="store_true",
                         help="also score the cube files in sub-folders of input folders (results keep the "
                              "sub-folder: <out>/<sub>/<stem>/)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.add_argument("--allow-module", action="append", metavar="MODULE",
                         help="allow '_target_' classes from MODULE (and its submodules); repeatable")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", parents=[plugged], help="export a saved model's inference graph (ONNX)",
                            description="Export the inference path of a saved model to ONNX: input 'cube' "
                                        "[B,H,W,C] float32 with dynamic B, H, W; outputs named after the sink "
                                        "nodes. The file is checked with onnxruntime against eager inference.")
    export.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by graph.save()")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    export.add_argument("-o", "--output", metavar="FILE", help="output file, outside the model folder (default: "
                                                                   "MODEL_DIR.onnx beside the folder)")
    export.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset version (default 17)")
    export.add_argument("--n-channels", type=int, metavar="C", help="input channels when the model does not "
                                                                    "record them")
    export.add_argument("--allow-module", action="append", metavar="MODULE",
                        help="allow '_target_' classes from MODULE (and its submodules); repeatable")
    export.set_defaults(func=cmd_export)
    return parser


def _version() -> str:
    from cuvis_graph import __version__

    return __version__


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args, extras = parser.parse_known_args(list(argv))
    unknown = [e for e in extras if e.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extras:
        args.overrides = list(args.overrides) + extras
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 1 error, 2 usage error, 130 interrupted
    (SIGINT), 143 terminated (SIGTERM, recorded as ``terminated`` in the run))."""
    from cuvis_graph.io.runs import Terminated

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code in (0, None) and {"-h", "--help"} & set(argv):
            _out(_config_groups_help(argv))
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    debug = bool(getattr(args, "debug", False))
    try:
        _load_plugins(args)
        if getattr(args, "cfg", None):
            return cmd_print_config(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `cuvis-graph show ... | head`: the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt as exc:
        print(f"{PROG}: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"{PROG}: terminated: {exc}", file=sys.stderr, flush=True)
        return 143
    except CuvisGraphError as exc:
        _report(exc, debug, expected=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command line reports, never dumps, unless --debug
        _report(exc, debug, expected=False)
        return 1


def _load_plugins(args: argparse.Namespace) -> None:
    """``--plugin``: import each file or module the user named, before anything reads a pipeline."""
    from cuvis_graph.io.plugins import load_plugin

    for plugin in getattr(args, "plugin", None) or []:
        load_plugin(plugin)


def _report(exc: BaseException, debug: bool, expected: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        for cause in getattr(exc, "causes", []):
            traceback.print_exception(cause, file=sys.stderr)
    message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
    hint = "" if debug or expected else f"\n(run '{PROG} --debug ...' for the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
