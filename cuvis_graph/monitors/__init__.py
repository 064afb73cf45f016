"""Monitors: sinks for metrics and figures.

Importing this package registers the monitor types without importing Lightning,
TensorBoard or W&B (each monitor imports its library when it starts); ``MonitorHub`` and
``MonitorLogger`` (a Lightning logger) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cuvis_graph.monitors.file import DummyMonitor, FileMonitor
from cuvis_graph.monitors.log_monitor import LoggingMonitor
from cuvis_graph.monitors.tensorboard import TensorBoardMonitor
from cuvis_graph.monitors.wandb import WandBMonitor

_LAZY = {"MonitorHub": "cuvis_graph.monitors.hub", "MonitorLogger": "cuvis_graph.monitors.hub"}

__all__ = ["FileMonitor", "DummyMonitor", "LoggingMonitor", "MonitorHub", "MonitorLogger", "TensorBoardMonitor", "WandBMonitor"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cuvis_graph.monitors' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)


if TYPE_CHECKING:
    from cuvis_graph.monitors.hub import MonitorHub, MonitorLogger
