"""cuvis-graph: declarative graph pipelines for hyperspectral machine learning."""

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
from cuvis_graph.data import GraphDataModule, SyntheticHSIDataModule
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

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "Node",
    "PortSpec",
    "LeafNode",
    "LossNode",
    "MetricNode",
    "VisualizationNode",
    "MonitoringNode",
    "TrainingConfig",
    "TrainerConfig",
    "OptimizerConfig",
    "StageConfig",
    "SchedulerConfig",
    "GraphDataModule",
    "SyntheticHSIDataModule",
    "CompileError",
    "ConfigError",
    "CuvisGraphError",
    "NotFittedError",
    "TrainResult",
    "register",
    "load_plugin",
]
