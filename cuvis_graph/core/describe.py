"""``graph.describe()``: the graph as a plain-text table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cuvis_graph.core.leaves import LossNode, MetricNode, VisualizationNode
from cuvis_graph.errors import CompileError

_LEAF_KINDS = (("loss", LossNode), ("metric", MetricNode), ("visualization", VisualizationNode))

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["describe_graph"]


def _dims(dims: tuple) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def describe_graph(graph: Graph, datamodule: Any = None) -> str:
    """Rows for nodes (topological order when the graph compiles) and leaves; output shapes
    use the channel count of ``datamodule`` (or of the data the graph was trained on).
    Changes nothing (the graph is validated, not built)."""
    structure = graph.structure
    try:
        plan = graph.validate(datamodule if datamodule is not None else graph.data_spec)
        order, dims, note = plan.node_names, plan.output_dims, ""
    except CompileError as exc:
        order, dims, note = list(structure.nodes), {}, f"\n(does not compile: {len(exc.problems)} problem(s))"
    header = ("name", "type", "parents", "outputs", "role", "params")
    rows = [header]
    for name in order:
        entry = structure.nodes[name]
        node = entry.node
        parents = ", ".join(f"{port}<-" + "+".join(labels) for port, labels in entry.labels().items()) or "batch.cube"
        outs = dims.get(name) or {p: s.dims for p, s in node.output_specs.items()}
        outputs = ", ".join(f"{p}{_dims(d)}" for p, d in outs.items())
        role = ",".join(r for r, on in (("statistical", node.statistical), ("trainable", node.is_trainable()),
                                          ("fitted", node.statistical and node.is_fitted)) if on) or "-"
        n_params = sum(p.numel() for p in node.parameters())
        rows.append((name, type(node).__name__, parents, outputs, role, str(n_params)))
    for name, leaf_entry in structure.leaves.items():
        leaf = leaf_entry.leaf
        kind = next((k for k, base in _LEAF_KINDS if isinstance(leaf, base)), "leaf")
        rows.append((name, type(leaf).__name__, leaf_entry.parent.label(), "-", f"leaf:{kind}",
                     str(sum(p.numel() for p in leaf.parameters()))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"graph '{graph.name}'\n" + "\n".join(lines) + note
