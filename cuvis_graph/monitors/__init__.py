"""Monitors: sinks for metrics and figures."""

from cuvis_graph.monitors.file import DummyMonitor, FileMonitor
from cuvis_graph.monitors.hub import MonitorHub, MonitorLogger
from cuvis_graph.monitors.tensorboard import TensorBoardMonitor
from cuvis_graph.monitors.wandb import WandBMonitor

__all__ = ["FileMonitor", "DummyMonitor", "MonitorHub", "MonitorLogger", "TensorBoardMonitor", "WandBMonitor"]
