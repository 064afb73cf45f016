"""What the command line prints: metric tables, where to look next, and errors.

Errors are one line on stderr (``error: ...``) naming the place; ``--debug`` adds the
traceback (and those of the collected causes).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["PROG", "out", "format_metrics", "artifact_lines", "report_error"]

PROG = "cuvis-graph"


def out(text: str = "") -> None:
    print(text, flush=True)


_THRESHOLD_FREE = ("auroc", "average_precision")


def _metric_order(key: str) -> tuple[str, int, str]:
    """Split (``val/``, ``test/``...) first, then threshold-free metrics (AUROC, AP), then the rest."""
    split, _, rest = key.partition("/")
    return split, 0 if rest.endswith(_THRESHOLD_FREE) else 1, rest


def _value(v: float | None) -> str:
    return "undefined" if v is None else format(v, ".6g")


def format_metrics(metrics: dict[str, float | None], indent: str = "  ",
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


def artifact_lines(graph: Any, run_dir: Path) -> list[str]:
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


def report_error(exc: BaseException, debug: bool, expected: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        for cause in getattr(exc, "causes", []):
            traceback.print_exception(cause, file=sys.stderr)
    message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
    hint = "" if debug or expected else f"\n(run '{PROG} --debug ...' for the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr, flush=True)
