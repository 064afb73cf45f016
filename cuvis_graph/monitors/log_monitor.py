"""Logging monitor: each metrics call as one line of the Python log (``monitor_plugins: [loguru]``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cuvis_graph.core.leaves import MonitoringNode
from cuvis_graph.core.registry import register

__all__ = ["LoggingMonitor"]


@register
class LoggingMonitor(MonitoringNode):
    """Metrics to the logger ``logger_name`` at ``INFO``: ``[val] step 3: val/loss=0.12 ...``.
    Figures are not logged (the run directory holds them as PNG files)."""

    def __init__(self, logger_name: str = "cuvis_graph.metrics", name: str | None = None) -> None:
        self.logger_name = logger_name
        self.name = name or "logging"

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        text = " ".join(f"{k}={float(v):.6g}" for k, v in metrics.items())
        logging.getLogger(self.logger_name).info("[%s] step %d: %s", stage, int(step), text)

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        """Figures are left to the file and dashboard monitors."""
