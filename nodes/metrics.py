"""Metric leaves (dataset-level, torchmetrics states)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric

from cuvis_graph.leaves import TARGET_KEY, MetricNode
from cuvis_graph.registry import register

from .ranking import average_precision, roc_auc

__all__ = ["AnomalyDetectionMetrics", "BinaryDetectionState"]


class BinaryDetectionState(Metric):
    """Confusion counts at a threshold plus all scores for AUROC/AP (``cat`` states).

    ``compute`` gives precision ``tp/(tp+fp)``, recall ``tp/(tp+fn)``, F1
    ``2tp/(2tp+fp+fn)``, IoU ``tp/(tp+fp+fn)``, accuracy, specificity ``tn/(tn+fp)``,
    AUROC and average precision; an undefined ratio (0/0) is 0.
    """

    full_state_update = False

    def __init__(self, threshold: float, ranking: bool = True) -> None:
        super().__init__()
        self.threshold = threshold
        self.ranking = ranking
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores = scores.detach().reshape(-1)
        labels = labels.detach().reshape(-1) > 0
        predicted = scores > self.threshold
        # out-of-place: states may have been created under inference mode by a previous loop
        self.tp = self.tp + (predicted & labels).sum()
        self.fp = self.fp + (predicted & ~labels).sum()
        self.tn = self.tn + (~predicted & ~labels).sum()
        self.fn = self.fn + (~predicted & labels).sum()
        if self.ranking:
            self.scores.append(scores.float())
            self.labels.append(labels)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, tn, fn = (x.double() for x in (self.tp, self.fp, self.tn, self.fn))

        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a / b if b > 0 else torch.zeros((), dtype=torch.float64)

        out = {
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn), "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "specificity": ratio(tn, tn + fp),
        }
        if self.ranking:
            scores = _cat(self.scores)
            labels = _cat(self.labels)
            out["auroc"] = torch.tensor(roc_auc(scores, labels), dtype=torch.float64)
            out["average_precision"] = torch.tensor(average_precision(scores, labels), dtype=torch.float64)
        return out


def _cat(x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.cat(x) if x else torch.zeros(0)


@register
class AnomalyDetectionMetrics(MetricNode):
    """Pixel-level detection metrics over the whole dataset.

    A pixel is predicted anomalous when the parent output ``> threshold``, applied to
    exactly what the parent outputs (no hidden sigmoid): ``threshold=0`` on logits means
    probability 0.5. AUROC and average precision rank the raw outputs.

    Args:
        threshold: decision threshold on the parent output; default 0.0 for logits
            (``from_logits=True``) and 0.5 for probabilities.
        from_logits: the parent outputs logits (else probabilities or scores).
        ranking: also compute AUROC and average precision (keeps all scores).
    """

    needs_labels = True

    def __init__(self, threshold: float | None = None, from_logits: bool = True, ranking: bool = True,
                 name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        self.threshold = float(threshold) if threshold is not None else (0.0 if from_logits else 0.5)
        self.from_logits, self.ranking = from_logits, ranking

    def create_metrics(self) -> Metric:
        return BinaryDetectionState(self.threshold, self.ranking)

    def update_metrics(self, metrics: Metric, output: torch.Tensor, batch: Mapping[str, Any]) -> None:
        scores = output.squeeze(-1) if output.ndim == 4 else output
        metrics.update(scores, batch[TARGET_KEY])
