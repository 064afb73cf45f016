"""The run's own record among the monitors: ``metrics.jsonl`` and figures in the run folder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cuvis_graph.io.runs import RunRecordError
from cuvis_graph.monitors.file import FileMonitor

__all__ = ["RunFiles"]


class RunFiles(FileMonitor):
    """The run's own ``metrics.jsonl`` and figures. Unlike other monitors, losing the metrics
    record (e.g. a full disk) is fatal: :meth:`check` raises at the next batch."""

    def __init__(self, run_dir: Any) -> None:
        super().__init__(run_dir, name="run_files")
        self.lost: OSError | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        try:
            super().log_metrics(metrics, step, stage)
        except OSError as exc:
            self.lost = self.lost or exc
            raise

    def check(self) -> None:
        if self.lost is not None:
            raise RunRecordError(f"run folder {self.root}: cannot write {self.metrics_path.name} "
                                 f"({self.lost.strerror or self.lost}); training stopped: free space, then "
                                 f"resume with --resume {self.root}")

