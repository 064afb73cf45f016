"""Loss leaves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from cuvis_graph.leaves import TARGET_KEY, LossNode
from cuvis_graph.registry import register

__all__ = ["AnomalyBCEWithLogits"]


@register
class AnomalyBCEWithLogits(LossNode):
    """Binary cross-entropy on per-pixel anomaly logits.

    ``L = -mean_p [ w_pos * y_p * log s(z_p) + (1 - y_p) * log(1 - s(z_p)) ]`` with
    ``s`` the sigmoid, ``z`` the parent's logits ``[B,H,W]`` or ``[B,H,W,1]`` and
    ``y = (target > 0)`` from the leaf's label source (batch ``mask`` or a label node).

    Args:
        weight: factor in the total loss.
        pos_weight: weight of anomalous pixels (``w_pos``; counters class imbalance).
        reduction: ``"mean"`` or ``"sum"`` over pixels.
    """

    needs_labels = True

    def __init__(self, weight: float = 1.0, pos_weight: float | None = None, reduction: str = "mean",
                 name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(weight=weight, name=name, label_source=label_source)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.pos_weight, self.reduction = pos_weight, reduction

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = output.squeeze(-1) if output.ndim == 4 else output
        target = (batch[TARGET_KEY] > 0).to(logits.dtype)
        if target.shape != logits.shape:
            raise ValueError(f"leaf '{self.name}': logits {tuple(logits.shape)} and labels {tuple(target.shape)} differ")
        pos_weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device,
                                                                       dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction=self.reduction)
