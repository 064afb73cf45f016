"""The built-in node catalog (``cuvis_graph.nodes``). Importing it registers every class."""

from .combine import ConcatChannels
from .heads import RXLogitHead
from .losses import AnomalyBCEWithLogits
from .metrics import AnomalyDetectionMetrics
from .normalizers import MinMaxNormalizer, StandardNormalizer
from .rx import RXGlobal

__all__ = [
    "MinMaxNormalizer",
    "StandardNormalizer",
    "RXGlobal",
    "RXLogitHead",
    "ConcatChannels",
    "AnomalyBCEWithLogits",
    "AnomalyDetectionMetrics",
]
