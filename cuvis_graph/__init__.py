"""cuvis-graph: declarative graph pipelines for hyperspectral machine learning.

The public names below are imported on first use (PEP 562), so ``import cuvis_graph``
costs nothing more than Python itself; torch is imported with the first name that needs
it, Lightning only by training.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY: dict[str, str] = {
    "Graph": "cuvis_graph.core.graph",
    "Node": "cuvis_graph.core.node",
    "PortSpec": "cuvis_graph.core.node",
    "LeafNode": "cuvis_graph.core.leaves",
    "LossNode": "cuvis_graph.core.leaves",
    "MetricNode": "cuvis_graph.core.leaves",
    "VisualizationNode": "cuvis_graph.core.leaves",
    "MonitoringNode": "cuvis_graph.core.leaves",
    "TrainingConfig": "cuvis_graph.train.config",
    "TrainerConfig": "cuvis_graph.train.config",
    "OptimizerConfig": "cuvis_graph.train.config",
    "StageConfig": "cuvis_graph.train.config",
    "SchedulerConfig": "cuvis_graph.train.config",
    "GraphDataModule": "cuvis_graph.data.datamodule",
    "SyntheticHSIDataModule": "cuvis_graph.data.synthetic",
    "CompileError": "cuvis_graph.errors",
    "ConfigError": "cuvis_graph.errors",
    "CuvisGraphError": "cuvis_graph.errors",
    "NotFittedError": "cuvis_graph.errors",
    "TrainResult": "cuvis_graph.train.results",
    "register": "cuvis_graph.core.registry",
    "load_plugin": "cuvis_graph.io.plugins",
}

__all__ = [
    "Graph", "Node", "PortSpec", "LeafNode", "LossNode", "MetricNode", "VisualizationNode", "MonitoringNode",
    "TrainingConfig", "TrainerConfig", "OptimizerConfig", "StageConfig", "SchedulerConfig", "GraphDataModule",
    "SyntheticHSIDataModule", "CompileError", "ConfigError", "CuvisGraphError", "NotFittedError", "TrainResult",
    "register", "load_plugin",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cuvis_graph' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.core.leaves import (
        LeafNode,
        LossNode,
        MetricNode,
        MonitoringNode,
        VisualizationNode,
    )
    from cuvis_graph.core.node import Node, PortSpec
    from cuvis_graph.core.registry import register
    from cuvis_graph.data.datamodule import GraphDataModule
    from cuvis_graph.data.synthetic import SyntheticHSIDataModule
    from cuvis_graph.errors import CompileError, ConfigError, CuvisGraphError, NotFittedError
    from cuvis_graph.io.plugins import load_plugin
    from cuvis_graph.train.config import (
        OptimizerConfig,
        SchedulerConfig,
        StageConfig,
        TrainerConfig,
        TrainingConfig,
    )
    from cuvis_graph.train.results import TrainResult
