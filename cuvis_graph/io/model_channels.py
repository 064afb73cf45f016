"""The channel count C a model expects, and the check of data against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.errors import CuvisGraphError

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["ChannelMismatchError", "infer_n_channels", "check_channels"]


class ChannelMismatchError(CuvisGraphError):
    """Input data whose channel count differs from the one the model was trained on."""


def infer_n_channels(graph: Graph) -> int | None:
    """The input channel count C of ``graph``: its ``data_spec``, else (best effort) the
    size a fitted node reading ``batch.cube`` has taken (its
    :meth:`~cuvis_graph.core.node.Node.input_channels`); ``None`` when unknown."""
    if graph.data_spec is not None and graph.data_spec.n_channels:
        return int(graph.data_spec.n_channels)
    from cuvis_graph.core.compiler import compile_graph

    try:
        plan = compile_graph(graph, DataSpec(n_channels=None), with_leaves=False)
    except CuvisGraphError:
        return None
    for step in plan.steps:
        sources = [s for src in step.inputs.values() for s in (src if isinstance(src, list) else [src])]
        if not any(s.kind == "batch" and s.key == "cube" for s in sources):
            continue
        n = step.node.input_channels()
        if n is not None and int(n) > 0:
            return int(n)
    return None



def check_channels(model: Graph | Mapping[str, Any], n_channels: int, source: str = "input") -> None:
    """Raise :class:`ChannelMismatchError` when ``n_channels`` differs from the model's C.

    ``model``: a graph (its ``data_spec`` or inferred C) or a ``meta.json`` mapping. Nothing
    is checked when the model's C is unknown. Message: ``"<source>: model expects C=100
    channels (wavelengths 400–1000 nm), the data has 50"``.
    """
    if isinstance(model, Mapping):
        expected, wavelengths = model.get("n_channels"), model.get("wavelengths")
    else:
        expected = infer_n_channels(model)
        spec = model.data_spec
        wavelengths = spec.wavelengths if spec is not None else None
    if not expected or int(expected) == int(n_channels):
        return
    where = ""
    if wavelengths:
        where = f" (wavelengths {min(wavelengths):g}–{max(wavelengths):g} nm)"
    raise ChannelMismatchError(f"{source}: model expects C={int(expected)} channels{where}, "
                               f"the data has {int(n_channels)}")
