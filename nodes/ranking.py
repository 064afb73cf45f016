"""Exact ranking metrics (ROC AUC, average precision) on raw scores, float64, ties handled.

torchmetrics' binary AUROC applies a sigmoid to scores outside [0, 1], which saturates
large anomaly scores into ties; these functions rank the raw values instead.
"""

from __future__ import annotations

import torch

__all__ = ["roc_auc", "average_precision"]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUC: ``(sum of positive ranks - P(P+1)/2) / (P N)``, tied ranks averaged."""
    scores = scores.reshape(-1).to(torch.float64)
    labels = labels.reshape(-1).bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds, descending (as sklearn)."""
    scores = scores.reshape(-1).to(torch.float64)
    labels = labels.reshape(-1).to(torch.float64)
    n_pos = float(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order]
    last = torch.nonzero(torch.diff(scores, append=scores[-1:] - 1) != 0).reshape(-1)
    tps = torch.cumsum(labels, 0)[last]
    precision = tps / (last + 1).to(torch.float64)
    recall = tps / n_pos
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - previous) * precision).sum())
