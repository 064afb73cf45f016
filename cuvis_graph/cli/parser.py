"""The argument parser of ``cuvis-graph`` and the config-group lines after ``--help``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from cuvis_graph.cli.model_commands import cmd_export, cmd_predict, cmd_test
from cuvis_graph.cli.output import PROG
from cuvis_graph.cli.pipeline_commands import cmd_nodes, cmd_show, cmd_validate
from cuvis_graph.cli.run_list import cmd_runs
from cuvis_graph.cli.train_commands import cmd_train

__all__ = ["build_parser", "config_groups", "config_groups_help"]


def config_groups(folder: Path) -> dict[str, list[str]]:
    """Hydra config groups next to a pipeline: sub-folder -> its ``*.yaml`` options."""
    if not folder.is_dir():
        return {}
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(folder.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}


def config_groups_help(argv: Sequence[str]) -> str:
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
