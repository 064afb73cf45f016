"""The graph's structure as a frozen, public view: what was added and how it is wired.

:attr:`Graph.structure <cuvis_graph.core.graph.Graph.structure>` returns a
:class:`GraphStructure` snapshot. The compiler, ``describe``, the YAML writer and the run
record read it; nothing can change the graph through it (frozen dataclasses, tuples and
read-only mappings). The node and leaf objects themselves are the graph's own modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from cuvis_graph.core.leaves import LeafNode, MonitoringNode
    from cuvis_graph.core.node import Node
    from cuvis_graph.errors import Problem

__all__ = ["ParentRef", "ParentLike", "NodeEntry", "LeafEntry", "GraphStructure"]

ParentLike = Union["Node", str, tuple[Union["Node", str], str]]


@dataclass(frozen=True, eq=False)
class ParentRef:
    """A declared parent: a node object, a name (``"norm"`` / ``"norm.out"``) or a batch key
    (``"batch.mask"``)."""

    obj: Node | None = None
    name: str | None = None
    port: str | None = None
    batch_key: str | None = None

    @classmethod
    def parse(cls, ref: ParentLike | ParentRef) -> ParentRef:
        from cuvis_graph.core.node import Node

        if isinstance(ref, ParentRef):
            return ref
        if isinstance(ref, tuple) and len(ref) == 2:
            return dataclasses.replace(cls.parse(ref[0]), port=ref[1])
        if isinstance(ref, Node):
            return cls(obj=ref)
        if isinstance(ref, str):
            head, _, tail = ref.partition(".")
            if head == "batch" and tail:
                return cls(batch_key=tail)
            return cls(name=head, port=tail or None)
        raise TypeError(f"a parent must be a node, a name or (node, port); got {type(ref).__name__}")

    def label(self) -> str:
        """``"batch.<key>"``, ``"<node>"`` or ``"<node>.<port>"``."""
        if self.batch_key:
            return f"batch.{self.batch_key}"
        name = self.obj.name if self.obj is not None else self.name
        return f"{name}.{self.port}" if self.port else str(name)


@dataclass(frozen=True, eq=False)
class NodeEntry:
    """A processing node with its declared wiring: input port -> parents, in order."""

    name: str
    node: Node
    wiring: Mapping[str, tuple[ParentRef, ...]]

    def labels(self) -> dict[str, list[str]]:
        """``{port: ["norm", "batch.mask", ...]}``."""
        return {port: [r.label() for r in refs] for port, refs in self.wiring.items()}


@dataclass(frozen=True, eq=False)
class LeafEntry:
    """A loss, metric or visualization leaf with its declared parent."""

    name: str
    leaf: LeafNode
    parent: ParentRef


@dataclass(frozen=True, eq=False)
class GraphStructure:
    """Nodes and leaves by name (in the order they were added), monitors, and the problems
    found while building (e.g. duplicate names) that the compiler reports."""

    name: str
    nodes: Mapping[str, NodeEntry]
    leaves: Mapping[str, LeafEntry]
    monitors: tuple[MonitoringNode, ...]
    problems: tuple[Problem, ...]

    @classmethod
    def snapshot(cls, name: str, nodes: Mapping[str, Node], wiring: Mapping[str, Mapping[str, list[ParentRef]]],
                 leaves: Mapping[str, LeafNode], leaf_parents: Mapping[str, ParentRef],
                 monitors: list[MonitoringNode], problems: list[Problem]) -> GraphStructure:
        """A frozen copy of a graph's building state (later additions do not show in it)."""
        node_entries = {
            n: NodeEntry(n, node, MappingProxyType({p: tuple(refs) for p, refs in wiring.get(n, {}).items()}))
            for n, node in nodes.items()}
        leaf_entries = {n: LeafEntry(n, leaf, leaf_parents[n]) for n, leaf in leaves.items()}
        return cls(name, MappingProxyType(node_entries), MappingProxyType(leaf_entries), tuple(monitors),
                   tuple(problems))

    def node_objects(self) -> dict[str, Node]:
        """``{name: node}`` (a new dict)."""
        return {n: e.node for n, e in self.nodes.items()}

    def leaf_objects(self) -> dict[str, LeafNode]:
        """``{name: leaf}`` (a new dict)."""
        return {n: e.leaf for n, e in self.leaves.items()}
