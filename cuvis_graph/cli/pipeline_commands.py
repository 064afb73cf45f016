"""Commands that read a pipeline without training it: ``validate``, ``show``, ``nodes`` and
``--cfg job``. None of them imports Lightning, TensorBoard, W&B or matplotlib (``show
--format png`` draws with matplotlib)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cuvis_graph.cli.output import out

__all__ = ["load_pipeline_args", "cmd_validate", "cmd_print_config", "cmd_show", "cmd_nodes"]


def load_pipeline_args(args: argparse.Namespace, overrides: Sequence[str] | None = None, check: bool = True) -> Any:
    from cuvis_graph.io.spec import load_pipeline

    return load_pipeline(args.pipeline, list(args.overrides if overrides is None else overrides),
                         allow_modules=args.allow_module or [], check=check)


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = load_pipeline_args(args)
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
    out(f"OK: {args.pipeline}: pipeline '{pipeline.name}' is valid: {n} node{'s' * (n != 1)}, "
         f"{m} lea{'ves' if m != 1 else 'f'}, data {type(dm).__name__}{channels}, {mode}")
    return 0


def cmd_print_config(args: argparse.Namespace) -> int:
    """``--cfg job``: the composed pipeline as YAML (every sweep job with ``-m``); nothing runs."""
    from cuvis_graph.io.spec import expand_sweeps, load_config

    multirun = bool(getattr(args, "multirun", False))
    jobs = expand_sweeps(args.overrides, args.pipeline) if multirun else [list(args.overrides)]
    for i, job in enumerate(jobs):
        config, _ = load_config(args.pipeline, job, allow_modules=args.allow_module or [])
        if multirun:
            out(f"# job {i + 1}/{len(jobs)}: {' '.join(job) or '(no overrides)'}")
        out(yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip("\n"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cuvis_graph.errors import CompileError
    from cuvis_graph.io import render
    from cuvis_graph.io.atomic import atomic_write_text
    from cuvis_graph.io.output_paths import check_output_file
    from cuvis_graph.io.spec import SpecError

    pipeline = load_pipeline_args(args, check=False)
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
        out(f"wrote {output}")
        return 0
    text = render.to_mermaid(pipeline.graph, plan, data) if args.format == "mermaid" else render.to_text(
        pipeline.graph, plan, data)
    if args.output is not None:
        output = check_output_file(args.output, "-o/--output", (Path(args.pipeline),))
        atomic_write_text(output, text if text.endswith("\n") else text + "\n")
        out(f"wrote {output}")
    else:
        out(text.rstrip("\n"))
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from cuvis_graph.core.catalog import catalog_markdown, catalog_text
    from cuvis_graph.io.atomic import atomic_write_text
    from cuvis_graph.io.output_paths import check_output_file

    text = catalog_markdown() if args.markdown else catalog_text()
    if args.output is not None:
        output = check_output_file(args.output, "-o/--output")
        atomic_write_text(output, text)
        out(f"wrote {output}")
    else:
        out(text.rstrip("\n"))
    return 0
