"""Nodes that combine several parents (fan-in)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cuvis_graph.core.node import DimBinding, DimensionMismatch, Node, PortSpec, unify_dims
from cuvis_graph.core.registry import register

__all__ = ["ConcatChannels"]


@register
class ConcatChannels(Node):
    """Concatenate parents along channels: ``[B,H,W,C_1], ..., [B,H,W,C_k] -> [B,H,W,sum C_i]``."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), variadic=True, description="cubes to concatenate")}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "C"), description="concatenated cube")}

    def infer_output_dims(self, input_dims: Mapping[str, object]) -> dict[str, tuple]:
        parts = list(input_dims.get("x", []))
        if not parts:
            return {"out": ("B", "H", "W", None)}
        binding = DimBinding()
        channels: list[int | None] = []
        for i, dims in enumerate(parts):
            if len(dims) != 4:
                raise DimensionMismatch(f"port 'x[{i}]' expects rank 4 [B,H,W,C], got {list(dims)}")
            unify_dims(("B", "H", "W", None), tuple(dims), binding, f"port 'x[{i}]'")
            channels.append(dims[3] if isinstance(dims[3], int) else None)
        total = None if any(c is None for c in channels) else sum(channels)
        return {"out": tuple(binding.values.get(d) for d in ("B", "H", "W")) + (total,)}

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(x), dim=-1)
