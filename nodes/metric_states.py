"""torchmetrics states of the metric leaves (:mod:`cuvis_graph.nodes.metrics`).

Kept apart from the leaves so that building and validating a graph does not import
torchmetrics; a leaf's ``create_metrics`` imports this module when evaluation starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from .ranking import average_precision, roc_auc
from .sketch import LogBucketGrid, merge_moments, moments_of

__all__ = [
    "BinaryDetectionState",
    "ScoreStatisticsState",
    "ExplainedVarianceState",
    "OrthogonalityState",
    "auto_threshold",
    "quantile_key",
]


class BinaryDetectionState(Metric):
    """Confusion counts at a threshold plus all scores for AUROC/AP (``cat`` states).

    ``compute`` gives precision ``tp/(tp+fp)``, recall ``tp/(tp+fn)``, F1
    ``2tp/(2tp+fp+fn)``, IoU ``tp/(tp+fp+fn)``, accuracy, specificity ``tn/(tn+fp)``,
    AUROC and average precision; an undefined ratio (0/0) is 0. AUROC (needs both
    classes) and AP (needs an anomalous pixel) are NaN when the labels do not define them,
    with the reason in ``undefined`` (the run record writes them as ``null``).
    """

    full_state_update = False

    def __init__(self, threshold: float | None, ranking: bool = True) -> None:
        super().__init__()
        if threshold is None and not ranking:
            raise ValueError("an automatic threshold needs the scores: keep ranking=True or give a threshold")
        self.threshold = threshold  # None: automatic, see :func:`auto_threshold`
        self.ranking = ranking
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        #: metric -> why it is undefined (NaN) in the last ``compute``.
        self.undefined: dict[str, str] = {}

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores = scores.detach().reshape(-1)
        labels = labels.detach().reshape(-1) > 0
        if self.ranking:
            self.scores.append(scores.float())
            self.labels.append(labels)
        if self.threshold is None:  # counted in compute, once the threshold is known
            return
        predicted = scores > self.threshold
        # out-of-place: states may have been created under inference mode by a previous loop
        self.tp = self.tp + (predicted & labels).sum()
        self.fp = self.fp + (predicted & ~labels).sum()
        self.tn = self.tn + (~predicted & ~labels).sum()
        self.fn = self.fn + (~predicted & labels).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        threshold = None
        if self.threshold is None:
            scores, labels = _cat(self.scores), _cat(self.labels)
            threshold = auto_threshold(scores)
            predicted = scores > threshold
            counts = [(predicted & labels).sum(), (predicted & ~labels).sum(), (~predicted & ~labels).sum(),
                      (~predicted & labels).sum()]
        else:
            counts = [self.tp, self.fp, self.tn, self.fn]
        tp, fp, tn, fn = (x.double() for x in counts)

        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a / b if b > 0 else torch.zeros((), dtype=torch.float64)

        out = {
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn), "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "specificity": ratio(tn, tn + fp),
        }
        if threshold is not None:
            out["threshold"] = torch.tensor(threshold, dtype=torch.float64)
        if self.ranking:
            scores = _cat(self.scores)
            labels = _cat(self.labels)
            out["auroc"] = torch.tensor(roc_auc(scores, labels), dtype=torch.float64)
            out["average_precision"] = torch.tensor(average_precision(scores, labels), dtype=torch.float64)
            positives = int(labels.sum())
            counts = f"{positives} anomalous and {labels.numel() - positives} background pixels"
            self.undefined = {key: f"the labels hold one class only: {counts}"
                              for key in ("auroc", "average_precision") if torch.isnan(out[key])}
        return out


def auto_threshold(scores: torch.Tensor) -> float:
    """0.5 when every score lies in [0, 1] (probabilities), else ``mean + 3 std`` of the scores
    (the classic RX detection rule, on the evaluated data), in float64."""
    s = scores.double()
    if s.numel() == 0:
        return 0.5
    if bool(((s >= 0) & (s <= 1)).all()):
        return 0.5
    return float(s.mean() + 3.0 * s.std(correction=0))


def _cat(x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.cat(x) if x else torch.zeros(0)


class ScoreStatisticsState(Metric):
    """Streaming mean, std, min, max and quantiles of all values it is fed.

    * moments: exact ``(n, mean, M2)`` in float64 merged by Chan's rule
      (:func:`~cuvis_graph.nodes.sketch.merge_moments`, also across ranks);
      ``std = sqrt(M2 / n)`` (population, numpy's default ``ddof=0``);
    * min / max: exact;
    * quantiles: a relative-error log-bucket sketch (:class:`LogBucketGrid`), integer
      counts summed across batches and ranks; no values are kept, so any number of pixels
      works. Bound against ``numpy.quantile`` (linear rule) on the concatenated values::

          |q_hat - q_numpy| <= relative_accuracy * max(|x_(lo)|, |x_(hi)|) + min_abs

      where ``x_(lo) <= q_numpy <= x_(hi)`` are the two order statistics numpy interpolates.

    Non-finite values are skipped.
    """

    full_state_update = False
    CHUNK = 1 << 22

    def __init__(self, quantiles: Sequence[float], relative_accuracy: float, min_abs: float) -> None:
        super().__init__()
        self.qs = [float(q) for q in quantiles]
        self.grid = LogBucketGrid(relative_accuracy, min_abs)
        self.add_state("moments", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx=merge_moments)
        self.add_state("lowest", default=torch.tensor(float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("highest", default=torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("neg_counts", default=torch.zeros(self.grid.size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pos_counts", default=torch.zeros(self.grid.size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("zero_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1)
        for start in range(0, flat.numel(), self.CHUNK):
            chunk = flat[start:start + self.CHUNK].to(torch.float64)
            chunk = chunk[torch.isfinite(chunk)]
            if chunk.numel() == 0:
                continue
            self.moments = merge_moments(torch.stack([self.moments, moments_of(chunk)]))
            self.lowest = torch.minimum(self.lowest, chunk.min())
            self.highest = torch.maximum(self.highest, chunk.max())
            neg, zero, pos = self.grid.count(chunk)
            self.neg_counts = self.neg_counts + neg
            self.pos_counts = self.pos_counts + pos
            self.zero_count = self.zero_count + zero

    def compute(self) -> dict[str, torch.Tensor]:
        n, mean, m2 = (float(v) for v in self.moments)
        nan = float("nan")
        stats = {"count": n, "mean": mean if n else nan, "std": math.sqrt(max(m2, 0.0) / n) if n else nan,
                 "min": float(self.lowest) if n else nan, "max": float(self.highest) if n else nan}
        estimates = self.grid.quantiles(self.neg_counts, self.zero_count, self.pos_counts, self.qs,
                                        float(self.lowest), float(self.highest))
        stats.update({quantile_key(q): v for q, v in zip(self.qs, estimates, strict=True)})
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}


def quantile_key(q: float) -> str:
    """``0.25 -> "q25"``, ``0.999 -> "q99.9"``."""
    return f"q{100 * q:g}"


class ExplainedVarianceState(Metric):
    """Per-component variance of projections (Chan moments, ddof = 1) over total variance."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("moments", default=torch.zeros(3, 0, dtype=torch.float64), dist_reduce_fx=merge_moments)
        self.add_state("total_variance", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, projections: torch.Tensor, total_variance: torch.Tensor) -> None:
        rows = projections.detach().reshape(-1, projections.shape[-1]).to(torch.float64)
        batch = moments_of(rows, dim=0)
        current = self.moments if self.moments.shape[1] else torch.zeros_like(batch)
        self.moments = merge_moments(torch.stack([current, batch]))
        self.total_variance = torch.as_tensor(total_variance, dtype=torch.float64,
                                              device=self.total_variance.device).detach().reshape(())

    def compute(self) -> dict[str, torch.Tensor]:
        n, _, m2 = self.moments
        ratios = m2 / (n - 1).clamp_min(1.0) / self.total_variance
        out = {f"component_{k}": r for k, r in enumerate(ratios)}
        out["total"] = ratios.sum()
        return out


class OrthogonalityState(Metric):
    """``||W W^T - I||_F`` (mean over updates) and ``max |W W^T - I|`` of a ``[K, C]`` matrix."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("deviation_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("updates", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max_abs", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, components: torch.Tensor) -> None:
        w = components.detach().to(torch.float64)
        gram = w @ w.T - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        self.deviation_sum = self.deviation_sum + torch.linalg.matrix_norm(gram).to(self.deviation_sum.device)
        self.updates = self.updates + 1
        self.max_abs = torch.maximum(self.max_abs, gram.abs().max().to(self.max_abs.device))

    def compute(self) -> dict[str, torch.Tensor]:
        return {"frobenius": self.deviation_sum / self.updates.clamp_min(1.0), "max_abs": self.max_abs}
