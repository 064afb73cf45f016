"""Tiny pipeline and data shared by the run / monitor / resume tests (CPU, seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cuvis_graph import Graph, MonitoringNode, TrainingConfig
from cuvis_graph.data import SyntheticHSIDataModule


def build_graph(name: str = "tiny_rx") -> Graph:
    from cuvis_graph import nodes

    graph = Graph(name)
    norm = graph.add_node(nodes.MinMaxNormalizer(), name="norm")
    rx = graph.add_node(nodes.RXGlobal(trainable_stats=True), parent=norm, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(nodes.AnomalyDetectionMetrics(), parent=head, name="det")
    return graph


def datamodule() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16, n_bands=12, batch_size=2)


def config(epochs: int = 6, **extra: Any) -> TrainingConfig:
    data = {"seed": 3,
            "trainer": {"max_epochs": epochs, "deterministic": True, "enable_progress_bar": False,
                        "accelerator": "cpu"},
            "optimizer": {"lr": 0.01},
            "scheduler": {"name": "step", "step_size": 2, "gamma": 0.5},
            **extra}
    return TrainingConfig.model_validate(data)


class RecordingMonitor(MonitoringNode):
    """Keeps every call in memory."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.metrics: list[tuple[str, int, dict[str, float]]] = []
        self.artifacts: list[tuple[str, int, str]] = []
        self.closed = False

    def log_metrics(self, metrics, step, stage) -> None:
        self.metrics.append((stage, int(step), dict(metrics)))

    def log_artifact(self, artifact, name, step, stage) -> None:
        self.artifacts.append((stage, int(step), name))

    def close(self) -> None:
        self.closed = True


class BrokenMonitor(MonitoringNode):
    """``log_metrics`` always raises."""

    def __init__(self) -> None:
        self.name = "broken"
        self.calls = 0

    def log_metrics(self, metrics, step, stage) -> None:
        self.calls += 1
        raise RuntimeError("backend unreachable")

    def log_artifact(self, artifact, name, step, stage) -> None:
        pass


def kill_when_marked(script: Path, run_dir: Path, marker: Path, timeout: float = 120.0,
                     argv: list[str] | None = None, cwd: Path | None = None) -> None:
    """Start ``python script run_dir marker`` (or ``python script marker ARGV...``); SIGKILL it
    once it has written ``marker``."""
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    args = [str(run_dir), str(marker)] if argv is None else [str(marker), *argv]
    child = subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.time() < deadline, f"{script.name} never wrote its marker"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()


def outputs_of(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """The combined output of each process (text mode), once all have ended; a process still
    running at the timeout is killed; each must exit 0 (the failure shows its output's end)."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {rank}:\n{text[-3000:]}"
    return outputs
