"""Global RX anomaly detector (Reed-Xiaoli)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from cuvis_graph.node import Node, PortSpec
from cuvis_graph.registry import register
from cuvis_graph.statistics import Accumulator, MomentAccumulator

__all__ = ["RXGlobal", "whitening_from_covariance"]

log = logging.getLogger(__name__)


def whitening_from_covariance(cov: torch.Tensor, eps: float, where: str = "RX") -> torch.Tensor:
    """Lower-triangular ``W = L^{-1}`` with ``L L^T = cov + eps * (tr(cov)/C) * I`` (float64).

    Then ``(cov_reg)^{-1} = W^T W``. If the Cholesky factorisation fails, ``eps`` grows by
    10x (up to 1e-3) and a warning names the node and the regulariser used: never a silent
    pseudo-inverse cut-off.
    """
    cov = cov.to(torch.float64)
    c = cov.shape[0]
    scale = torch.trace(cov) / c
    identity = torch.eye(c, dtype=cov.dtype, device=cov.device)
    current = eps
    while True:
        factor, info = torch.linalg.cholesky_ex(cov + current * scale * identity)
        if int(info) == 0:
            if current != eps:
                log.warning("%s: covariance not positive definite; used relative regulariser %.1e instead of %.1e",
                            where, current, eps)
            return torch.linalg.solve_triangular(factor, identity, upper=False)
        if current >= 1e-3:
            raise RuntimeError(f"{where}: covariance is not positive definite even with regulariser {current:.0e}; "
                               "the data may have constant or duplicated channels")
        current = max(current * 10, 1e-12)


@register
class RXGlobal(Node):
    """Global RX: ``score(x) = (x - mu)^T Sigma^{-1} (x - mu)`` per pixel.

    ``[B,H,W,C]`` -> scores ``[B,H,W,1]``. ``mu`` and ``Sigma = scatter / (N - 1)`` come
    from float64 streaming moments over the training pixels; ``Sigma + eps * tr(Sigma)/C * I``
    is factorised by Cholesky, ``L L^T``, and the score is computed as ``||W (x - mu)||^2``
    with ``W = L^{-1}``, in float64.

    Args:
        eps: relative regulariser (fraction of the mean eigenvalue added to the diagonal).
        trainable_stats: make ``mu`` and ``W`` trainable. ``W`` stays lower triangular, so
            ``Sigma^{-1} = W^T W`` is positive semi-definite and scores stay >= 0.
        use_background_mask: exclude pixels with ``mask > 0`` from the statistics (when
            the batch has a mask).
    """

    INPUTS = {
        "x": PortSpec(("B", "H", "W", "C"), batch_key="cube", description="cube"),
        "mask": PortSpec(("B", "H", "W"), dtype=torch.int64, optional=True, batch_key="mask",
                         description="labels; >0 pixels are left out of the statistics"),
    }
    OUTPUTS = {"scores": PortSpec(("B", "H", "W", 1), description="squared Mahalanobis distance")}
    statistical = True

    def __init__(self, eps: float = 1e-12, trainable_stats: bool = False, use_background_mask: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.trainable_stats, self.use_background_mask = eps, trainable_stats, use_background_mask
        self.register_buffer("mean", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("whitening", torch.zeros(0, 0, dtype=torch.float64))

    def create_accumulators(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Accumulator]:
        return {"moments": MomentAccumulator(x.shape[-1], full_covariance=True)}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor,
                          mask: torch.Tensor | None = None) -> None:
        weights = (mask == 0) if (self.use_background_mask and mask is not None) else None
        accumulators["moments"].update(x, weights)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["moments"]
        mean = acc.mean
        whitening = whitening_from_covariance(acc.covariance(ddof=1), self.eps, where=f"node '{self.name}'")
        self._set_stats(mean, whitening)

    def _set_stats(self, mean: torch.Tensor, whitening: torch.Tensor) -> None:
        for attr, value in (("mean", mean), ("whitening", whitening)):
            if attr in self._parameters:
                del self._parameters[attr]
            elif attr in self._buffers:
                del self._buffers[attr]
            if self.trainable_stats:
                self.register_parameter(attr, nn.Parameter(value.detach().clone(), requires_grad=not self._frozen))
            else:
                self.register_buffer(attr, value.detach().clone())

    def is_trainable(self) -> bool:
        return self.trainable_stats and not self._frozen

    @property
    def covariance_inverse(self) -> torch.Tensor:
        """``Sigma^{-1} = W^T W`` (``[C, C]`` float64)."""
        w = torch.tril(self.whitening)
        return w.T @ w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = torch.tril(self.whitening)
        z = (x.to(torch.float64) - self.mean) @ w.T
        return (z * z).sum(dim=-1, keepdim=True).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401 - torch hook
        mean, whitening = state_dict.get(prefix + "mean"), state_dict.get(prefix + "whitening")
        if mean is not None and whitening is not None:
            self._set_stats(mean, whitening)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
