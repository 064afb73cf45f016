"""The compiled execution plan: what the executor runs, in which order, reading what."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cuvis_graph.core.leaves import LeafNode
    from cuvis_graph.core.node import Dim, Node

__all__ = ["Source", "Step", "LeafBinding", "Plan", "DataSpec"]


@dataclass(frozen=True)
class Source:
    """Where a value comes from: a batch key, or an output port of a node."""

    kind: str  # "batch" | "node"
    key: str  # batch key or node name
    port: str | None = None  # output port for kind == "node"

    def __str__(self) -> str:
        return f"batch.{self.key}" if self.kind == "batch" else f"{self.key}.{self.port}"


@dataclass
class Step:
    """One node to run with its wired inputs (a list of sources for variadic ports)."""

    name: str
    node: Node
    inputs: dict[str, Source | list[Source]]


@dataclass
class LeafBinding:
    """A leaf with its parent output and its resolved label source (``None``: no labels)."""

    name: str
    leaf: LeafNode
    parent: Source
    target: Source | None


@dataclass
class DataSpec:
    """What a datamodule declares: channel count, batch keys, wavelengths (nm)."""

    n_channels: int | None = None
    batch_keys: frozenset[str] = frozenset({"cube"})
    wavelengths: tuple[float, ...] | None = None


@dataclass
class Plan:
    """Topologically ordered steps, leaf bindings, inferred output dims and dependencies."""

    graph_name: str
    steps: list[Step]
    leaves: list[LeafBinding]
    output_dims: dict[str, dict[str, tuple[Dim, ...]]]
    parents: dict[str, set[str]] = field(default_factory=dict)

    @property
    def node_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def ancestors(self, names: set[str] | list[str]) -> set[str]:
        """All nodes ``names`` depend on (excluding themselves unless reachable)."""
        seen: set[str] = set()
        stack = [p for n in names for p in self.parents.get(n, ())]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.parents.get(n, ()))
        return seen

    def sinks(self) -> list[str]:
        """Nodes no other node consumes."""
        used = {p for ps in self.parents.values() for p in ps}
        return [s.name for s in self.steps if s.name not in used]

    def statistical_levels(self, refit: bool | Iterable[str] = False) -> list[list[str]]:
        """Nodes to fit grouped by statistical depth: a node's level is 1 + the highest
        level among its statistical ancestors that still need fitting (fitted ones count 0).
        One data pass fits one level. ``refit``: fit fitted nodes again (all, or those named)."""
        again = None if isinstance(refit, bool) else set(refit)
        todo = {s.name for s in self.steps if s.node.statistical
                and (not s.node.is_fitted or (refit is True) or (again is not None and s.name in again))}
        level: dict[str, int] = {}
        for s in self.steps:  # topological order
            if s.name in todo:
                level[s.name] = 1 + max((level[a] for a in self.ancestors([s.name]) if a in level), default=0)
        depth = max(level.values(), default=0)
        return [[n for n in self.node_names if level.get(n) == d] for d in range(1, depth + 1)]
