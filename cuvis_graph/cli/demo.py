"""``make demo``: train the default pipeline on the embedded synthetic scenes.

MinMax normalizer -> global RX (trainable) -> logit head, with a BCE loss and detection metrics;
statistics first, then a few epochs of gradient training. Metrics go to
``<run>/metrics.jsonl``, figures to ``<run>/artifacts/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from cuvis_graph import Graph, OptimizerConfig, TrainerConfig, TrainingConfig
from cuvis_graph.data import SyntheticHSIDataModule


def build_graph() -> Graph:
    from cuvis_graph import nodes

    graph = Graph("rx_logit_demo")
    norm = graph.add_node(nodes.MinMaxNormalizer(), name="normalizer")
    rx = graph.add_node(nodes.RXGlobal(trainable_stats=True), parent=norm, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(nodes.AnomalyDetectionMetrics(), parent=head, name="detection")
    for vis in ("AnomalyHeatmap", "ScoreHistogram"):
        if hasattr(nodes, vis):
            graph.add_leaf_node(getattr(nodes, vis)(log_frequency=1), parent=rx, name=f"{vis.lower()}")
    return graph


def cli_command() -> str:
    """How to call ``cuvis-graph`` from this shell: the bare name when it is on ``PATH`` and
    belongs to this interpreter's environment, else the path of this environment's script."""
    script = Path(sys.executable).parent / "cuvis-graph"
    found = shutil.which("cuvis-graph")
    if found and Path(found).resolve() == script.resolve():
        return "cuvis-graph"
    try:
        return os.path.relpath(script)
    except ValueError:  # another drive on Windows
        return str(script)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--root", default="runs")
    args = parser.parse_args(argv)
    graph = build_graph()
    data = SyntheticHSIDataModule()
    print(graph.describe(data))
    config = TrainingConfig(trainer=TrainerConfig(max_epochs=args.epochs), optimizer=OptimizerConfig(lr=0.05))
    result = graph.train(data, config, runs_root=args.root)
    run_dir = result.run_dir
    print(f"\nstatistical init (before training): {result.fit.passes} passes over the training data")
    for key in ("val/detection/f1", "val/detection/auroc", "val/loss"):
        before, after = result.initial_metrics.get(key), result.metrics.get(key)
        if after is not None:
            print(f"  {key:24s} {before:.4f} -> {after:.4f}" if before is not None else f"  {key}: {after:.4f}")
    print(f"\nrun:       {run_dir}  (run.json, config.yaml, checkpoints/, logs/)")
    print(f"metrics:   {run_dir / 'metrics.jsonl'}")
    figures = sorted((run_dir / "artifacts").rglob("*.png")) if (run_dir / "artifacts").exists() else []
    print(f"figures:   {run_dir / 'artifacts'} ({len(figures)} PNG)")
    command = cli_command()
    if result.model_dir is not None:
        print(f"model:     {result.model_dir}")
    print("\nnext, from this folder:")
    print(f"  {command} validate pipelines/selector_rx_bce.yaml")
    print(f"  {command} train pipelines/rx_statistical.yaml")
    if result.model_dir is not None:
        print(f"  {command} predict {result.model_dir} SCENES... --out predictions/")
    if command != "cuvis-graph":
        print(f"  (or 'source {Path(command).parent}/activate' once, then plain 'cuvis-graph ...')")
    return run_dir


if __name__ == "__main__":
    main()
