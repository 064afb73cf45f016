"""Batch-averaged metric state behind the ``compute_metric`` protocol of metric leaves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["BatchMeanState"]


class BatchMeanState(Metric):
    """Mean over batches of a ``compute_metric`` dict (per-batch values, equally weighted).

    Numeric values only; keys are fixed by the first batch (later batches must carry them).
    This is the batch-averaged protocol: for dataset-level metrics (F1, IoU, AUROC) implement
    ``create_metrics`` / ``update_metrics`` instead.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.add_state("sums", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("batches", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Mapping[str, Any]) -> None:
        numeric = {k: float(v) for k, v in values.items()
                   if isinstance(v, int | float) or isinstance(v, torch.Tensor) and v.numel() == 1}
        if not self.keys:
            self.keys = sorted(numeric)
        missing = [k for k in self.keys if k not in numeric]
        if missing:
            raise ValueError(f"compute_metric returned no value for {missing} in this batch (it did before)")
        row = torch.tensor([numeric[k] for k in self.keys], dtype=torch.float64, device=self.batches.device)
        self.sums = row if self.sums.numel() == 0 else self.sums + row
        self.batches = self.batches + 1

    def compute(self) -> dict[str, torch.Tensor]:
        return {k: self.sums[i] / self.batches.clamp_min(1.0) for i, k in enumerate(self.keys)}
