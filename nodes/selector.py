"""Soft (differentiable) channel selection with an annealed softmax temperature."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.node import Dim, DimensionMismatch, Node, PortSpec
from cuvis_graph.core.registry import register
from cuvis_graph.core.statistics import Accumulator, MomentAccumulator

__all__ = ["SoftChannelSelector"]

CUBE = ("B", "H", "W", "C")
INIT_METHODS = ("uniform", "variance")


@register
class SoftChannelSelector(Node):
    """Learnable soft selection of ``n_select`` of C channels: ``y = x * w`` (``[B,H,W,C]`` -> same).

    Weights (``[C]``, broadcast over pixels)::

        w = n_select * softmax((l + g) / T)          (sum_c w_c = n_select)

    with trainable logits ``l`` (``nn.Parameter`` of size C), Gumbel noise
    ``g_c = -log(-log u_c)``, ``u ~ U(0, 1)`` only when ``gumbel=True`` *and* the node is in
    training mode with gradients enabled (never in the statistical pass, validation or
    inference), and the temperature annealed once per training epoch (0-based ``e``)::

        T(e) = max(T_min, T_init * decay ** e)

    The compiled Lightning module calls :meth:`on_epoch_start` (-> :meth:`set_epoch`) at the
    start of every training epoch, so epoch 0 trains at ``T_init`` and after ``k`` epochs
    the node holds ``T(k - 1)``, the temperature its weights were last trained with (used by
    validation and inference). ``temperature`` is a buffer: it is saved and resumed with
    the state dict. The temperature each epoch trains with is logged as
    ``train/<name>/temperature``.

    ``hard=True``: in eval mode the weights become the top-k mask ``m_c = 1`` for the
    ``n_select`` largest logits, else 0 (exactly ``n_select`` channels pass, unscaled);
    training keeps the soft weights. Caveat: statistical nodes downstream (RX, PCA) are
    fitted on the soft-weighted cube during the statistical pass, so in eval they see a
    differently scaled input with zeroed channels; refit them on the hard selection
    before relying on their eval scores.

    Initialisation of ``l``:

    * ``"uniform"``: ``l = 0`` (every ``w_c = n_select / C``); not statistical.
    * ``"variance"``: statistical; from the streaming float64 per-channel variance
      ``s_c^2`` of the training input, ``l_c = log s_c^2 - mean_c' log s_c'^2``, so at
      ``T = 1`` the weights are proportional to the variances.

    C is unknown at construction: the logits are created as soon as C is known, i.e. when
    the graph is built for a datamodule that declares its channel count (``graph.compile``,
    ``graph.train``; ``graph.validate`` checks C but creates nothing), at the statistical
    fit, or at the first forward (whichever comes first).

    Args:
        n_select: number of channels to keep, ``1 <= n_select <= C``.
        init_method: ``"uniform"`` or ``"variance"``.
        temperature_init, temperature_min, temperature_decay: the annealing schedule.
        hard: top-k binary mask in eval mode.
        trainable: ``False`` freezes the logits (a fixed selection, e.g. the variance init).
        eps: ``log(var + eps)`` in the variance init (``0``: the variance clamped at the
            smallest positive float64).
        gumbel: add Gumbel noise to the logits during gradient training.
    """

    INPUTS = {"x": PortSpec(CUBE, batch_key="cube", description="cube")}
    OUTPUTS = {"out": PortSpec(CUBE, description="channel-weighted cube")}

    def __init__(self, n_select: int, init_method: str = "uniform", temperature_init: float = 5.0,
                 temperature_min: float = 0.1, temperature_decay: float = 0.9, hard: bool = False,
                 gumbel: bool = False, trainable: bool = True, eps: float = 0.0, name: str | None = None) -> None:
        super().__init__(name=name)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.trainable, self.eps = bool(trainable), float(eps)
        if int(n_select) < 1:
            raise ValueError(f"n_select must be >= 1, got {n_select}")
        if init_method not in INIT_METHODS:
            raise ValueError(f"init_method must be one of {INIT_METHODS}, got {init_method!r}")
        if not 0 < temperature_min <= temperature_init:
            raise ValueError(f"need 0 < temperature_min <= temperature_init, got {temperature_min}, {temperature_init}")
        if not 0 < temperature_decay <= 1:
            raise ValueError(f"temperature_decay must be in (0, 1], got {temperature_decay}")
        self.n_select, self.init_method = int(n_select), init_method
        self.temperature_init, self.temperature_min = float(temperature_init), float(temperature_min)
        self.temperature_decay, self.hard, self.gumbel = float(temperature_decay), hard, gumbel
        self.mark_fitted(not self.statistical)
        self.logits = nn.Parameter(torch.zeros(0))
        self.register_buffer("current_temperature", torch.tensor(self.temperature_init, dtype=torch.float64))
        self.register_buffer("annealing_epoch", torch.tensor(0, dtype=torch.long))
        if not self.trainable:
            self.freeze()

    @property
    def channel_logits(self) -> torch.Tensor:
        """cuvis.ai name of :attr:`logits` (``[C]``)."""
        return self.logits

    # -- schedule ------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """Current softmax temperature ``T``."""
        return float(self.current_temperature)

    def temperature_at(self, epoch: int) -> float:
        """``T(epoch) = max(T_min, T_init * decay ** epoch)``."""
        return max(self.temperature_min, self.temperature_init * self.temperature_decay ** int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Set the temperature for (0-based) training epoch ``epoch``."""
        self.annealing_epoch.fill_(int(epoch))
        self.current_temperature.fill_(self.temperature_at(epoch))

    def on_epoch_start(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def logged_values(self) -> dict[str, float]:
        """``{"temperature": T}``, logged each training epoch as ``train/<name>/temperature``."""
        return {"temperature": self.temperature}

    @computed_flag(default=False)
    def statistical(self) -> bool:
        """The variance init fits the logits from the training data; the uniform one does not."""
        return self.init_method == "variance"

    # -- lazy logits ---------------------------------------------------------------------
    @property
    def n_channels(self) -> int | None:
        """C once the logits exist, else ``None``."""
        return int(self.logits.numel()) or None

    def input_channels(self) -> int | None:
        return self.n_channels

    def check_channels(self, n_channels: int) -> None:
        """Raise :class:`DimensionMismatch` unless the selector can take ``C = n_channels``
        (``n_select <= C``, and existing logits of size C)."""
        n_channels = int(n_channels)
        if self.n_select > n_channels:
            raise DimensionMismatch(f"n_select={self.n_select} exceeds the C={n_channels} input channels")
        if self.logits.numel() not in (0, n_channels):
            raise DimensionMismatch(f"the selector has {self.logits.numel()} logits but its input has "
                                    f"C={n_channels} channels")

    def build(self, n_channels: int) -> None:
        """Create the ``[C]`` logits (uniform: zeros) if they do not exist yet."""
        self.check_channels(n_channels)
        if self.logits.numel() == int(n_channels):
            return
        self.logits = nn.Parameter(torch.zeros(int(n_channels), device=self.logits.device),
                                   requires_grad=not self._frozen)

    def infer_output_dims(self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]
                          ) -> dict[str, tuple[Dim, ...]]:
        out = super().infer_output_dims(input_dims)
        channels = _channels(input_dims)
        if channels is not None:
            self.check_channels(channels)
        return out

    def materialize(self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]) -> None:
        """The logits, once the compiled input declares C (before an optimizer is built)."""
        channels = _channels(input_dims)
        if channels is not None:
            self.build(channels)

    def is_trainable(self) -> bool:
        return not self._frozen

    # -- statistics (init_method="variance") -----------------------------------------------
    def create_accumulators(self, x: torch.Tensor) -> dict[str, Accumulator]:
        return {"moments": MomentAccumulator(x.shape[-1], full_covariance=False)}

    def update_statistics(self, accumulators: dict[str, Accumulator], x: torch.Tensor) -> None:
        accumulators["moments"].update(x)

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        acc: MomentAccumulator = accumulators["moments"]  # type: ignore[assignment]
        variance = acc.variance(ddof=1)
        log_var = (variance + self.eps if self.eps else variance.clamp_min(torch.finfo(torch.float64).tiny)).log()
        self.build(acc.dim)
        with torch.no_grad():
            self.logits.copy_((log_var - log_var.mean()).to(self.logits))

    # -- weights -------------------------------------------------------------------------
    def _require_logits(self) -> None:
        if self.logits.numel() == 0:
            raise RuntimeError(f"selector '{self.name}' has no logits yet: compile the graph against a "
                               "datamodule that declares n_channels, fit it, or run it once")

    def channel_weights(self) -> torch.Tensor:
        """Soft weights ``n_select * softmax(l / T)`` (``[C]``, noise-free, differentiable)."""
        self._require_logits()
        return self.n_select * torch.softmax(self.logits / self.temperature, dim=0)

    def hard_mask(self) -> torch.Tensor:
        """``[C]`` float mask: 1 on :meth:`selected_channels`, 0 elsewhere."""
        mask = torch.zeros_like(self.logits.detach())
        mask[torch.as_tensor(self.selected_channels(), device=mask.device, dtype=torch.long)] = 1.0
        return mask

    def selected_channels(self) -> list[int]:
        """Indices (ascending) of the ``n_select`` largest logits (ties: lower index first)."""
        self._require_logits()
        order = torch.argsort(self.logits.detach().cpu(), descending=True, stable=True)
        return sorted(int(i) for i in order[: self.n_select])

    def selected_wavelengths(self, wavelengths: Sequence[float] | np.ndarray | torch.Tensor) -> list[float]:
        """Wavelengths (nm) of :meth:`selected_channels`, e.g. from ``batch["wavelengths"]``."""
        wl = np.asarray(wavelengths.detach().cpu() if isinstance(wavelengths, torch.Tensor) else wavelengths,
                        dtype=np.float64).reshape(-1)
        if wl.shape[0] != self.logits.numel():
            raise ValueError(f"got {wl.shape[0]} wavelengths for {self.logits.numel()} channels")
        return [float(wl[i]) for i in self.selected_channels()]

    def _weights(self) -> torch.Tensor:
        if self.hard and not self.training:
            return self.hard_mask()
        logits = self.logits
        if self.gumbel and self.training and torch.is_grad_enabled():
            u = torch.rand_like(logits).clamp(1e-10, 1.0 - 1e-10)
            logits = logits - torch.log(-torch.log(u))
        return self.n_select * torch.softmax(logits / self.temperature, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.logits.numel() == 0:
            if self.training and torch.is_grad_enabled():
                warnings.warn(f"selector '{self.name}': logits created during a training step; an optimizer "
                              "built before will not update them (declare n_channels on the datamodule)",
                              stacklevel=2)
            self.logits = nn.Parameter(torch.zeros(0, device=x.device), requires_grad=not self._frozen)
            self.build(x.shape[-1])
        elif self.logits.numel() != x.shape[-1]:
            raise DimensionMismatch(f"selector '{self.name}' has {self.logits.numel()} logits but its input has "
                                    f"C={x.shape[-1]} channels")
        return x * self._weights().to(x.dtype)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, n_select={self.n_select}, C={self.n_channels}, "
                f"T={self.temperature:.4g}, hard={self.hard}, gumbel={self.gumbel}")


def _channels(input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]) -> int | None:
    """C of the compiled input ``x`` when it is known."""
    dims = input_dims.get("x")
    return dims[-1] if dims and isinstance(dims[-1], int) else None
