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

    def affine_chain(self, source: Source) -> tuple[list[str], Source]:
        """The nodes declaring ``affine_once_fitted`` that ``source`` reaches through, nearest
        first, each read from its one input, and the source feeding the last of them: the
        chain a child folding ``source``'s port accumulates past (``([], source)``: none)."""
        chain: list[str] = []
        while source.kind == "node":
            parent = self.step(source.key)
            upstream = list(parent.inputs.values())
            if not parent.node.affine_once_fitted or len(upstream) != 1 or not isinstance(upstream[0], Source):
                break
            chain.append(parent.name)
            source = upstream[0]
        return chain, source

    def folded_inputs(self, name: str) -> tuple[dict[str, Source | list[Source]], dict[str, list[str]]]:
        """Node ``name``'s inputs with each port it lists in ``folds_affine_inputs`` rewired past
        its :meth:`affine_chain`, and that chain per rewired port."""
        step = self.step(name)
        inputs, chains = dict(step.inputs), {}
        for port in step.node.folds_affine_inputs:
            source = inputs.get(port)
            if isinstance(source, Source):
                chain, base = self.affine_chain(source)
                if chain:
                    inputs[port], chains[port] = base, chain
        return inputs, chains

    def statistical_levels(self, refit: bool | Iterable[str] = False) -> list[list[str]]:
        """Nodes to fit grouped by statistical depth; one data pass fits one level.

        A node's level is 1 + the highest level among the statistical ancestors that still need
        fitting (fitted ones count 0), except for the affine parents it folds (see
        :meth:`folded_inputs`): reached only through such a chain, a parent shares the node's
        level, since the node accumulates the chain's raw input and the parent's fitted map is
        applied to its accumulators afterwards. ``refit``: fit fitted nodes again (all, or those
        named). Within a level, names are in topological order (the order of finalization)."""
        again = None if isinstance(refit, bool) else set(refit)
        todo = {s.name for s in self.steps if s.node.statistical
                and (not s.node.is_fitted or (refit is True) or (again is not None and s.name in again))}
        level: dict[str, int] = {}
        for s in self.steps:  # topological order
            if s.name not in todo:
                continue
            inputs, chains = self.folded_inputs(s.name)
            read = {src.key for value in inputs.values()
                    for src in (value if isinstance(value, list) else [value]) if src.kind == "node"}
            upstream = read | self.ancestors(read)
            folded = {p for chain in chains.values() for p in chain}
            level[s.name] = max(max((level[a] for a in folded if a in level), default=1),
                                1 + max((level[a] for a in upstream if a in level), default=0))
        depth = max(level.values(), default=0)
        return [[n for n in self.node_names if level.get(n) == d] for d in range(1, depth + 1)]
