"""What ``graph.train`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from cuvis_graph.core.fitting import FitReport
    from cuvis_graph.train.lightning import GraphModule

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """Outcome of ``graph.train``.

    Attributes:
        metrics: final logged values (``{"val/loss": ..., "val/metrics/f1": ...}``).
        initial_metrics: validation values right after statistical init (before gradients),
            when a validation set exists and the graph has metrics or losses.
        fit: what statistical initialization did (passes, levels).
        trainer: the Lightning trainer (``None`` when nothing ran through Lightning).
        module: the compiled LightningModule.
        failures: side effects (monitors, visualizations, callbacks) that failed and were disabled.
        run_dir: the run directory (``None`` with ``run_dir=False``).
        stages: per completed stage: steps, epochs, losses, trainable nodes, final metrics.
        model_dir: the trained graph saved in the run (``<run>/model``, see ``Graph.save``).
    """

    metrics: dict[str, float]
    fit: FitReport
    initial_metrics: dict[str, float] = field(default_factory=dict)
    trainer: pl.Trainer | None = None
    module: GraphModule | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_dir: Path | None = None
