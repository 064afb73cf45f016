"""Shared helpers of the benchmark scripts: CLI, device checks, interleaved timing, results.

Every script prints human-readable lines and, for the summary of ``run_all.py``, one
``RESULT {json}`` line per measured goal (see :func:`report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

RESULT_PREFIX = "RESULT "


def parser(doc: str | None) -> argparse.ArgumentParser:
    """Argument parser with the common ``--device``, ``--quick`` and ``--repeats``."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the work runs")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of torch and of numpy/scipy/sklearn BLAS (default: the libraries' choice); "
                        "on a machine shared with busy processes, 1 avoids multi-threaded ops stalling on a "
                        "descheduled thread")
    return p


def setup(args: argparse.Namespace, repeats: int, quick_repeats: int = 2) -> torch.device:
    """Validate ``--device``, fill ``args.repeats``, silence library chatter; return the device."""
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was requested but torch.cuda.is_available() is False "
                 f"(torch {torch.__version__}); run with --device cpu")
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else repeats
    if args.threads is not None:
        limit_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("POSSIBLE_USER_WARNINGS", "off")
    return torch.device(args.device)


def limit_threads(threads: int) -> None:
    """Use ``threads`` in torch and in the BLAS/OpenMP pools of numpy, scipy and sklearn."""
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return
    threadpool_limits(limits=threads)


def sync(device: torch.device | str) -> None:
    """Wait for queued accelerator work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rotated(candidates: dict, round_: int) -> list:
    items = list(candidates.items())
    k = round_ % len(items)
    return items[k:] + items[:k]


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each candidate, ``repeats`` times, round-robin (after ``warmup`` rounds).

    Interleaving makes baseline and candidate see the same machine load; the order rotates
    every round so that no candidate always runs first (right after the last one's clean-up).
    """
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + repeats):
        for name, fn in _rotated(candidates, round_):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def interleaved_values(candidates: dict[str, Callable[[], float]], repeats: int,
                       warmup: int = 0) -> dict[str, list[float]]:
    """Like :func:`interleaved`, for candidates that measure themselves and return seconds."""
    values: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + repeats):
        for name, fn in _rotated(candidates, round_):
            value = fn()
            if round_ >= warmup:
                values[name].append(value)
    return values


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_of_medians(times: dict[str, list[float]], num: str, den: str) -> float:
    return median(times[num]) / median(times[den])


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median of the per-round ratios ``num / den`` (both measured back to back)."""
    return median([a / b for a, b in zip(times[num], times[den], strict=True)])


def print_times(times: dict[str, list[float]], unit: str = "ms", labels: dict[str, str] | None = None) -> None:
    """One line per candidate: median and min."""
    scale = {"ms": 1e3, "s": 1.0}[unit]
    for name, values in times.items():
        label = (labels or {}).get(name, name)
        print(f"  {label:<44s} median {median(values) * scale:9.1f} {unit}   min {min(values) * scale:9.1f} {unit}"
              f"   (n={len(values)})")


def report(bench: str, what: str, value: float, goal: str | None = None, met: bool | None = None,
           unit: str = "", fmt: str = ".2f") -> None:
    """Print one ``RESULT`` line that ``run_all.py`` collects into its summary table."""
    record = {"bench": bench, "what": what, "value": value, "display": f"{value:{fmt}}{unit}",
              "goal": goal, "met": met}
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def header(bench: str, title: str, device: torch.device, quick: bool) -> None:
    print(f"{bench} {title}  [device={device.type}, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}{', quick' if quick else ''}]", flush=True)
