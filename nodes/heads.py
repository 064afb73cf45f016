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

    Statistical init (``init_bias=None``): with ``m``, ``s`` the mean and standard
    deviation of the training scores, ``bias = m + 2 s`` (a score two standard deviations
    above the mean sits at probability 0.5) and ``scale = init_scale / s``.

    The trainable parameters are kept in score-standard-deviation units,
    ``scale = alpha / s`` and ``bias = m + s * beta`` (``alpha = init_scale``,
    ``beta = 2`` at init), so one optimizer step moves the threshold by a fraction of a
    standard deviation whatever the raw score range (RX scores are ~C for C channels).
    With ``init_bias`` given nothing is fitted: ``m = 0``, ``s = 1``, ``beta = init_bias``.

    Args:
        init_scale: initial ``alpha``.
        init_bias: fixed initial bias; ``None`` fits it from the score distribution.
        trainable: learn ``alpha`` and ``beta`` by gradient descent.
    """

    INPUTS = {"scores": PortSpec(SCORES, description="anomaly scores")}
    OUTPUTS = {"logits": PortSpec(SCORES, description="anomaly logits")}
    statistical = True

    def __init__(self, init_scale: float = 1.0, init_bias: float | None = None, trainable: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.statistical = init_bias is None
        self.mark_fitted(not self.statistical)
        self.init_scale, self.init_bias, self.trainable = float(init_scale), init_bias, trainable
        self.register_buffer("score_mean", torch.tensor(0.0))
        self.register_buffer("score_std", torch.tensor(1.0))
        self.alpha = nn.Parameter(torch.tensor(float(init_scale)), requires_grad=trainable)
        self.beta = nn.Parameter(torch.tensor(float(init_bias) if init_bias is not None else 2.0),
                                 requires_grad=trainable)

    @property
    def scale(self) -> torch.Tensor:
        """``alpha / s``."""
        return self.alpha / self.score_std

    @property
    def bias(self) -> torch.Tensor:
        """``m + s * beta``."""
        return self.score_mean + self.score_std * self.beta

    def create_accumulators(self, scores: torch.Tensor) -> dict[str, Accumulator]:
        return {"scores": MomentAccumulator(1, full_covariance=False)}

    def update_statistics(self, accumulators: dict[str, Accumulator], scores: torch.Tensor) -> None:
        accumulators["scores"].update(scores)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["scores"]
        std = float(acc.variance()[0].sqrt())
        self.score_mean.fill_(float(acc.mean[0]))
        self.score_std.fill_(std if std > 0 else 1.0)
        with torch.no_grad():
            self.alpha.fill_(self.init_scale)
            self.beta.fill_(2.0)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.alpha * ((scores - self.score_mean) / self.score_std - self.beta)
