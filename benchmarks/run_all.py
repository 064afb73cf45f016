"""Run every benchmark (P1-P6; REF, the reference workload; ABU, transfer across real scenes; STARTUP, command start-up vs `import torch`), each in its own subprocess, and print one summary table.

Usage: ``python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--threads N]
[--only P1,P3]``. ``make bench`` runs it with the defaults. Exit status 1 when a benchmark
script fails (not when a goal is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "P1": "p1_stat_init.py",
    "P2": "p2_workload.py",
    "P3": "p3_train_step.py",
    "P4": "p4_passes.py",
    "P5": "p5_memory.py",
    "P6": "p6_rx_pca.py",
    "REF": "reference_workload.py",
    "ABU": "abu_transfer.py",
    "STARTUP": "startup.py",
}
RESULT_PREFIX = "RESULT "


def run(label: str, script: str, extra: list[str]) -> tuple[int, list[dict], float]:
    """Run one script, echo its output, return (exit code, RESULT records, seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE / script), *extra], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=HERE.parent)
    records = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            records.append(json.loads(line[len(RESULT_PREFIX):]))
        else:
            print(line, end="", flush=True)
    code = proc.wait()
    return code, records, time.perf_counter() - t0


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="passed to every script")
    parser.add_argument("--only", default=None, help="comma-separated labels, e.g. P1,P3")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --device cuda was requested but torch.cuda.is_available() is False")
    extra = ["--device", args.device] + (["--quick"] if args.quick else [])
    extra += ["--threads", str(args.threads)] if args.threads is not None else []
    labels = [s.strip().upper() for s in args.only.split(",")] if args.only else list(SCRIPTS)
    unknown = [label for label in labels if label not in SCRIPTS]
    if unknown:
        sys.exit(f"error: unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")

    rows = [["bench", "measure", "goal", "measured", "met"]]
    failed = []
    started = time.perf_counter()
    for label in labels:
        code, records, seconds = run(label, SCRIPTS[label], extra)
        print(f"[{label} finished in {seconds:.1f} s, exit {code}]\n", flush=True)
        if code != 0:
            failed.append(label)
            rows.append([label, f"{SCRIPTS[label]} FAILED (exit {code})", "", "", ""])
        for r in records:
            met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
            rows.append([r["bench"], r["what"], r["goal"] or "-", r["display"], met])
    print(f"Summary (device={args.device}{', quick' if args.quick else ''}"
          f"{f', threads={args.threads}' if args.threads else ''}; {time.perf_counter() - started:.0f} s in total)")
    print(table(rows))
    if args.quick:
        print("(--quick: sizes too small for the goals to mean anything; run without --quick to measure)")
    if failed:
        sys.exit(f"error: benchmark(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
