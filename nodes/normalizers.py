"""Per-channel normalizers fitted by the streaming statistical pass."""

from __future__ import annotations

import torch
from torch import nn

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import register
from cuvis_graph.core.statistics import (
    Accumulator,
    MinMaxAccumulator,
    MomentAccumulator,
    StatisticsError,
)

__all__ = ["MinMaxNormalizer", "StandardNormalizer"]

CUBE = ("B", "H", "W", "C")


class _AffineMixin:
    """Optional trainable affine ``y <- gamma * y + beta`` (``[C]`` each) after normalization."""

    def _init_affine(self, enabled: bool) -> None:
        self.affine = enabled
        self.gamma = nn.Parameter(torch.ones(0)) if enabled else None
        self.beta = nn.Parameter(torch.zeros(0)) if enabled else None

    def _build_affine(self, channels: int) -> None:
        if self.affine and self.gamma.numel() != channels:
            self.gamma = nn.Parameter(torch.ones(channels))
            self.beta = nn.Parameter(torch.zeros(channels))

    def _apply_affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.gamma + self.beta if self.affine else y

    def _compose_affine(self, scale: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of the whole node, float64: ``gamma * (scale * x + offset) + beta``."""
        scale, offset = scale.to(torch.float64), offset.to(torch.float64)
        if self.affine and self.gamma.numel():
            gamma, beta = self.gamma.detach().to(torch.float64), self.beta.detach().to(torch.float64)
            return gamma * scale, gamma * offset + beta
        return scale, offset

    def is_trainable(self) -> bool:
        return self.affine and not self._frozen


@register
class MinMaxNormalizer(_AffineMixin, Node):
    """Min-max scaling ``y = (x - min) / (max - min + eps)`` per channel (``[B,H,W,C]`` -> same).

    Args:
        eps: added to the range so constant channels do not divide by zero.
        per_channel: one min/max per channel (else one over all channels).
        use_running_stats: min/max from the statistical pass over the training set; with
            ``False`` every batch is scaled by its own min/max (no fitting).
        affine: append a trainable per-channel ``gamma * y + beta``.
    """

    INPUTS = {"x": PortSpec(CUBE, batch_key="cube", description="cube")}
    OUTPUTS = {"out": PortSpec(CUBE, description="scaled cube")}

    def __init__(self, eps: float = 1e-6, per_channel: bool = True, use_running_stats: bool = True,
                 affine: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        self.eps, self.per_channel, self.use_running_stats = eps, per_channel, use_running_stats
        self.mark_fitted(not self.statistical)
        self.register_buffer("min", torch.zeros(0))
        self.register_buffer("max", torch.zeros(0))
        self._init_affine(affine)

    @computed_flag(default=True)
    def statistical(self) -> bool:
        """Fitted on the training set, unless every batch is scaled by its own min/max."""
        return self.use_running_stats

    @computed_flag(default=("x",))
    def folds_affine_inputs(self) -> tuple[str, ...]:
        """Per-channel statistics can absorb a fitted affine parent (see cuvis_graph.core.fitting)."""
        return ("x",) if self.per_channel else ()

    @computed_flag(default=True)
    def affine_once_fitted(self) -> bool:
        """Fitted min/max make it ``y = a x + b`` (trainable gamma/beta included); scaling each
        batch by its own min/max is not one fixed map."""
        return self.use_running_stats

    def input_channels(self) -> int | None:
        return int(self.min.numel()) if self.per_channel and self.min.numel() else None

    def create_accumulators(self, x: torch.Tensor) -> dict[str, Accumulator]:
        return {"minmax": MinMaxAccumulator(x.shape[-1] if self.per_channel else 1)}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor) -> None:
        accumulators["minmax"].update(x if self.per_channel else x.reshape(-1, 1))

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["minmax"]
        span = (acc.max.float() - acc.min.float())
        if not bool(torch.isfinite(span).all()):
            raise StatisticsError(f"the data range max - min ({float(acc.max.max()):.3g} - {float(acc.min.min()):.3g}) "
                                  "overflows float32, so every normalized value would be the same; rescale the data "
                                  "(e.g. to reflectance) or use StandardNormalizer")
        self.min = acc.min.float().to(self.min.device)
        self.max = acc.max.float().to(self.max.device)

    def affine_coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fitted map as ``y = a * x + b`` (float64 ``[C]`` or ``[1]``) with the forward's own
        coefficients ``a = 1 / (max - min + eps)``, ``b = -min * a``; ``None`` when it scales each
        batch by its own min/max. Statistical nodes downstream fold it into their moments."""
        if not self.use_running_stats or not self.is_fitted:
            return None
        inv_range = 1.0 / (self.max - self.min + self.eps)
        return self._compose_affine(inv_range, -self.min * inv_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_running_stats:
            lo, hi = self.min, self.max
        else:
            flat = x.reshape(x.shape[0], -1, x.shape[-1]) if self.per_channel else x.reshape(x.shape[0], -1, 1)
            lo = flat.amin(dim=1)[:, None, None, :]
            hi = flat.amax(dim=1)[:, None, None, :]
        self._build_affine(x.shape[-1])
        inv_range = 1.0 / (hi - lo + self.eps)
        return self._apply_affine(torch.addcmul(-lo * inv_range, x, inv_range))  # one pass over x

    @property
    def running_min(self) -> torch.Tensor:
        """cuvis.ai name of :attr:`min`."""
        return self.min

    @property
    def running_max(self) -> torch.Tensor:
        """cuvis.ai name of :attr:`max`."""
        return self.max


@register
class StandardNormalizer(_AffineMixin, Node):
    """Standardization ``y = (x - mu) / (sigma + eps)`` per channel (``[B,H,W,C]`` -> same).

    ``mu`` and ``sigma`` (sample std, ddof=1) come from float64 streaming moments.
    """

    INPUTS = {"x": PortSpec(CUBE, batch_key="cube", description="cube")}
    OUTPUTS = {"out": PortSpec(CUBE, description="standardized cube")}
    statistical = True
    #: fitted, it is ``y = a x + b`` per channel (or one ``a, b`` for all channels)
    affine_once_fitted = True

    def __init__(self, eps: float = 1e-6, per_channel: bool = True, affine: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.eps, self.per_channel = eps, per_channel
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))
        self._init_affine(affine)

    @computed_flag(default=("x",))
    def folds_affine_inputs(self) -> tuple[str, ...]:
        """Per-channel statistics can absorb a fitted affine parent (see cuvis_graph.core.fitting)."""
        return ("x",) if self.per_channel else ()

    def input_channels(self) -> int | None:
        return int(self.mean.numel()) if self.per_channel and self.mean.numel() else None

    def create_accumulators(self, x: torch.Tensor) -> dict[str, Accumulator]:
        return {"moments": MomentAccumulator(x.shape[-1] if self.per_channel else 1, full_covariance=False)}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor) -> None:
        accumulators["moments"].update(x if self.per_channel else x.reshape(-1, 1))

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["moments"]
        self.mean = acc.mean.float().to(self.mean.device)
        self.std = acc.variance(ddof=1).sqrt().float().to(self.std.device)

    def affine_coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fitted map as ``y = a * x + b`` (float64): ``a = 1 / (sigma + eps)``, ``b = -mu a``."""
        if not self.is_fitted:
            return None
        scale = 1.0 / (self.std.to(torch.float64) + self.eps)
        return self._compose_affine(scale, -self.mean.to(torch.float64) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._build_affine(x.shape[-1])
        # (x - mu) / (sigma + eps) with the division in place: one fresh cube instead of two,
        # same bits (out of place only when the division would promote the dtype)
        centred, denom = torch.sub(x, self.mean), self.std + self.eps
        if torch.result_type(centred, denom) == centred.dtype:
            return self._apply_affine(centred.div_(denom))
        return self._apply_affine(centred / denom)
