"""Heads that turn anomaly scores into logits."""

from __future__ import annotations

import torch
from torch import nn

from cuvis_graph.node import Node, PortSpec
from cuvis_graph.registry import register
from cuvis_graph.statistics import Accumulator, MomentAccumulator

__all__ = ["RXLogitHead"]

SCORES = ("B", "H", "W", 1)


@register
class RXLogitHead(Node):
    """Affine map of scores to logits: ``logit = scale * (score - bias)`` (``[B,H,W,1]``).

    Statistical init (when ``init_bias`` is ``None``): with ``m``, ``s`` the mean and std
    of the training scores, ``bias = m + 2 s`` (a pixel two standard deviations above the
    mean score sits at probability 0.5) and ``scale = init_scale / s`` (logits in units of
    score standard deviations). With ``init_bias`` given, nothing is fitted and
    ``scale = init_scale``.

    Args:
        init_scale: scale (or scale per score std when fitted).
        init_bias: fixed initial bias; ``None`` fits it from the score distribution.
        trainable: learn ``scale`` and ``bias`` by gradient descent.
    """

    INPUTS = {"scores": PortSpec(SCORES, description="anomaly scores")}
    OUTPUTS = {"logits": PortSpec(SCORES, description="anomaly logits")}
    statistical = True

    def __init__(self, init_scale: float = 1.0, init_bias: float | None = None, trainable: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.statistical = init_bias is None
        self.mark_fitted(not self.statistical)
        self.init_scale, self.init_bias = float(init_scale), init_bias
        self.scale = nn.Parameter(torch.tensor(float(init_scale)), requires_grad=trainable)
        self.bias = nn.Parameter(torch.tensor(float(init_bias or 0.0)), requires_grad=trainable)

    def create_accumulators(self, scores: torch.Tensor) -> dict[str, Accumulator]:
        return {"scores": MomentAccumulator(1, full_covariance=False)}

    def update_statistics(self, accumulators: dict[str, Accumulator], scores: torch.Tensor) -> None:
        accumulators["scores"].update(scores)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["scores"]
        mean, std = float(acc.mean[0]), float(acc.variance()[0].sqrt())
        std = std if std > 0 else 1.0
        with torch.no_grad():
            self.bias.fill_(mean + 2.0 * std)
            self.scale.fill_(self.init_scale / std)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.scale * (scores - self.bias)
