"""Commands on a trained model: ``test``, ``predict`` and ``export``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from cuvis_graph.cli.output import format_metrics, out
from cuvis_graph.errors import CuvisGraphError

__all__ = ["cmd_test", "cmd_predict", "cmd_export"]


def cmd_predict(args: argparse.Namespace) -> int:
    """Score cube files with a saved model; 0 all ok, 2 some inputs failed, 1 none succeeded."""
    from cuvis_graph.io.prediction import predict_files
    from cuvis_graph.io.saving import load_graph

    graph = load_graph(args.model_dir, allow_modules=args.allow_module or [])
    summary = predict_files(graph, args.inputs, args.out, threshold=args.threshold, quantile=args.quantile,
                            output=args.output, progress=not args.no_progress, recursive=args.recursive)
    n_ok, n_failed = len(summary.ok), len(summary.failed)
    out(f"scored {n_ok} of {n_ok + n_failed} input(s) with '{summary.score_output}' (mask: {summary.mask_source})")
    if summary.not_taken:
        out(f"note: {summary.not_taken} cube file(s) in sub-folders of the input folders were not taken; "
             "add --recursive to score them too")
    for result in summary.failed:
        out(f"  failed: {result.error}")
    out(f"summary: {summary.summary_path}")
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
    from cuvis_graph.io.saving import load_graph
    from cuvis_graph.io.spec import build_pipeline
    from cuvis_graph.train.quiet import quiet_lightning
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
    with quiet_lightning():
        metrics = evaluate_graph(graph, datamodule, args.split)
    split = next(iter(metrics)).split("/", 1)[0] if metrics else args.split
    out(f"model: {model}")
    out(f"data: {type(datamodule).__name__} from {source}; split '{split}'"
         + (" (the data has no test split)" if split == "val" and args.split == "auto" else ""))
    out("metrics:")
    out(format_metrics(metrics))
    if args.output:
        from cuvis_graph.io.atomic import atomic_write_json

        finite = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
        atomic_write_json(args.output, {"model": str(model), "split": split, "metrics": finite})
        out(f"wrote {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cuvis_graph.io.export import export_onnx_report
    from cuvis_graph.io.saving import load_graph

    graph = load_graph(args.model_dir, allow_modules=args.allow_module or [])
    model = Path(args.model_dir).resolve()
    output = Path(args.output) if args.output else model.with_name(f"{model.name}.onnx")  # never inside the model
    path, report = export_onnx_report(graph, output, opset=args.opset, n_channels=args.n_channels, check=True)
    out(f"wrote {path} (opset {args.opset}; onnxruntime vs eager: {report})")
    return 0
