"""Visualization leaves: matplotlib figures (Agg) sent to the graph's monitors.

Each leaf draws on the first validation batch every ``log_frequency`` epochs, on rank 0,
never in the sanity check (the compiled module decides when; nothing runs in between).
Figures are returned, never shown or saved here: the monitors store them.
"""

from .heatmap import AnomalyHeatmap
from .histogram import ScoreHistogram
from .pca import PCAVisualization
from .selector_mask import SelectorChannelMaskPlot
from .selector_stability import SelectorStabilityPlot
from .selector_temperature import SelectorTemperaturePlot

__all__ = [
    "AnomalyHeatmap",
    "ScoreHistogram",
    "PCAVisualization",
    "SelectorTemperaturePlot",
    "SelectorChannelMaskPlot",
    "SelectorStabilityPlot",
]
