"""Graph validation and the execution plan.

``compile_graph`` checks, before any data flows, and reports *every* problem in one
:class:`~cuvis_graph.errors.CompileError`:

* names: duplicates, reserved or malformed names;
* wiring: unknown parents (with "did you mean"), unknown ports, unwired required ports,
  several parents on a non-variadic port, cycles (reported as the loop itself);
* shapes: symbolic dims unified along every edge (channels ``C`` must agree; a node may
  bind a symbol from its parameters, e.g. PCA ``K``);
* leaves: unknown parent, incompatible parent type or missing attribute, parent rank,
  label source (batch key or label node) and ambiguous label nodes;
* batch keys every node and leaf reads, against what the datamodule declares;
* training: losses without trainable parameters, trainable parameters without a loss;
* stages (``training.stages``): the nodes and leaves each names, their kinds, and a loss for
  every stage that trains (:mod:`cuvis_graph.core.stage_checks`).

Compiling changes nothing. :func:`build_plan`, the explicit step after a successful
compile, creates the parameters whose size the data fixes (:meth:`Node.materialize`) and
binds parent-reading leaves to their parent node (:meth:`LeafNode.bind_parent`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx

from cuvis_graph.core.leaves import LossNode
from cuvis_graph.core.node import DimensionMismatch
from cuvis_graph.core.plan import DataSpec, LeafBinding, Plan, Source, Step
from cuvis_graph.core.stage_checks import stage_problems
from cuvis_graph.errors import CompileError, Problem, did_you_mean

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.core.structure import ParentRef

__all__ = ["compile_graph", "build_plan"]

RESERVED_NAMES = {"batch", "target"}


def _node_where(name: str, port: str | None = None) -> str:
    return f"node '{name}'" + (f" port '{port}'" if port else "")


def _batch_dims(key: str, n_channels: int | None) -> tuple | None:
    if key == "cube":
        return ("B", "H", "W", n_channels)
    if key == "mask":
        return ("B", "H", "W")
    return None


class _Compiler:
    def __init__(self, graph: Graph, data: DataSpec | None, for_training: bool, with_leaves: bool = True,
                 stages: Sequence[Any] = ()) -> None:
        self.structure = graph.structure
        self.with_leaves = with_leaves
        self.data = data
        self.for_training = for_training
        self.stages = stages
        self.problems: list[Problem] = list(self.structure.problems)
        self.nodes = self.structure.node_objects()
        self.leaves = self.structure.leaf_objects()

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    # -- references --------------------------------------------------------------------
    def resolve(self, ref: ParentRef, where: str) -> Source | None:
        if ref.batch_key is not None:
            return Source("batch", ref.batch_key)
        name = ref.name
        if ref.obj is not None:
            name = next((n for n, node in self.nodes.items() if node is ref.obj), None)
            if name is None:
                owner = getattr(ref.obj, "name", None) or type(ref.obj).__name__
                self.add(where, f"parent '{owner}' is not a node of this graph (add it with graph.add_node first)")
                return None
        if name not in self.nodes:
            if name in self.leaves:
                self.add(where, f"parent '{name}' is a leaf; leaves have no outputs")
            else:
                self.add(where, f"unknown parent '{name}'{did_you_mean(name, self.nodes)}")
            return None
        outputs = self.nodes[name].output_specs
        port = ref.port
        if port is None:
            if len(outputs) != 1:
                self.add(where, f"parent '{name}' has several outputs {sorted(outputs)}; name one as '{name}.<port>'")
                return None
            port = next(iter(outputs))
        elif port not in outputs:
            self.add(where, f"parent '{name}' has no output port '{port}'{did_you_mean(port, outputs)}; "
                            f"its outputs: {sorted(outputs)}")
            return None
        return Source("node", name, port)

    def wire(self) -> dict[str, dict[str, Source | list[Source]]]:
        wiring: dict[str, dict[str, Source | list[Source]]] = {}
        for name, node in self.nodes.items():
            if name in RESERVED_NAMES or "." in name or "/" in name or not name:
                self.add(_node_where(name), "invalid name: use letters, digits and '_' (not 'batch'/'target', no '.' or '/')")
            specs = node.input_specs
            declared = self.structure.nodes[name].wiring
            inputs: dict[str, Source | list[Source]] = {}
            for port, refs in declared.items():
                if port not in specs:
                    self.add(_node_where(name, port),
                             f"{type(node).__name__} has no input port '{port}'{did_you_mean(port, specs)}; "
                             f"its inputs: {sorted(specs)}")
                    continue
                sources = [s for s in (self.resolve(r, _node_where(name, port)) for r in refs) if s]
                if len(sources) != len(refs):
                    continue
                if specs[port].variadic:
                    inputs[port] = sources
                elif len(sources) > 1:
                    self.add(_node_where(name, port), f"takes one parent, got {len(sources)}: {[str(s) for s in sources]}")
                else:
                    inputs[port] = sources[0]
            for port, spec in specs.items():
                if port in inputs or port in declared:
                    continue
                if spec.batch_key is not None:
                    if spec.optional and self.data is not None and spec.batch_key not in self.data.batch_keys:
                        continue
                    inputs[port] = [Source("batch", spec.batch_key)] if spec.variadic else Source("batch", spec.batch_key)
                elif not spec.optional:
                    self.add(_node_where(name, port), "required input is not connected")
            wiring[name] = inputs
        return wiring

    # -- order and cycles ----------------------------------------------------------------
    def order(self, wiring: dict[str, dict]) -> tuple[list[str] | None, dict[str, set[str]]]:
        dag = nx.DiGraph()
        dag.add_nodes_from(self.nodes)
        parents: dict[str, set[str]] = {n: set() for n in self.nodes}
        for name, inputs in wiring.items():
            for src in _flat(inputs):
                if src.kind == "node":
                    dag.add_edge(src.key, name)
                    parents[name].add(src.key)
        try:
            cycle = nx.find_cycle(dag)
        except nx.NetworkXNoCycle:
            index = {n: i for i, n in enumerate(self.nodes)}
            return list(nx.lexicographical_topological_sort(dag, key=index.__getitem__)), parents
        loop = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        self.add(_node_where(cycle[0][0]), f"cycle in the graph: {loop}")
        return None, parents

    # -- shapes -------------------------------------------------------------------------
    def infer_dims(self, order: list[str], wiring: dict[str, dict]) -> dict[str, dict[str, tuple]]:
        n_channels = self.data.n_channels if self.data else None
        dims: dict[str, dict[str, tuple]] = {}
        for name in order:
            node = self.nodes[name]
            in_dims: dict[str, object] = {}
            for port, src in wiring[name].items():
                got = [self.source_dims(s, dims, n_channels) for s in (src if isinstance(src, list) else [src])]
                if any(g is None for g in got):
                    continue
                in_dims[port] = got if isinstance(src, list) else got[0]
            in_dims = self.check_fitted_channels(name, in_dims)
            try:
                dims[name] = node.infer_output_dims(in_dims)
            except DimensionMismatch as exc:
                self.add(_node_where(name), f"shape mismatch: {exc}")
                dims[name] = {p: tuple(None for _ in s.dims) for p, s in node.output_specs.items()}
        return dims

    def check_fitted_channels(self, name: str, in_dims: dict[str, object]) -> dict[str, object]:
        """A node fitted (or built) for ``C`` input channels, fed another ``C`` here (one input
        port whose last dim is known) is a problem; the node's children are then checked as if
        it had got its ``C``, so one mismatch is reported once."""
        fitted = self.nodes[name].input_channels()
        if fitted is None or len(in_dims) != 1:
            return in_dims
        (port, port_dims), = in_dims.items()
        given = port_dims[-1] if isinstance(port_dims, tuple) and port_dims else None
        if not isinstance(given, int) or given == fitted:
            return in_dims
        self.add(_node_where(name, port), f"was fitted for {fitted} input channels, here it gets {given} "
                 "(data of another sensor or band selection?)")
        return {port: (*port_dims[:-1], fitted)}

    @staticmethod
    def source_dims(src: Source, dims: dict, n_channels: int | None) -> tuple | None:
        if src.kind == "batch":
            return _batch_dims(src.key, n_channels)
        return dims.get(src.key, {}).get(src.port)

    # -- leaves ---------------------------------------------------------------------------
    def bind_leaves(self, dims: dict[str, dict[str, tuple]]) -> list[LeafBinding]:
        label_nodes = [n for n, node in self.nodes.items() if node.provides_labels]
        bindings = []
        for name, leaf in self.leaves.items():
            where = f"leaf '{name}' ({type(leaf).__name__})"
            if name in self.nodes:
                self.add(where, "a node of the same name exists")
            ref = self.structure.leaves[name].parent
            parent = self.resolve(ref, where)
            if parent is None:
                continue
            parent_node = self.nodes[parent.key]
            for message in leaf.validate_parent(parent_node):
                self.add(where, message)
            rank = leaf.parent_output_rank
            parent_dims = dims.get(parent.key, {}).get(parent.port)
            if rank is not None and parent_dims is not None and len(parent_dims) != rank:
                self.add(where, f"needs a parent output of rank {rank}; '{parent.key}.{parent.port}' has dims {list(parent_dims)}")
            target = self.label_source(leaf, where, label_nodes) if leaf.needs_labels else None
            bindings.append(LeafBinding(name, leaf, parent, target))
        return bindings

    def label_source(self, leaf, where: str, label_nodes: list[str]) -> Source | None:
        source = leaf.label_source
        if source is None:
            if len(label_nodes) > 1:
                self.add(where, f"several label nodes {label_nodes}: set label_source to one of them")
                return None
            if label_nodes:
                return Source("node", label_nodes[0], next(iter(self.nodes[label_nodes[0]].output_specs)))
            source = "mask"
        if source in self.nodes:
            return Source("node", source, next(iter(self.nodes[source].output_specs)))
        return Source("batch", source)

    def check_batch_keys(self, wiring: dict[str, dict], leaves: list[LeafBinding]) -> None:
        if self.data is None:
            return
        available = set(self.data.batch_keys)
        needs: list[tuple[str, str]] = []
        for name, inputs in wiring.items():
            for port, src in inputs.items():
                needs += [(_node_where(name, port), s.key) for s in _flat({port: src}) if s.kind == "batch"]
        for b in leaves:
            where = f"leaf '{b.name}' ({type(b.leaf).__name__})"
            if b.target is not None and b.target.kind == "batch":
                needs.append((where, b.target.key))
            elif b.target is not None and self.nodes[b.target.key].provides_labels:
                # a label node's optional batch inputs (e.g. "mask") are required by its consumers
                label_wiring = wiring.get(b.target.key, {})
                needs += [(f"{where} via label node '{b.target.key}'", spec.batch_key)
                          for port, spec in self.nodes[b.target.key].input_specs.items()
                          if spec.batch_key is not None and port not in label_wiring]
            needs += [(where, k) for k in sorted(b.leaf.required_batch_keys)]
        for where, key in needs:
            if key not in available:
                self.add(where, f"needs batch key '{key}' but the datamodule provides only "
                                f"{sorted(available)}{did_you_mean(key, available)}")

    def check_training(self, order: list[str] | None) -> None:
        if not self.for_training:
            return
        has_loss = any(isinstance(leaf, LossNode) for leaf in self.leaves.values())
        trainable = [n for n, node in self.nodes.items() if node.is_trainable()]
        if has_loss and not trainable:
            self.add("training", "loss leaves exist but no node has trainable parameters "
                                 "(enable a trainable node, or set max_epochs=0 for statistics only)")
        elif trainable and not has_loss:
            self.add("training", f"nodes {trainable} have trainable parameters but the graph has no loss leaf "
                                 "(add a LossNode, or set max_epochs=0 for statistics only)")
        elif not trainable:
            self.add("training", "nothing to train: no trainable node and no loss; set max_epochs=0 "
                                 "for statistical initialization only")

    def run(self) -> Plan:
        wiring = self.wire()
        order, parents = self.order(wiring)
        dims = self.infer_dims(order, wiring) if order is not None else {}
        leaves = self.bind_leaves(dims) if self.with_leaves else []
        self.check_batch_keys(wiring, leaves)
        self.check_training(order)
        self.problems += stage_problems(self.structure, self.stages)
        if self.problems:
            raise CompileError(self.structure.name, self.problems)
        steps = [Step(n, self.nodes[n], wiring[n]) for n in order]
        return Plan(self.structure.name, steps, leaves, dims, parents)


def _flat(inputs: dict) -> list[Source]:
    out: list[Source] = []
    for src in inputs.values():
        out.extend(src if isinstance(src, list) else [src])
    return out


def compile_graph(graph: Graph, data: DataSpec | None = None, for_training: bool = False,
                  with_leaves: bool = True, stages: Sequence[Any] = ()) -> Plan:
    """Validate ``graph`` against ``data`` and build its :class:`Plan`; changes no node.

    ``with_leaves=False`` plans the processing nodes only (inference). ``stages``: the
    ``training.stages`` (:class:`~cuvis_graph.train.config.StageConfig`) to check as well.

    Raises:
        CompileError: listing every problem found, each naming the node, port, leaf or stage.
    """
    return _Compiler(graph, data, for_training, with_leaves, stages).run()


def build_plan(plan: Plan, data: DataSpec | None = None) -> None:
    """The step after a successful compile: every node of ``plan`` creates the parameters its
    compiled input dims fix (:meth:`Node.materialize`), and every leaf gets its parent node
    (:meth:`LeafNode.bind_parent`). Idempotent; ``data`` must be the spec ``plan`` was compiled
    against."""
    n_channels = data.n_channels if data is not None else None
    for step in plan.steps:
        in_dims: dict[str, Any] = {}
        for port, src in step.inputs.items():
            got = [_Compiler.source_dims(s, plan.output_dims, n_channels) for s in (src if isinstance(src, list) else [src])]
            if all(g is not None for g in got):
                in_dims[port] = got if isinstance(src, list) else got[0]
        step.node.materialize(in_dims)
    nodes = {s.name: s.node for s in plan.steps}
    for binding in plan.leaves:
        binding.leaf.bind_parent(nodes[binding.parent.key])
