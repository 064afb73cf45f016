"""The built-in node catalog (``cuvis_graph.nodes``). Importing it registers every class."""

from .bands import DropBands
from .combine import ConcatChannels
from .deciders import BinaryDecider, QuantileDecider
from .heads import RXLogitHead
from .labels import BinaryLabelMapper
from .losses import (
    AnomalyBCEWithLogits,
    MSEReconstructionLoss,
    OrthogonalityLoss,
    SelectorDiversityRegularizer,
    SelectorEntropyRegularizer,
    WeightedMultiLoss,
)
from .metrics import (
    AnomalyDetectionMetrics,
    ComponentOrthogonalityMetric,
    ExplainedVarianceMetric,
    ScoreStatisticsMetric,
)
from .normalizers import MinMaxNormalizer, StandardNormalizer
from .pca import TrainablePCA
from .rx import RXGlobal
from .selector import SoftChannelSelector
from .visualizations import (
    AnomalyHeatmap,
    PCAVisualization,
    ScoreHistogram,
    SelectorChannelMaskPlot,
    SelectorStabilityPlot,
    SelectorTemperaturePlot,
)

__all__ = [
    "MinMaxNormalizer",
    "StandardNormalizer",
    "RXGlobal",
    "RXLogitHead",
    "TrainablePCA",
    "SoftChannelSelector",
    "BinaryDecider",
    "QuantileDecider",
    "BinaryLabelMapper",
    "ConcatChannels",
    "DropBands",
    "AnomalyBCEWithLogits",
    "OrthogonalityLoss",
    "MSEReconstructionLoss",
    "SelectorEntropyRegularizer",
    "SelectorDiversityRegularizer",
    "WeightedMultiLoss",
    "AnomalyDetectionMetrics",
    "ScoreStatisticsMetric",
    "ExplainedVarianceMetric",
    "ComponentOrthogonalityMetric",
    "AnomalyHeatmap",
    "ScoreHistogram",
    "PCAVisualization",
    "SelectorTemperaturePlot",
    "SelectorChannelMaskPlot",
    "SelectorStabilityPlot",
]
