"""STARTUP: how long the command line takes to start, as a ratio of ``python -c "import torch"``.

Four commands, each a fresh process, timed interleaved in one run (medians of the wall times):

* ``python -c "import torch"`` (the baseline: every command that touches a tensor pays it);
* ``cuvis-graph --help``;
* ``cuvis-graph validate pipelines/selector_rx_bce.yaml`` (compose, build, compile against
  the synthetic data's declared spec);
* ``python -c "import cuvis_graph"``.

Goal: ``--help`` and ``validate`` at most 1.5x ``import torch``. Then, untimed, each of
``import cuvis_graph``, ``--help`` and ``validate`` runs once more and lists the heavy
packages it left in ``sys.modules``: Lightning must not be among them (goal), nor
TensorBoard, W&B or matplotlib (printed).

``--quick`` (the smoke test): one round without warm-up, in which each command runs as its
module probe (the same work in ``python -c``), so every command starts once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import header, interleaved, median, parser, print_times, report, setup

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "pipelines/selector_rx_bce.yaml"
HEAVY = ("lightning", "pytorch_lightning", "lightning_fabric", "tensorboard", "wandb", "matplotlib")
GOAL = 1.5


def cli() -> list[str]:
    """The installed ``cuvis-graph`` script beside this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("cuvis-graph")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from cuvis_graph.cli import main; sys.exit(main())"]


def commands() -> dict[str, list[str]]:
    """The timed commands (the first is the baseline)."""
    return {
        "import torch": [sys.executable, "-c", "import torch"],
        "cuvis-graph --help": [*cli(), "--help"],
        f"cuvis-graph validate {PIPELINE}": [*cli(), "validate", PIPELINE],
        "import cuvis_graph": [sys.executable, "-c", "import cuvis_graph"],
    }


def probes() -> dict[str, str]:
    """Python code doing what each timed command (but the baseline) does, for the module probe."""
    return {
        "cuvis-graph --help": cli_probe("--help"),
        f"cuvis-graph validate {PIPELINE}": cli_probe("validate", PIPELINE),
        "import cuvis_graph": "import cuvis_graph",
    }


def run_quietly(argv: list[str]) -> None:
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy top-level packages in ``sys.modules`` after running ``code`` in a fresh process."""
    probe = (code + "\nimport json, sys\n"
             f"print('LOADED=' + json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("LOADED=")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"error: the module probe failed:\n{done.stderr[-2000:]}")
    return json.loads(line.removeprefix("LOADED="))


def cli_probe(*argv: str) -> str:
    return ("from cuvis_graph.cli import main\n"
            f"try:\n    status = main({list(argv)!r})\nexcept SystemExit as exc:\n    status = exc.code\n"
            "assert status in (0, None), status")


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    device = setup(args, repeats=7, quick_repeats=1)
    header("STARTUP", "command start-up vs `import torch` (fresh processes, interleaved)", device, args.quick)
    cmds, codes = commands(), probes()
    loaded: dict[str, list[str]] = {}
    if args.quick:  # one round, in which each command is its own module probe
        candidates = {name: (lambda code=codes[name], name=name: loaded.__setitem__(name, heavy_modules_after(code)))
                      if name in codes else (lambda argv=argv: run_quietly(argv)) for name, argv in cmds.items()}
    else:
        candidates = {name: (lambda argv=argv: run_quietly(argv)) for name, argv in cmds.items()}
    times = interleaved(candidates, repeats=args.repeats, device=device, warmup=0 if args.quick else 1)
    print_times(times, unit="s")
    base = median(times["import torch"])
    for name in list(cmds)[1:3]:
        ratio = median(times[name]) / base
        print(f"  {name:<44s} {ratio:5.2f}x import torch (goal <= {GOAL})")
        report("STARTUP", f"{name.split()[1]} / import torch", ratio, f"<= {GOAL}", ratio <= GOAL, unit="x")
    report("STARTUP", "import cuvis_graph (s)", median(times["import cuvis_graph"]), None, None, unit=" s")

    for name, code in codes.items():
        modules = loaded[name] if name in loaded else heavy_modules_after(code)
        label = " ".join(name.split()[:2])
        print(f"  after {label:<38s} heavy modules loaded: {', '.join(modules) or 'none'}")
        report("STARTUP", f"lightning not loaded by {label}", float("lightning" not in modules), "no lightning",
               "lightning" not in modules, fmt=".0f")


if __name__ == "__main__":
    main()
