"""Deciders: turn anomaly scores into binary {0, 1} masks."""

from __future__ import annotations

import torch

from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import register

__all__ = ["BinaryDecider", "QuantileDecider", "rowwise_quantile"]

SCORES = ("B", "H", "W", 1)


def rowwise_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` of every row of ``values`` (``[B, N]`` -> ``[B]``), numpy's "linear" rule.

    With the row sorted, ``h = (N - 1) q``: ``x_(floor h) + (h - floor h) (x_(ceil h) - x_(floor h))``.
    Sort-based, so it has no element limit (``torch.quantile`` refuses more than 2^24).
    """
    ordered, _ = torch.sort(values, dim=-1)
    # index arithmetic in tensors (float64), so an ONNX export keeps N dynamic
    n = torch.ones_like(values, dtype=torch.float64).sum(-1, keepdim=True)  # [B, 1] = N
    h = (n - 1) * float(q)
    lo = torch.floor(h)
    hi = torch.minimum(lo + 1, n - 1)
    frac = (h - lo).to(values.dtype)
    low = ordered.gather(-1, lo.long()).squeeze(-1)
    high = ordered.gather(-1, hi.long()).squeeze(-1)
    return low + frac.squeeze(-1) * (high - low)


@register
class BinaryDecider(Node):
    """Fixed threshold: ``mask = 1[score > threshold]`` (``[B,H,W,1]`` -> ``[B,H,W,1]`` of 0/1).

    The output has the scores' floating dtype (0.0 / 1.0) so losses and metrics consume it
    directly.

    Args:
        threshold: pixels with a score strictly above it are anomalous.
    """

    INPUTS = {"scores": PortSpec(SCORES, description="anomaly scores or logits")}
    OUTPUTS = {"decisions": PortSpec(SCORES, description="binary anomaly mask (0/1)")}
    is_decider = True

    def __init__(self, threshold: float = 0.5, name: str | None = None) -> None:
        super().__init__(name=name)
        self.threshold = float(threshold)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores > self.threshold).to(scores.dtype if scores.is_floating_point() else torch.float32)


@register
class QuantileDecider(Node):
    """Per-image quantile threshold: ``mask_b = 1[score_b > Q_q(score_b)]`` (``[B,H,W,1]``, 0/1).

    ``Q_q(score_b)`` is the ``q``-quantile of the ``H*W`` scores of image ``b`` (numpy's
    linear interpolation, see :func:`rowwise_quantile`), so about a fraction ``1 - q`` of
    every image is flagged, whatever the score scale.

    Args:
        q: quantile in ``[0, 1]`` (e.g. 0.99 flags the top 1% of each image).
    """

    INPUTS = {"scores": PortSpec(SCORES, description="anomaly scores or logits")}
    OUTPUTS = {"decisions": PortSpec(SCORES, description="binary anomaly mask (0/1)")}
    is_decider = True

    def __init__(self, q: float = 0.99, name: str | None = None) -> None:
        super().__init__(name=name)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        self.q = float(q)

    def thresholds(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B]`` per-image thresholds."""
        return rowwise_quantile(scores.detach().reshape(scores.shape[0], -1), self.q)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        thresholds = self.thresholds(scores).reshape(-1, *([1] * (scores.ndim - 1)))
        return (scores > thresholds).to(scores.dtype if scores.is_floating_point() else torch.float32)
