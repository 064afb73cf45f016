"""File monitor: metrics as JSON lines, figures as PNG files. No pickle, plain files only."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cuvis_graph.core.leaves import MonitoringNode
from cuvis_graph.core.registry import register
from cuvis_graph.io.atomic import atomic_write, atomic_write_text

__all__ = ["FileMonitor", "DummyMonitor"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@register
class FileMonitor(MonitoringNode):
    """Writes ``<root>/metrics.jsonl`` (one object per call) and ``<root>/artifacts/*.png``.

    Each JSON line: ``{"stage": ..., "step": ..., "time": ..., "metrics": {key: value}}``.
    A figure named ``heatmap/scores`` at step 3 becomes
    ``artifacts/<stage>/heatmap__scores_step0003.png``; the other entries of a cuvis.ai
    artifact dict (``log_artifacts({"x": {"figure": fig, "statistics": {...}}})``) become
    ``artifacts/<stage>/x_step0003.json``. cuvis.ai's ``DummyMonitor`` also pickled each
    artifact (``.pkl``); nothing is pickled here: a pickle runs code when it is loaded.

    Args:
        root: the folder (cuvis.ai: ``output_dir``).
    """

    def __init__(self, root: str | os.PathLike = "runs/file_monitor", name: str | None = None, dpi: int = 100) -> None:
        self.root = Path(root)
        self.name = name or "file_monitor"
        self.dpi = dpi
        self.artifacts: list[Path] = []

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        line = json.dumps({"stage": stage, "step": int(step), "time": time.time(), "metrics": clean})
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        folder = self.root / "artifacts" / _safe(stage)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_safe(name.replace('/', '__'))}_step{int(step):04d}.png"
        if hasattr(artifact, "savefig"):
            atomic_write(path, lambda fh: artifact.savefig(fh, format="png", dpi=self.dpi, bbox_inches="tight"))
        else:
            raise TypeError(f"FileMonitor can store matplotlib figures only, got {type(artifact).__name__}")
        self.artifacts.append(path)

    def log_artifact_data(self, data: Mapping[str, Any], name: str, step: int, stage: str) -> None:
        """The plain-data entries of an artifact as JSON (values that JSON cannot hold as text)."""
        folder = self.root / "artifacts" / _safe(stage)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_safe(name.replace('/', '__'))}_step{int(step):04d}.json"
        atomic_write_text(path, json.dumps(_plain(data), indent=1, default=repr))
        self.artifacts.append(path)

    @property
    def output_dir(self) -> Path:
        """cuvis.ai name of :attr:`root`."""
        return self.root

    def read_metrics(self) -> list[dict[str, Any]]:
        """All lines of ``metrics.jsonl`` as dicts."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    """Tensors and arrays as lists, numbers as floats, mappings and sequences recursively."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


#: Name kept for users of cuvis.ai.
DummyMonitor = FileMonitor
