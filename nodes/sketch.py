"""Mergeable streaming statistics for metric states: exact moments and a quantile sketch.

Moments (Chan et al.): a state ``(n, mean, M2)`` with ``M2 = sum (x - mean)^2``; two states
merge exactly::

    n = n_a + n_b,   d = mean_b - mean_a,
    mean = mean_a + d n_b / n,   M2 = M2_a + M2_b + d^2 n_a n_b / n

Quantiles: a relative-error log-bucket sketch (DDSketch, Masson et al. 2019). With
``gamma = (1 + alpha) / (1 - alpha)``, a value ``|x| >= min_abs`` falls in bucket
``k = ceil(log_gamma |x|)`` (one bucket array per sign) whose representative
``2 gamma^k / (gamma + 1)`` is within a relative ``alpha`` of every value in it;
``|x| < min_abs`` count as 0. Bucket counts are integers on a fixed grid, so sketches
merge (and all-reduce across ranks) by addition, exactly, whatever the data range or
the number of values. Memory: ``2 * log_gamma(max_abs / min_abs)`` counts (about 23k
int64 = 186 kB for the defaults).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["merge_moments", "moments_of", "LogBucketGrid"]

F64 = torch.float64


def moments_of(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``[3, ...]`` state ``(n, mean, M2)`` of ``x`` along ``dim`` (float64)."""
    x = x.to(F64)
    n = x.shape[dim]
    if n == 0:
        shape = x.shape[:dim] + x.shape[dim + 1:]
        return torch.zeros((3, *shape), dtype=F64, device=x.device)
    mean = x.mean(dim=dim)
    m2 = ((x - mean.unsqueeze(dim)) ** 2).sum(dim=dim)
    return torch.stack([torch.full_like(mean, float(n)), mean, m2])


def _merge_two(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe = torch.where(n > 0, n, torch.ones_like(n))
    delta = mean_b - mean_a
    mean = torch.where(n > 0, mean_a + delta * n_b / safe, torch.zeros_like(mean_a))
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / safe
    return torch.stack([n, mean, m2])


def merge_moments(stacked: torch.Tensor) -> torch.Tensor:
    """Merge ``[R, 3, ...]`` moment states into one ``[3, ...]`` (a torchmetrics reducer)."""
    out = stacked[0]
    for row in stacked[1:]:
        out = _merge_two(out, row)
    return out


class LogBucketGrid:
    """The fixed bucket grid of the quantile sketch (see the module docstring).

    Args:
        relative_accuracy: ``alpha``; a quantile estimate is within ``alpha`` (relative) of
            the order statistics it interpolates.
        min_abs: values with smaller magnitude are counted as 0 (absolute error < min_abs).
        max_abs: larger magnitudes share the top bucket (float32's range by default).
    """

    def __init__(self, relative_accuracy: float = 0.005, min_abs: float = 1e-12,
                 max_abs: float = float(torch.finfo(torch.float32).max)) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        if not 0 < min_abs < max_abs:
            raise ValueError(f"need 0 < min_abs < max_abs, got {min_abs}, {max_abs}")
        self.alpha = float(relative_accuracy)
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self.log_gamma = math.log(self.gamma)
        self.min_abs, self.max_abs = float(min_abs), float(max_abs)
        self.offset = math.ceil(math.log(self.min_abs) / self.log_gamma)
        self.size = math.ceil(math.log(self.max_abs) / self.log_gamma) - self.offset + 1

    def bucket(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Bucket index of each ``|x| >= min_abs`` (int64, clamped to the grid)."""
        keys = torch.ceil(torch.log(magnitude.to(F64)) / self.log_gamma) - self.offset
        return keys.clamp(0, self.size - 1).long()

    def representatives(self, device: torch.device | None = None) -> torch.Tensor:
        """``[size]`` float64 value representing each bucket: ``2 gamma^k / (gamma + 1)``."""
        keys = torch.arange(self.size, dtype=F64, device=device) + self.offset
        return 2.0 * torch.exp(keys * self.log_gamma) / (self.gamma + 1.0)

    def count(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(negative counts [size], zero count [], positive counts [size])`` of finite ``x``."""
        x = x.reshape(-1).to(F64)
        magnitude = x.abs()
        small = magnitude < self.min_abs
        neg = torch.bincount(self.bucket(magnitude[(x < 0) & ~small]), minlength=self.size)
        pos = torch.bincount(self.bucket(magnitude[(x > 0) & ~small]), minlength=self.size)
        return neg, small.sum(), pos

    def quantiles(self, neg: torch.Tensor, zero: torch.Tensor, pos: torch.Tensor, qs: Sequence[float],
                  lowest: float, highest: float) -> list[float]:
        """Quantiles by numpy's linear rule on the sketch.

        With ``n`` values and ``h = (n - 1) q``, numpy returns
        ``x_(lo) + f (x_(hi) - x_(lo))`` (``lo = floor h``, ``hi = ceil h``, ``f = h - lo``).
        Here each order statistic is replaced by its bucket's representative (clamped to the
        exact ``[lowest, highest]``, the extremes are exact), so::

            |q_sketch - q_numpy| <= alpha * max(|x_(lo)|, |x_(hi)|) + min_abs
        """
        counts = torch.cat([neg.flip(0), zero.reshape(1), pos]).to(torch.long)
        reps = self.representatives(counts.device)
        values = torch.cat([-reps.flip(0), reps.new_zeros(1), reps])
        cumulative = torch.cumsum(counts, 0)
        n = int(cumulative[-1])
        if n == 0:
            return [float("nan")] * len(qs)

        def order_statistic(rank: int) -> float:
            if rank <= 0:
                return lowest
            if rank >= n - 1:
                return highest
            index = int(torch.searchsorted(cumulative, torch.tensor(rank, device=counts.device), right=True))
            return min(max(float(values[index]), lowest), highest)

        out = []
        for q in qs:
            h = (n - 1) * float(q)
            lo = math.floor(h)
            hi = min(lo + 1, n - 1)
            frac = h - lo
            x_lo = order_statistic(lo)
            out.append(x_lo + frac * (order_statistic(hi) - x_lo) if frac > 0 else x_lo)
        return out
