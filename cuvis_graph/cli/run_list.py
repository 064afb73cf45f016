"""``cuvis-graph runs [DIR]``: the runs under a folder, newest first, read from their ``run.json``.

Each row: start time, pipeline, status (a ``running`` record whose process is gone reads as
``killed``, see :func:`~cuvis_graph.io.runs.read_run_json`), duration, up to three key metrics
(threshold-free first: AUROC, AP, then F1, then losses) and the run folder. A record that
cannot be read is listed with status ``unreadable`` and the reason, never skipped in silence.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cuvis_graph.cli.output import out
from cuvis_graph.errors import CuvisGraphError

__all__ = ["cmd_runs", "RunRow", "find_run_records", "run_rows", "format_runs", "KEY_METRIC_ORDER"]

#: Metric name endings in the order they are shown.
KEY_METRIC_ORDER = ("auroc", "average_precision", "f1", "val/loss", "train/loss")
_MAX_DEPTH = 5  # <root>/<pipeline>/<stamp>/run.json, sweeps one or two levels deeper


@dataclass
class RunRow:
    """One run as listed."""

    path: Path
    pipeline: str
    status: str
    started: _dt.datetime | None
    seconds: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def find_run_records(root: str | os.PathLike) -> list[Path]:
    """Folders under ``root`` (itself included) holding a ``run.json``; links are not followed."""
    root = Path(root)
    if not root.is_dir():
        raise CuvisGraphError(f"runs folder {root}: no such folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).relative_to(root).parts)
        if "run.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's own folders hold no other runs
        elif depth >= _MAX_DEPTH:
            dirnames[:] = []
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def _time(text: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def run_rows(root: str | os.PathLike) -> list[RunRow]:
    """Every run under ``root``, newest first."""
    from cuvis_graph.io.runs import read_run_json

    rows = []
    for folder in find_run_records(root):
        try:
            record = read_run_json(folder)
        except CuvisGraphError as exc:
            rows.append(RunRow(folder, folder.parent.name, "unreadable", None, None, note=str(exc)))
            continue
        started = _time(record.get("started_at") or record.get("created_at"))
        ended = _time(record.get("ended_at"))
        seconds = (ended - started).total_seconds() if started and ended else None
        if seconds is None and started is not None and record.get("status") == "running":
            seconds = (_dt.datetime.now(started.tzinfo) - started).total_seconds()
        rows.append(RunRow(folder, str(record.get("pipeline") or folder.parent.name), str(record.get("status")),
                           started, seconds, dict(record.get("metrics") or {})))
    oldest = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    return sorted(rows, key=lambda r: r.started or oldest, reverse=True)


def _key_metrics(rows: list[RunRow], limit: int = 3) -> list[str]:
    """Up to ``limit`` metric names worth a column, in :data:`KEY_METRIC_ORDER`."""
    names = sorted({k for r in rows for k, v in r.metrics.items() if isinstance(v, int | float)})
    chosen: list[str] = []
    for ending in KEY_METRIC_ORDER:
        for name in names:
            loss = ending.endswith("/loss")
            if name not in chosen and (name == ending if loss else
                                       name.endswith("/" + ending) and name.startswith(("val/", "test/"))):
                chosen.append(name)
    return chosen[:limit]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def format_runs(rows: list[RunRow], root: str | os.PathLike) -> str:
    """The rows as an aligned text table (or a line saying there are none)."""
    if not rows:
        return f"no runs under {root}"
    keys = _key_metrics(rows)
    header = ["started", "pipeline", "status", "time", *keys, "run"]
    table = [header]
    for r in rows:
        values = [f"{r.metrics[k]:.4g}" if isinstance(r.metrics.get(k), int | float) else "-" for k in keys]
        try:
            where = str(r.path.relative_to(root))
        except ValueError:
            where = str(r.path)
        table.append([r.started.strftime("%Y-%m-%d %H:%M:%S") if r.started else "-", r.pipeline, r.status,
                      _duration(r.seconds), *values, where + (f"  ({r.note})" if r.note else "")])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
                     for row in table)


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs [DIR]``: the runs under DIR, newest first; ``--watch`` refreshes while one is running."""
    import time

    while True:
        rows = run_rows(args.folder)
        if args.watch and sys.stdout.isatty():
            print("\033[2J\033[H", end="")  # clear the terminal between refreshes
        out(format_runs(rows, args.folder))
        if not args.watch or not any(r.status == "running" for r in rows):
            return 0
        time.sleep(args.interval)
        out()
