"""Metric leaves (dataset-level, torchmetrics states).

The states (torchmetrics ``Metric`` subclasses) live in :mod:`.metric_states`, imported
when evaluation creates them, so building or validating a graph does not import torchmetrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from cuvis_graph.core.leaves import TARGET_KEY, MetricNode
from cuvis_graph.core.registry import register

from ._parent import ParentBound
from .sketch import LogBucketGrid

if TYPE_CHECKING:
    from torchmetrics import Metric

__all__ = [
    "AnomalyDetectionMetrics",
    "ScoreStatisticsMetric",
    "ExplainedVarianceMetric",
    "ComponentOrthogonalityMetric",
]

#: names defined in :mod:`.metric_states` (torchmetrics), still importable from here
_STATE_NAMES = frozenset({"BinaryDetectionState", "ScoreStatisticsState", "ExplainedVarianceState",
                          "OrthogonalityState", "auto_threshold", "quantile_key"})


def __getattr__(name: str) -> Any:
    if name not in _STATE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import metric_states

    return getattr(metric_states, name)


@register
class AnomalyDetectionMetrics(MetricNode):
    """Pixel-level detection metrics over the whole dataset.

    A pixel is predicted anomalous when the parent output ``> threshold``, applied to
    exactly what the parent outputs (no hidden sigmoid): ``threshold=0`` on logits means
    probability 0.5. AUROC and average precision rank the raw outputs; they need no
    threshold and come first in the printed summaries.

    Args:
        threshold: decision threshold on the parent output; default 0.0 for logits
            (``from_logits=True``); for other outputs ``"auto"``: 0.5 when every evaluated
            output lies in [0, 1] (probabilities), else ``mean + 3 std`` of the evaluated
            outputs (the classic RX rule, fitting raw RX scores of any scale), reported as
            ``<leaf>/threshold``.
        from_logits: the parent outputs logits (else probabilities or scores).
        ranking: also compute AUROC and average precision (keeps all scores).
    """

    needs_labels = True

    def __init__(self, threshold: float | Literal["auto"] | None = None, from_logits: bool = True,
                 ranking: bool = True, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        if threshold is None:
            threshold = 0.0 if from_logits else "auto"
        if threshold == "auto" and not ranking:
            raise ValueError("threshold 'auto' needs the evaluated scores: keep ranking=True or give a number")
        self.threshold = threshold if threshold == "auto" else float(threshold)
        self.from_logits, self.ranking = from_logits, ranking

    def create_metrics(self) -> Metric:
        from .metric_states import BinaryDetectionState

        return BinaryDetectionState(None if self.threshold == "auto" else self.threshold, self.ranking)

    def update_metrics(self, metrics: Metric, output: torch.Tensor, batch: Mapping[str, Any]) -> None:
        scores = output.squeeze(-1) if output.ndim == 4 else output
        metrics.update(scores, batch[TARGET_KEY])


@register
class ScoreStatisticsMetric(MetricNode):
    """Dataset-level summary of the parent's output (any shape, all values pooled).

    Logs ``count``, ``mean``, ``std`` (population), ``min``, ``max`` and one ``q<p>`` per
    quantile (default ``q25``, ``q50``, ``q75``, ``q95``, ``q99``). Moments and extremes are
    exact; quantiles come from a mergeable relative-error sketch (see
    :class:`ScoreStatisticsState` for the error bound, by default 0.5% of the value), so
    memory is fixed and any number of pixels works.

    Args:
        quantiles: probabilities in ``[0, 1]``.
        relative_accuracy: relative error of the quantile sketch.
        min_abs: magnitudes below it count as 0 in the quantile sketch.
    """

    def __init__(self, quantiles: Sequence[float] = (0.25, 0.5, 0.75, 0.95, 0.99), relative_accuracy: float = 0.005,
                 min_abs: float = 1e-12, name: str | None = None) -> None:
        super().__init__(name=name)
        if any(not 0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"quantiles must be in [0, 1], got {list(quantiles)}")
        self.quantiles = [float(q) for q in quantiles]
        self.relative_accuracy, self.min_abs = float(relative_accuracy), float(min_abs)
        LogBucketGrid(self.relative_accuracy, self.min_abs)  # validate now, not at the first epoch

    def create_metrics(self) -> Metric:
        from .metric_states import ScoreStatisticsState

        return ScoreStatisticsState(self.quantiles, self.relative_accuracy, self.min_abs)

    def update_metrics(self, metrics: Metric, output: torch.Tensor, batch: Mapping[str, Any]) -> None:
        metrics.update(output)


@register
class ExplainedVarianceMetric(ParentBound, MetricNode):
    """Fraction of the total variance captured by each component of a PCA-like parent.

    Over the evaluated data, ``ratio_k = Var(y_k) / tr(Sigma)`` with ``y_k`` the parent's
    k-th output (un-whitened by the parent's ``output_scale`` when present), ``Var`` the
    float64 streaming sample variance (ddof = 1) and ``tr(Sigma)`` the parent's
    ``total_variance`` (all C input channels, fitted). Logs ``component_<k>`` and ``total``
    (also as ``comp_<k>`` and ``cumulative``).
    On the data the PCA was fitted on, with untrained components, ``ratio_k`` equals the
    parent's ``explained_variance_ratio`` (= scikit-learn's); with trained components it
    shows how much variance the learned projection keeps.
    """

    required_parent_attributes = ("components", "total_variance")

    def create_metrics(self) -> Metric:
        from .metric_states import ExplainedVarianceState

        return ExplainedVarianceState()

    def update_metrics(self, metrics: Metric, output: torch.Tensor, batch: Mapping[str, Any]) -> None:
        parent = self.parent
        y = output.detach().to(torch.float64)
        scale = getattr(parent, "output_scale", None)
        if getattr(parent, "whiten", False) and scale is not None and scale.numel() == y.shape[-1]:
            y = y / scale.to(y.device)
        metrics.update(y, parent.total_variance)

    def compute_metrics(self, metrics: Metric) -> dict[str, float]:
        """``component_<k>`` and ``total``, plus cuvis.ai's names ``comp_<k>`` and ``cumulative``
        (the same values)."""
        values = super().compute_metrics(metrics)
        values.update({f"comp_{k.removeprefix('component_')}": v for k, v in list(values.items())
                       if k.startswith("component_")})
        if "total" in values:
            values["cumulative"] = values["total"]
        return values


@register
class ComponentOrthogonalityMetric(ParentBound, MetricNode):
    """How far the parent's ``components`` ``W`` (``[K, C]``) are from orthonormal rows.

    Logs ``frobenius = ||W W^T - I_K||_F`` (the square root of ``OrthogonalityLoss``) and
    ``max_abs = max_ij |(W W^T - I)_ij|`` (``frobenius`` also as
    ``orthogonality_error``); 0 for a freshly fitted PCA, growing if training
    bends the components. The parent output is not read.
    """

    required_parent_attributes = ("components",)

    def create_metrics(self) -> Metric:
        from .metric_states import OrthogonalityState

        return OrthogonalityState()

    def update_metrics(self, metrics: Metric, output: torch.Tensor, batch: Mapping[str, Any]) -> None:
        metrics.update(self.parent.components)

    def compute_metrics(self, metrics: Metric) -> dict[str, float]:
        """``frobenius`` and ``max_abs``, plus cuvis.ai's ``orthogonality_error`` (= ``frobenius``)."""
        values = super().compute_metrics(metrics)
        if "frobenius" in values:
            values["orthogonality_error"] = values["frobenius"]
        return values
