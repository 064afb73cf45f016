"""A sweep's own folder and summary: ``<runs>/<pipeline>/sweep_<stamp>/`` holds one run per job
(``000``, ``001``, ...) and ``summary.csv``, one row per job:

``job, overrides, status, run_dir, best_monitor, best_score, <final metrics...>``

The best job is the one with the best recorded ``best.score`` (each run's checkpoint monitor and
mode), else the lowest final ``val/loss``; :func:`format_summary` marks it with ``*``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SweepJob", "best_job", "write_summary", "format_summary", "summary_columns"]


@dataclass
class SweepJob:
    """One job of a sweep: its overrides and what its run recorded."""

    index: int
    overrides: list[str]
    run_dir: Path | None = None
    status: str = "pending"
    metrics: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    error: str = ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def best_job(jobs: Sequence[SweepJob]) -> SweepJob | None:
    """The job with the best ``best.score`` under its monitor's mode, else the lowest ``val/loss``."""
    scored = [(j, _number((j.best or {}).get("score")), (j.best or {}).get("mode", "min")) for j in jobs
              if j.status == "completed"]
    with_score = [(j, s if mode == "min" else -s) for j, s, mode in scored if s is not None]
    if with_score:
        return min(with_score, key=lambda js: js[1])[0]
    with_loss = [(j, _number(j.metrics.get("val/loss"))) for j, _, _ in scored]
    with_loss = [(j, v) for j, v in with_loss if v is not None]
    return min(with_loss, key=lambda jv: jv[1])[0] if with_loss else None


def summary_columns(jobs: Sequence[SweepJob], limit: int = 6) -> list[str]:
    """Final-metric columns: validation/test metrics of any job, threshold-free first, at most ``limit``."""
    names = sorted({k for j in jobs for k, v in j.metrics.items() if _number(v) is not None
                    and k.startswith(("val/", "test/"))})
    first = [n for n in names if n.endswith(("auroc", "average_precision"))]
    return (first + [n for n in names if n not in first])[:limit]


def write_summary(folder: Path, jobs: Sequence[SweepJob]) -> Path:
    """``summary.csv`` in ``folder`` (atomically): one row per job, every final metric."""
    from cuvis_graph.io.atomic import atomic_write_text

    metrics = sorted({k for j in jobs for k in j.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job", "overrides", "status", "run_dir", "best_monitor", "best_score", *metrics])
    for j in jobs:
        best = j.best or {}
        writer.writerow([j.index, " ".join(j.overrides), j.status, str(j.run_dir or ""), best.get("monitor", ""),
                         "" if _number(best.get("score")) is None else best["score"],
                         *("" if _number(j.metrics.get(k)) is None else j.metrics[k] for k in metrics)])
    return atomic_write_text(folder / "summary.csv", buffer.getvalue())


def format_summary(jobs: Sequence[SweepJob]) -> str:
    """The jobs as an aligned table, the best row marked with ``*``."""
    best = best_job(jobs)
    columns = summary_columns(jobs)
    rows = [["", "job", "status", *columns, "overrides"]]
    for j in jobs:
        values = [f"{j.metrics[c]:.4g}" if _number(j.metrics.get(c)) is not None else "-" for c in columns]
        rows.append(["*" if j is best else "", str(j.index), j.status, *values,
                     " ".join(j.overrides) + (f"  ({j.error})" if j.error else "")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    if best is not None:
        monitor = (best.best or {}).get("monitor") or "val/loss"
        lines.append(f"* best: job {best.index} by {monitor}")
    return "\n".join(lines)
