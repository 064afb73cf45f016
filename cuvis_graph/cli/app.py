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

Modules: :mod:`.parser` (arguments), :mod:`.pipeline_commands` (validate, show, nodes,
``--cfg``), :mod:`.train_commands` (train, sweeps), :mod:`.model_commands` (test, predict,
export), :mod:`.run_list` (runs), :mod:`.output` (printing and error reports). Only the
commands that train or evaluate import Lightning.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from cuvis_graph.cli.output import PROG, out, report_error
from cuvis_graph.cli.parser import build_parser, config_groups_help
from cuvis_graph.cli.pipeline_commands import cmd_print_config
from cuvis_graph.errors import CuvisGraphError

__all__ = ["main", "build_parser"]


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
    (SIGINT), 143 terminated (SIGTERM: stops any command as Ctrl-C does; recorded as ``terminated``
    in a run))."""
    from cuvis_graph.io.runs import Terminated, sigterm_raises

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code in (0, None) and {"-h", "--help"} & set(argv):
            out(config_groups_help(argv))
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    debug = bool(getattr(args, "debug", False))
    try:
        _load_plugins(args)
        if getattr(args, "cfg", None):
            return cmd_print_config(args)
        with sigterm_raises():  # SIGTERM stops a command the way Ctrl-C does: partial outputs removed
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
        report_error(exc, debug, expected=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command line reports, never dumps, unless --debug
        report_error(exc, debug, expected=False)
        return 1


def _load_plugins(args: argparse.Namespace) -> None:
    """``--plugin``: import each file or module the user named, before anything reads a pipeline."""
    from cuvis_graph.io.plugins import load_plugin

    for plugin in getattr(args, "plugin", None) or []:
        load_plugin(plugin)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
