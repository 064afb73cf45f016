"""Principal component analysis fitted from streaming float64 moments."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cuvis_graph.core.node import Dim, DimensionMismatch, Node, PortSpec
from cuvis_graph.core.registry import register
from cuvis_graph.core.statistics import Accumulator, MomentAccumulator

__all__ = ["TrainablePCA", "principal_axes"]

F64 = torch.float64


def principal_axes(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a symmetric ``[C, C]`` matrix, by ``torch.linalg.eigh`` (float64).

    Returns ``(eigenvalues [k] descending, axes [k, C])``, each axis signed so that its
    entry of largest magnitude is positive (ties: the first such entry). That convention is
    deterministic: the same data give the same components on every run and platform.
    """
    values, vectors = torch.linalg.eigh(matrix.to(F64))  # ascending
    values = values.flip(0)[:k]
    axes = vectors.flip(1)[:, :k].T.contiguous()
    pivot = axes.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(axes.gather(1, pivot))
    signs[signs == 0] = 1.0
    return values, axes * signs


@register
class TrainablePCA(Node):
    """PCA projection ``y = (x - mu) W^T`` (optionally whitened): ``[B,H,W,C] -> [B,H,W,K]``.

    Fit (one streaming pass, float64, nothing concatenated): ``mu`` and
    ``Sigma = scatter / (N - 1)`` from a :class:`~cuvis_graph.core.statistics.MomentAccumulator`,
    then ``Sigma = V diag(lambda) V^T`` by ``torch.linalg.eigh`` (never an SVD of the data).
    ``W = V[:, :K]^T`` (``[K, C]``, rows = components by decreasing eigenvalue), each row
    signed so that its largest-magnitude loading is positive.

    * ``explained_variance = lambda_{1..K}`` (ddof = 1, as scikit-learn);
    * ``explained_variance_ratio = lambda_k / tr(Sigma)``: relative to the TOTAL variance of
      all C channels, so it sums to 1 only when ``K = C`` (fitted values; for trained
      components see ``ExplainedVarianceMetric``);
    * ``whiten=True``: ``y_k <- y_k / sqrt(lambda_k)`` (``lambda_k`` floored at
      ``eps * lambda_1``), so every output has unit variance on the training data;
    * ``center=False``: no mean is subtracted; ``W`` are then the principal axes of the
      second moment ``E[x x^T]`` (``scatter / N + mu mu^T``) and ``y = x W^T``.

    The projection runs in float64 (raw sensor values are ~1e4) and is returned in the
    input dtype. ``K`` is bound from ``n_components``, so downstream nodes see ``C = K``.

    Args:
        n_components: K, number of components kept (``1 <= K <= C``).
        whiten: divide each component by the square root of its eigenvalue.
        center: subtract the training mean before projecting.
        trainable: make ``W`` an ``nn.Parameter`` (initialised by the fit) that losses such
            as ``OrthogonalityLoss`` and downstream objectives train; ``mu`` and the
            whitening scale stay fitted buffers.
        eps: relative eigenvalue floor used by whitening.
    """

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube", description="cube")}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "K"), description="principal-component scores")}
    statistical = True
    #: fitted affine parents (normalizers) are folded into the moments of ``x`` during the fit
    folds_affine_inputs = ("x",)

    def __init__(self, n_components: int, whiten: bool = False, center: bool = True, trainable: bool = False,
                 eps: float = 1e-12, name: str | None = None) -> None:
        super().__init__(name=name)
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.n_components = int(n_components)
        self.whiten, self.center, self.trainable, self.eps = whiten, center, trainable, float(eps)
        self.register_buffer("mean", torch.zeros(0, dtype=F64))
        self.register_buffer("explained_variance", torch.zeros(0, dtype=F64))
        self.register_buffer("explained_variance_ratio", torch.zeros(0, dtype=F64))
        self.register_buffer("total_variance", torch.zeros((), dtype=F64))
        self.register_buffer("output_scale", torch.ones(0, dtype=F64))
        if trainable:
            self.components = nn.Parameter(torch.zeros(0, 0, dtype=F64))
        else:
            self.register_buffer("components", torch.zeros(0, 0, dtype=F64))

    # -- shapes -------------------------------------------------------------------------
    def input_channels(self) -> int | None:
        return int(self.mean.numel()) or None

    def dim_bindings(self) -> dict[str, int]:
        return {"K": self.n_components}

    def infer_output_dims(self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]
                          ) -> dict[str, tuple[Dim, ...]]:
        out = super().infer_output_dims(input_dims)
        dims = input_dims.get("x")
        channels = dims[-1] if dims else None
        if isinstance(channels, int) and channels < self.n_components:
            raise DimensionMismatch(f"n_components={self.n_components} exceeds the C={channels} input channels")
        return out

    # -- statistics ----------------------------------------------------------------------
    def create_accumulators(self, x: torch.Tensor) -> dict[str, Accumulator]:
        if x.shape[-1] < self.n_components:
            raise ValueError(f"node '{self.name}': n_components={self.n_components} exceeds the "
                             f"C={x.shape[-1]} input channels")
        return {"moments": MomentAccumulator(x.shape[-1], full_covariance=True)}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor) -> None:
        accumulators["moments"].update(x)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc: MomentAccumulator = accumulators["moments"]  # type: ignore[assignment]
        device = self.mean.device
        if self.center:
            acc.require_rank(self.n_components, f"{self.n_components} principal components")
            mean = acc.mean
            matrix = acc.covariance(ddof=1)
        else:
            mean = torch.zeros(acc.dim, dtype=F64, device=acc.sum.device)
            matrix = acc.scatter / acc.count + torch.outer(acc.mean, acc.mean)
        values, axes = principal_axes(matrix, self.n_components)
        total = torch.trace(matrix)
        floor = self.eps * values[0].clamp_min(torch.finfo(F64).tiny)
        self.mean = mean.to(device)
        self.explained_variance = values.to(device)
        self.total_variance = total.to(device)
        self.explained_variance_ratio = (values / total).to(device)
        scale = values.clamp_min(floor).rsqrt() if self.whiten else torch.ones_like(values)
        self.output_scale = scale.to(device)
        if self.trainable:
            self.components = nn.Parameter(axes.to(device), requires_grad=not self._frozen)
        else:
            self.components = axes.to(device)

    # -- training ------------------------------------------------------------------------
    def is_trainable(self) -> bool:
        return self.trainable and not self._frozen

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.to(F64) - self.mean) @ self.components.T
        if self.whiten:
            y = y * self.output_scale
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, n_components={self.n_components}, whiten={self.whiten}, "
                f"center={self.center}, trainable={self.trainable}")
