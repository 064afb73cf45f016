"""Band removal: drop bad (noisy, water-absorption, dead) channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cuvis_graph.core.node import Dim, DimBinding, DimensionMismatch, Node, PortSpec, unify_dims
from cuvis_graph.core.registry import register

__all__ = ["DropBands"]


@register
class DropBands(Node):
    """Remove the channels ``bad_bands``: ``[B,H,W,C] -> [B,H,W,K]`` with ``K = C - len(bad_bands)``.

    ``y[..., j] = x[..., keep[j]]`` where ``keep`` are the indices ``0..C-1`` not in
    ``bad_bands``, in increasing order. ENVI bad band lists (``bbl``, 0 = bad) convert with
    :meth:`from_mask`; :func:`cuvis_graph.data.read_cube` gives them as
    ``HyperspectralCube.bad_bands``. Wavelengths of the kept bands: ``wavelengths[keep]``.

    Args:
        bad_bands: channel indices to remove (``0 <= i < C``; duplicates are ignored).
            Empty keeps every channel.
    """

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube", description="cube")}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "K"), description="cube without the bad bands")}

    def __init__(self, bad_bands: Sequence[int] = (), name: str | None = None) -> None:
        super().__init__(name=name)
        bad = sorted({int(i) for i in bad_bands})
        if bad and bad[0] < 0:
            raise ValueError(f"bad_bands: indices must be >= 0, got {bad[0]}")
        self.bad_bands: list[int] = bad

    @classmethod
    def from_mask(cls, bad: Sequence[bool] | np.ndarray, name: str | None = None) -> DropBands:
        """From a ``[C]`` boolean mask (True = bad), e.g. ``HyperspectralCube.bad_bands``."""
        return cls([int(i) for i in np.flatnonzero(np.asarray(bad, dtype=bool))], name=name)

    def keep_indices(self, n_channels: int) -> list[int]:
        """Indices ``[K]`` of the channels kept out of ``n_channels``."""
        if self.bad_bands and self.bad_bands[-1] >= n_channels:
            raise DimensionMismatch(f"bad_bands: index {self.bad_bands[-1]} is out of range for C={n_channels} "
                                    "input channels")
        bad = set(self.bad_bands)
        kept = [i for i in range(n_channels) if i not in bad]
        if not kept:
            raise DimensionMismatch(f"bad_bands removes all C={n_channels} input channels")
        return kept

    def infer_output_dims(self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]
                          ) -> dict[str, tuple[Dim, ...]]:
        binding = DimBinding()
        unify_dims(self.INPUTS["x"].dims, tuple(input_dims.get("x") or (None,) * 4), binding, "port 'x'")
        channels = binding.values.get("C")
        k = len(self.keep_indices(channels)) if channels is not None else None
        return {"out": (*(binding.values.get(d) for d in ("B", "H", "W")), k)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bad_bands:
            return x
        try:
            keep = self.keep_indices(int(x.shape[-1]))
        except DimensionMismatch as exc:
            raise ValueError(f"node '{self.name}': {exc}") from None
        return x.index_select(-1, torch.as_tensor(keep, device=x.device))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bad_bands={self.bad_bands}"
