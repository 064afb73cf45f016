"""cuvis-graph: declarative graph pipelines for hyperspectral machine learning."""

from .config import OptimizerConfig, SchedulerConfig, StageConfig, TrainerConfig, TrainingConfig
from .data import GraphDataModule, SyntheticHSIDataModule
from .errors import CompileError, ConfigError, CuvisGraphError, NotFittedError
from .graph import Graph
from .leaves import LeafNode, LossNode, MetricNode, MonitoringNode, VisualizationNode
from .node import Node, PortSpec
from .plugins import load_plugin
from .registry import register
from .results import TrainResult

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
