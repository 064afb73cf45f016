"""Monitors: sinks for metrics and figures."""

from .file import DummyMonitor, FileMonitor
from .hub import MonitorHub, MonitorLogger
from .tensorboard import TensorBoardMonitor
from .wandb import WandBMonitor

__all__ = ["FileMonitor", "DummyMonitor", "MonitorHub", "MonitorLogger", "TensorBoardMonitor", "WandBMonitor"]
