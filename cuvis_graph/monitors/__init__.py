"""Monitors: sinks for metrics and figures."""

from .file import DummyMonitor, FileMonitor
from .hub import MonitorHub, MonitorLogger

__all__ = ["FileMonitor", "DummyMonitor", "MonitorHub", "MonitorLogger"]
