"""Heads that turn anomaly scores into logits."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import register
from cuvis_graph.core.statistics import (
    Accumulator,
    MomentAccumulator,
    StatisticsError,
    distributed_ready,
)

from .sketch import LogBucketGrid

__all__ = ["RXLogitHead", "ScoreQuantileSketch"]

SCORES = ("B", "H", "W", 1)
F64 = torch.float64


class ScoreQuantileSketch(Accumulator):
    """Streaming quantiles of scalar scores: a fixed-grid log-bucket sketch (``nodes.sketch``).

    Memory is a fixed ``[size]`` int64 count array per sign (~186 kB) plus the exact
    minimum and maximum, whatever the number of pixels. Counts merge (and all-reduce across
    DDP ranks) by addition, so the quantiles of 2 ranks equal those of 1 process exactly.
    A quantile is within ``relative_accuracy`` (relative) of numpy's linear-rule quantile.
    """

    def __init__(self, relative_accuracy: float = 0.005) -> None:
        self.grid = LogBucketGrid(relative_accuracy)
        self.neg = torch.zeros(self.grid.size, dtype=torch.long)
        self.pos = torch.zeros(self.grid.size, dtype=torch.long)
        self.zero = torch.zeros((), dtype=torch.long)
        self.lowest = torch.tensor(math.inf, dtype=F64)
        self.highest = torch.tensor(-math.inf, dtype=F64)

    def update(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        values = x.detach().reshape(-1)
        if weights is not None:
            values = values[weights.detach().reshape(-1).to(values.device) > 0]
        values = values[torch.isfinite(values)].to(F64)
        if values.numel() == 0:
            return
        neg, zero, pos = self.grid.count(values)
        device = values.device
        self.neg, self.pos, self.zero = self.neg.to(device) + neg, self.pos.to(device) + pos, self.zero.to(device) + zero
        self.lowest = torch.minimum(self.lowest.to(device), values.min())
        self.highest = torch.maximum(self.highest.to(device), values.max())

    def merge(self, other: Accumulator) -> None:
        if not isinstance(other, ScoreQuantileSketch) or other.grid.size != self.grid.size:
            raise TypeError("can only merge a ScoreQuantileSketch with the same accuracy")
        device = self.neg.device
        self.neg = self.neg + other.neg.to(device)
        self.pos = self.pos + other.pos.to(device)
        self.zero = self.zero.to(device) + other.zero.to(device)
        self.lowest = torch.minimum(self.lowest.to(device), other.lowest.to(device))
        self.highest = torch.maximum(self.highest.to(device), other.highest.to(device))

    def all_reduce(self) -> None:
        if not distributed_ready():
            return
        self.zero = self.zero.reshape(1)
        for counts in (self.neg, self.pos, self.zero):
            dist.all_reduce(counts)
        self.zero = self.zero.reshape(())
        self.lowest, self.highest = self.lowest.reshape(1), self.highest.reshape(1)
        dist.all_reduce(self.lowest, op=dist.ReduceOp.MIN)
        dist.all_reduce(self.highest, op=dist.ReduceOp.MAX)
        self.lowest, self.highest = self.lowest.reshape(()), self.highest.reshape(())

    @property
    def count(self) -> int:
        return int(self.neg.sum() + self.pos.sum() + self.zero)

    def quantiles(self, qs: list[float]) -> list[float]:
        """Quantiles ``qs`` (numpy's linear rule, within the sketch's relative accuracy)."""
        return self.grid.quantiles(self.neg, self.zero, self.pos, qs, float(self.lowest), float(self.highest))


@register
class RXLogitHead(Node):
    """Affine map of scores to logits: ``logit = scale * (score - bias)`` (``[B,H,W,1]``).

    Statistical init, from a streaming quantile sketch of the training scores (background
    dominated): with ``Q(p)`` their ``p``-quantile and ``q = bias_quantile``::

        bias  = Q(q)                                   (logit 0 = probability 0.5)
        scale = logit(q) / (Q(q) - Q(0.5)),   logit(q) = log(q / (1 - q))

    so a fraction ``q`` of the training pixels starts below logit 0 on any data and any RX
    regulariser, and a pixel at the median score starts at probability ``1 - q`` (the
    anomaly prior implied by the threshold). Explicit ``init_bias`` / ``init_scale`` win
    over the fitted values; with both given nothing is fitted.

    The trainable parameters are kept in units of the fitted spread ``u = Q(q) - Q(0.5)``
    (``u = 1`` when nothing is fitted), around ``c`` = the initial bias::

        logit = alpha * ((score - c) / u - beta),   scale = alpha / u,   bias = c + u * beta

    (``beta = 0`` at init), so one optimizer step moves the threshold by a fraction of the
    spread whatever the raw score range (RX scores are ~C for C channels, any scale with a
    large regulariser). The moments ``score_mean`` / ``score_std`` of the training scores
    are kept for reference.

    Args:
        init_scale: initial ``scale``; ``None`` fits it (above).
        init_bias: initial ``bias``; ``None`` fits it (above).
        bias_quantile: ``q``, the fraction of training pixels initially below logit 0.
        trainable: learn ``alpha`` and ``beta`` by gradient descent.
    """

    INPUTS = {"scores": PortSpec(SCORES, description="anomaly scores")}
    OUTPUTS = {"logits": PortSpec(SCORES, description="anomaly logits")}

    def __init__(self, init_scale: float | None = None, init_bias: float | None = None,
                 bias_quantile: float = 0.995, trainable: bool = True, name: str | None = None) -> None:
        super().__init__(name=name)
        if not 0.5 < bias_quantile < 1:
            raise ValueError(f"bias_quantile must be in (0.5, 1), got {bias_quantile}")
        self.init_scale = None if init_scale is None else float(init_scale)
        self.init_bias = None if init_bias is None else float(init_bias)
        self.mark_fitted(not self.statistical)
        self.bias_quantile, self.trainable = float(bias_quantile), trainable
        self.register_buffer("score_mean", torch.tensor(0.0))
        self.register_buffer("score_std", torch.tensor(1.0))
        self.register_buffer("score_center", torch.tensor(0.0 if init_bias is None else self.init_bias))
        self.register_buffer("score_unit", torch.tensor(1.0))
        self.alpha = nn.Parameter(torch.tensor(1.0 if init_scale is None else self.init_scale), requires_grad=trainable)
        self.beta = nn.Parameter(torch.tensor(0.0), requires_grad=trainable)

    @computed_flag(default=True)
    def statistical(self) -> bool:
        """Fitted from the training scores unless both ``init_bias`` and ``init_scale`` are given."""
        return self.init_bias is None or self.init_scale is None

    @property
    def scale(self) -> torch.Tensor:
        """``alpha / u``."""
        return self.alpha / self.score_unit

    @property
    def bias(self) -> torch.Tensor:
        """``c + u * beta``."""
        return self.score_center + self.score_unit * self.beta

    def create_accumulators(self, scores: torch.Tensor) -> dict[str, Accumulator]:
        return {"scores": MomentAccumulator(1, full_covariance=False), "quantiles": ScoreQuantileSketch()}

    def update_statistics(self, accumulators: dict[str, Accumulator], scores: torch.Tensor) -> None:
        accumulators["scores"].update(scores)
        accumulators["quantiles"].update(scores)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        moments, sketch = accumulators["scores"], accumulators["quantiles"]
        if sketch.count == 0:
            raise StatisticsError("no finite training score to fit the logit head on")
        std = float(moments.variance()[0].sqrt()) if moments.count > 1 else 0.0
        self.score_mean.fill_(float(moments.mean[0]))
        self.score_std.fill_(std)
        q = self.bias_quantile
        median, high = sketch.quantiles([0.5, q])
        spread = high - median
        if not spread > 0:  # (nearly) constant scores: fall back to their standard deviation
            spread = std if std > 0 else 1.0
        center = high if self.init_bias is None else self.init_bias
        scale = math.log(q / (1 - q)) / spread if self.init_scale is None else self.init_scale
        self.score_center.fill_(center)
        self.score_unit.fill_(spread)
        with torch.no_grad():
            self.alpha.fill_(scale * spread)
            self.beta.fill_(0.0)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.alpha * ((scores - self.score_center) / self.score_unit - self.beta)
