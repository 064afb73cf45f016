"""Global RX anomaly detector (Reed-Xiaoli)."""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch import nn

from cuvis_graph.core.leaves import LossNode
from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import register
from cuvis_graph.core.statistics import (
    Accumulator,
    MomentAccumulator,
    StatisticsError,
    distributed_ready,
)

__all__ = ["RXGlobal", "whitening_from_covariance", "degenerate_bands"]

log = logging.getLogger(__name__)


#: Rows per block when scoring without gradients (two float64 buffers of 4096 x C stay in cache).
SCORE_BLOCK_ROWS = 4096


#: Largest relative regulariser tried when the Cholesky factorisation fails.
MAX_REGULARIZER = 1e-3


#: Meanings of RXGlobal's ``eps``.
EPS_MODES = ("relative", "absolute")

#: Values of RXGlobal's ``use_background_mask``.
BACKGROUND_MASK_MODES = (True, False, "auto")


def background_mask_decision(plan, name: str, setting: bool | str = "auto") -> tuple[bool, str]:
    """Whether RX node ``name`` of a compiled ``plan`` fits its statistics on background pixels
    only, and why (for logs and ``repr``).

    ``True`` / ``False`` are taken as given. ``"auto"`` is on exactly when the node's ``mask``
    port is wired and a loss leaf of the plan is trained on the same labels (its label source
    is the source of that port, e.g. ``batch.mask`` or a label node's output): the pipeline is
    supervised and the pixels the loss calls anomalous are known. Otherwise (statistics-only
    pipelines, metric leaves only, a loss on other labels) all pixels are used: exact,
    unsupervised RX.
    """
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"use_background_mask must be one of {BACKGROUND_MASK_MODES}, got {setting!r}")
    if setting is not True and setting is not False:
        source = plan.step(name).inputs.get("mask")
        losses = [b.name for b in plan.leaves
                  if isinstance(b.leaf, LossNode) and b.target is not None and b.target == source]
        if source is not None and losses:
            return True, f"use_background_mask='auto': loss {', '.join(repr(n) for n in losses)} reads {source}"
        return False, "use_background_mask='auto': no loss leaf reads this node's mask"
    return setting, f"use_background_mask={setting}"


class PixelCount(Accumulator):
    """Number of pixels offered to the statistics (before any background selection)."""

    def __init__(self) -> None:
        self.n = 0
        self.device = torch.device("cpu")

    def update(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        self.n += x[..., 0].numel() if weights is None else int((weights > 0).sum())
        self.device = x.device

    def merge(self, other: Accumulator) -> None:
        self.n += other.count

    def affine_(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """A per-channel affine map of the pixels does not change their number."""

    def all_reduce(self) -> None:
        if distributed_ready():
            n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)
            dist.all_reduce(n)
            self.n = int(round(n.item()))

    @property
    def count(self) -> int:
        return self.n


def whitening_from_covariance(cov: torch.Tensor, eps: float, where: str = "RX",
                              eps_mode: str = "relative") -> torch.Tensor:
    """Lower-triangular ``W = L^{-1}`` with ``L L^T = cov + delta * I`` (float64), where

    ``delta = eps * tr(cov) / C`` (``eps_mode="relative"``: a fraction of the mean
    eigenvalue, the same whatever the data scale) or ``delta = eps`` (``"absolute"``, in the
    squared units of the data).

    Then ``(cov + delta I)^{-1} = W^T W``. If the Cholesky factorisation fails, the
    regulariser steps through the relative values ``1e-12, 1e-11, ..., 1e-3`` (those above
    ``delta``; at most 10 tries) and a warning names the node, the regulariser used and the
    degenerate bands (constant, or duplicated: the cause is upstream); never a silent
    pseudo-inverse cut-off. With ``eps=0`` a singular covariance whose factorisation happens
    to succeed in rounding is warned about the same way.

    Raises:
        ValueError: ``eps`` negative or not finite, or an unknown ``eps_mode``.
        StatisticsError: non-finite covariance, or not positive definite even at ``1e-3``.
    """
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps}")
    if eps_mode not in EPS_MODES:
        raise ValueError(f"{where}: eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    cov = cov.to(torch.float64)
    bad = int((~torch.isfinite(cov)).sum())
    if bad:
        raise StatisticsError(f"{where}: the covariance has {bad} non-finite entries of {cov.numel()}; the data or "
                              "an upstream node produced NaN/Inf")
    c = cov.shape[0]
    scale = float(torch.trace(cov)) / c
    identity = torch.eye(c, dtype=cov.dtype, device=cov.device)
    delta = eps * scale if eps_mode == "relative" else eps
    ladder = [delta] + [10.0 ** k * scale for k in range(-12, 1 + round(math.log10(MAX_REGULARIZER)))
                        if 10.0 ** k * scale > delta]
    for current in ladder:
        factor, info = torch.linalg.cholesky_ex(cov + current * identity)
        if int(info) == 0:
            if current != delta:
                log.warning("%s: covariance not positive definite%s; used relative regulariser %.1e instead of %.1e",
                            where, degenerate_bands(cov), current / scale, delta / scale if scale > 0 else eps)
            elif eps == 0 and (degenerate := degenerate_bands(cov)):
                log.warning("%s: covariance is singular%s; with eps=0 scores along those bands are unbounded "
                            "(set eps > 0)", where, degenerate)
            return torch.linalg.solve_triangular(factor, identity, upper=False)
    raise StatisticsError(f"{where}: covariance of C={c} channels is not positive definite even with regulariser "
                          f"{ladder[-1] / scale if scale > 0 else eps:.0e}{degenerate_bands(cov) or '; the data may have constant or duplicated channels'}")


def degenerate_bands(cov: torch.Tensor, tol: float = 1e-9) -> str:
    """``"; band 3 is constant ...; bands 1 and 2 are duplicates ..."`` for a ``[C, C]`` covariance, or ``""``.

    A band is constant when its variance is ``<= tol * max variance``; two bands are
    duplicates when their correlation is ``>= 1 - tol``.
    """
    var = torch.diagonal(cov).clamp_min(0)
    top = float(var.max()) if var.numel() else 0.0
    constant = torch.nonzero(var <= tol * top).reshape(-1).tolist() if top > 0 else list(range(var.numel()))
    live = torch.nonzero(var > tol * top).reshape(-1) if top > 0 else var.new_zeros(0, dtype=torch.long)
    std = var[live].sqrt()
    corr = cov[live][:, live] / torch.outer(std, std)
    pairs = [(int(live[i]), int(live[j])) for i, j in torch.nonzero(torch.triu(corr >= 1 - tol, diagonal=1)).tolist()]
    parts = []
    if constant:
        parts.append(f"band{'s' if len(constant) > 1 else ''} {', '.join(map(str, constant[:10]))} "
                     f"{'are' if len(constant) > 1 else 'is'} constant (variance 0)")
    if pairs:
        parts.append("bands " + ", ".join(f"{i} and {j}" for i, j in pairs[:5]) + " are duplicates (correlation 1)")
    if not parts:
        return ""
    return "; " + " and ".join(parts) + ": the cause is upstream (drop those bands or check the data)"


@register
class RXGlobal(Node):
    """Global RX: ``score(x) = (x - mu)^T Sigma^{-1} (x - mu)`` per pixel.

    ``[B,H,W,C]`` -> scores ``[B,H,W,1]``. ``mu`` and ``Sigma = scatter / (N - 1)`` come
    from float64 streaming moments over the training pixels ``P``; ``Sigma + delta * I`` is
    factorised by Cholesky, ``L L^T``, and the score is ``||W (x - mu)||^2`` with the
    lower-triangular ``W = L^{-1}``, computed in float64.

    Which pixels ``P`` (``use_background_mask``)::

        P = {p : mask_p == 0}   (background)      or      P = all pixels   (exact RX)
        mu = mean_{p in P} x_p,   Sigma = sum_{p in P} (x_p - mu)(x_p - mu)^T / (|P| - 1)

    RX rejects what the covariance has seen: fitted on all pixels, the anomalies of the
    training scenes add their own direction to ``Sigma`` (their scatter ``~ f (t - mu)(t - mu)^T``
    for a fraction ``f`` of pixels with signature ``t``), and ``Sigma^{-1}`` then discounts
    exactly that direction, so the detector partly learns the anomalies as normal. On the
    reference workload (0.6 % sub-pixel targets) that eigenvalue is ~100x the noise floor and
    costs ~0.02 AUROC (benchmarks/README.md). The default ``"auto"`` uses the background
    only when the labels are part of training: the node's ``mask`` port is wired and a loss
    leaf of the graph is trained on those same labels (its label source is the port's source:
    ``batch.mask``, or a label node such as ``BinaryLabelMapper`` when the port is wired to it).
    In a statistics-only pipeline (no loss; metric leaves do not count) every pixel is used,
    which is exact, unsupervised RX (the published ABU reproduction). Batches without a
    mask contribute all their pixels. After a fit, ``repr(node)`` and the log (INFO) say how
    many pixels of how many were used and why.

    Precision of the score: inference (no gradients) scores in float64. Training with frozen
    statistics runs in the input dtype when it is float32: ``W`` (float64 Cholesky, once per
    change of statistics) is cached as float32 and ``mu`` split into a float32 part and a
    remainder folded into the GEMM, so scores stay within ~1e-6 relative of float64 at any data
    scale, at about half the cost. Trainable statistics (below) run in float64: ``D`` and ``d``
    are float64 parameters whose factor ``(I + tril(D)) W`` changes every step (nothing to
    cache), and the float64 path keeps the learned inverse covariance as accurate as the fit.
    Autocast (``bf16-mixed``) changes none of this: the float32 path runs with autocast
    disabled and float64 operands are never autocast (``docs/precision.md``).

    Trainable (``trainable_stats=True``): the fitted ``W`` and ``mu`` stay as buffers and
    two parameters, initialised at zero, refine them in whitened units::

        z = (I + tril(D)) (W (x - mu) - d),        score = ||z||^2

    i.e. ``Sigma^{-1} = W^T (I + tril(D))^T (I + tril(D)) W``: a product of lower-triangular
    factors, so the inverse covariance stays positive semi-definite (scores >= 0) and
    ``mu`` moves consistently with it (``mu' = mu + L d``). Optimizer steps act on
    well-conditioned, dimensionless entries whatever the data scale.

    Args:
        eps: the regulariser ``delta`` added to the diagonal of ``Sigma``, read per ``eps_mode``.
        eps_mode: ``"relative"`` (default): ``delta = eps * tr(Sigma) / C``, a fraction of the
            mean eigenvalue, so the same ``eps`` means the same thing on reflectance and on raw
            counts (~1e4); ``eps=1e-12`` is exact RX. ``"absolute"``: ``delta = eps`` in the
            squared units of the node's input (e.g. ``eps=1e-6`` on data in [0, 1]). A
            regulariser much above the noise variance shrinks RX towards the Euclidean
            distance ``||x - mu||^2 / delta``.
        trainable_stats: learn ``D`` and ``d`` by gradient descent.
        use_background_mask: ``"auto"`` (default): background pixels (``mask == 0``) when a loss
            leaf is trained on the labels this node's ``mask`` port reads, all pixels otherwise
            (above); ``True``: always exclude pixels with ``mask > 0`` (when the batch has a
            mask); ``False``: always all pixels.
    """

    INPUTS = {
        "x": PortSpec(("B", "H", "W", "C"), batch_key="cube", description="cube"),
        "mask": PortSpec(("B", "H", "W"), dtype=torch.int64, optional=True, batch_key="mask",
                         description="labels; >0 pixels are left out of the statistics"),
    }
    OUTPUTS = {"scores": PortSpec(("B", "H", "W", 1), description="squared Mahalanobis distance")}
    statistical = True
    #: fitted affine parents (normalizers) are folded into the moments of ``x`` during the fit
    folds_affine_inputs = ("x",)

    def __init__(self, eps: float = 1e-12, trainable_stats: bool = False, use_background_mask: bool | str = "auto",
                 eps_mode: str = "relative", name: str | None = None) -> None:
        super().__init__(name=name)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if eps_mode not in EPS_MODES:
            raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
        if use_background_mask is not True and use_background_mask is not False and use_background_mask != "auto":
            raise ValueError(f"use_background_mask must be one of {BACKGROUND_MASK_MODES}, got {use_background_mask!r}")
        self.eps_mode = eps_mode
        self.eps, self.trainable_stats, self.use_background_mask = eps, trainable_stats, use_background_mask
        #: ``"auto"`` resolved by :meth:`prepare_statistics` (``None``: no plan seen, all pixels)
        self._auto_decision: tuple[bool, str] | None = None
        #: which pixels the statistics were fitted on (set by :meth:`finalize_statistics`)
        self.fitted_on: str | None = None
        self.register_buffer("mean", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("whitening", torch.zeros(0, 0, dtype=torch.float64))
        if trainable_stats:
            self.factor_update = nn.Parameter(torch.zeros(0, 0, dtype=torch.float64))
            self.mean_update = nn.Parameter(torch.zeros(0, dtype=torch.float64))

    def input_channels(self) -> int | None:
        return int(self.mean.numel()) or None

    def prepare_statistics(self, plan, name: str) -> None:
        """Resolve ``use_background_mask`` against the compiled ``plan`` (the statistics pass
        calls this before streaming; see :func:`background_mask_decision`)."""
        self._auto_decision = background_mask_decision(plan, name, self.use_background_mask)

    def _background_only(self) -> tuple[bool, str]:
        """``(fit on background pixels only, why)``; an explicit ``True`` / ``False`` always wins."""
        if self.use_background_mask is True or self.use_background_mask is False:
            return self.use_background_mask, f"use_background_mask={self.use_background_mask}"
        return self._auto_decision or (False, "use_background_mask='auto' without a graph: all pixels")

    def create_accumulators(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Accumulator]:
        return {"moments": MomentAccumulator(x.shape[-1], full_covariance=True), "pixels": PixelCount()}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor,
                          mask: torch.Tensor | None = None) -> None:
        weights = (mask == 0) if (mask is not None and self._background_only()[0]) else None
        accumulators["moments"].update(x, weights)
        if "pixels" in accumulators:
            accumulators["pixels"].update(x)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc = accumulators["moments"]
        total = accumulators["pixels"].count if "pixels" in accumulators else acc.count
        background, reason = self._background_only()
        if background:
            self.fitted_on = f"{acc.count} background pixels (mask == 0) of {total}; {reason}"
        else:
            self.fitted_on = f"all {total} pixels; {reason}"
        log.info("%s (RXGlobal): statistics fitted on %s", self.name, self.fitted_on)
        acc.require_rank(acc.dim, "a full-rank covariance")
        device = self.mean.device
        self.mean = acc.mean.to(device)
        self.whitening = whitening_from_covariance(acc.covariance(ddof=1), self.eps, eps_mode=self.eps_mode,
                                                   where=f"node '{self.name}' (RXGlobal)").to(device)
        if self.trainable_stats:
            c = self.mean.shape[0]
            requires_grad = not self._frozen
            self.factor_update = nn.Parameter(torch.zeros(c, c, dtype=torch.float64, device=device),
                                              requires_grad=requires_grad)
            self.mean_update = nn.Parameter(torch.zeros(c, dtype=torch.float64, device=device),
                                            requires_grad=requires_grad)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", statistics fitted on {self.fitted_on}" if self.fitted_on else "")

    def is_trainable(self) -> bool:
        return self.trainable_stats and not self._frozen

    @property
    def mu(self) -> torch.Tensor:
        """cuvis.ai name of :attr:`mean` (``[C]``)."""
        return self.mean

    @property
    def cov(self) -> torch.Tensor:
        """The regularised covariance ``(W^T W)^{-1} = L L^T`` (``[C, C]``, float64) that the
        whitening ``W`` inverts (cuvis.ai's ``cov``; computed on access)."""
        factor = torch.linalg.inv(self.whitening)
        return factor @ factor.T

    def _factor(self) -> torch.Tensor:
        """The effective lower-triangular factor ``(I + tril(D)) W``."""
        if not self.trainable_stats:
            return self.whitening
        eye = torch.eye(self.whitening.shape[0], dtype=self.whitening.dtype, device=self.whitening.device)
        return (eye + torch.tril(self.factor_update)) @ self.whitening

    @property
    def covariance_inverse(self) -> torch.Tensor:
        """Effective ``Sigma^{-1}`` (``[C, C]`` float64)."""
        w = self._factor()
        return w.T @ w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B,H,W,1]`` in ``x``'s dtype.

        * no gradients, statistics frozen: float64 in row blocks (:meth:`_score_in_blocks`);
        * gradients, statistics frozen, float32 input (or a lower-precision one under autocast,
          e.g. ``bf16-mixed``): float32 arithmetic with the cached float32 factor
          (:meth:`_score_float32`), about half the time of float64, never in bfloat16;
        * trainable statistics (or other dtypes, or ONNX tracing): float64 autograd, since the
          factor ``(I + tril(D)) W`` and ``mu`` change every step and gradients reach them.
        """
        if not self.trainable_stats and not torch.jit.is_tracing():
            if not torch.is_grad_enabled():
                return self._score_in_blocks(x)
            if x.dtype == torch.float32 or (x.dtype in (torch.bfloat16, torch.float16)
                                            and torch.is_autocast_enabled(x.device.type)):
                return self._score_float32(x)
        z = (x.to(torch.float64) - self.mean) @ self.whitening.T
        if self.trainable_stats:
            eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
            z = (z - self.mean_update) @ (eye + torch.tril(self.factor_update)).T
        return (z * z).sum(dim=-1, keepdim=True).to(x.dtype)

    def _score_in_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Inference scoring, same values as the differentiable path: rows in blocks of
        ``SCORE_BLOCK_ROWS`` through reused float64 buffers (no full-scene float64 temporaries)."""
        c = x.shape[-1]
        rows = x.reshape(-1, c)
        n = rows.shape[0]
        scores = torch.empty(n, dtype=torch.float64, device=x.device)
        size = min(SCORE_BLOCK_ROWS, max(n, 1))
        centred = torch.empty(size, c, dtype=torch.float64, device=x.device)
        whitened = torch.empty(size, c, dtype=torch.float64, device=x.device)
        projection = self.whitening.T
        for start in range(0, n, size):
            block = rows[start:start + size]
            k = block.shape[0]
            centred[:k].copy_(block).sub_(self.mean)
            torch.mm(centred[:k], projection, out=whitened[:k])
            whitened[:k].mul_(whitened[:k])
            torch.sum(whitened[:k], dim=-1, out=scores[start:start + k])
        return scores.reshape(*x.shape[:-1], 1).to(x.dtype)

    def _float32_factors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu_hi, W^T, -W mu_lo)`` in float32, cached until the statistics change.

        ``mu = mu_hi + mu_lo`` with ``mu_hi = float32(mu)``: ``x - mu_hi`` is exact for pixels
        within a factor 2 of the mean (Sterbenz), and the remainder ``W mu_lo`` (computed in
        float64) enters the GEMM as a bias, so sensor-scale data (~1e4) keep float32 accuracy
        on the centred values.
        """
        key = (self.whitening.data_ptr(), self.whitening._version, self.mean.data_ptr(), self.mean._version,
               device)
        cached = self.__dict__.get("_float32_cache")
        if cached is None or cached[0] != key:
            mean_hi = self.mean.to(torch.float32)
            offset = -(self.whitening @ (self.mean - mean_hi.to(torch.float64)))
            factors = (mean_hi.to(device), self.whitening.T.to(device, torch.float32),
                       offset.to(device, torch.float32))
            self.__dict__["_float32_cache"] = cached = (key, factors)
        return cached[1]

    def _score_float32(self, x: torch.Tensor) -> torch.Tensor:
        """Training scores with frozen statistics: ``||(x - mu) W^T||^2`` in float32, ``W`` from
        the float64 factorisation (cast once); backward ``2 z W`` (one GEMM).

        Runs with autocast disabled: under ``bf16-mixed`` autocast would turn the whitening
        GEMM and the squared norm into bfloat16 (8-bit mantissa, ~4e-3 relative error on every
        whitened value, far from the ~1e-6 this path keeps) and hand backward a bfloat16 ``z``
        beside the float32 factor.
        """
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1]).float()
            scores = _WhitenedSquaredNorm.apply(rows, *self._float32_factors(x.device))
        return scores.reshape(*x.shape[:-1], 1)


class _WhitenedSquaredNorm(torch.autograd.Function):
    """``s_n = ||z_n||^2`` with ``z = (x - mu_hi) P + o`` (``x [N, C]``, ``P = W^T [C, C]``,
    ``o [C]``); ``ds/dx = 2 (g * z) P^T``. Keeps only ``z`` for backward (no squared copy)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, mean_hi: torch.Tensor, projection: torch.Tensor,
                offset: torch.Tensor) -> torch.Tensor:
        z = torch.addmm(offset, rows - mean_hi, projection)
        ctx.save_for_backward(z, projection)
        return torch.linalg.vecdot(z, z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        z, projection = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return torch.mm(z * (2 * grad).unsqueeze(1), projection.T), None, None, None

