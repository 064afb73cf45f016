"""``Graph``: the building API and the train / predict / validate facade."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from cuvis_graph.core.compiler import build_plan, compile_graph
from cuvis_graph.core.leaves import LeafNode, MonitoringNode
from cuvis_graph.core.names import check_name
from cuvis_graph.core.node import Node, snake_case
from cuvis_graph.core.plan import DataSpec, Plan
from cuvis_graph.core.structure import GraphStructure, ParentLike, ParentRef
from cuvis_graph.errors import CuvisGraphError, Problem

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from cuvis_graph.train.config import TrainingConfig
    from cuvis_graph.train.results import TrainResult

__all__ = ["Graph", "ParentRef"]

log = logging.getLogger(__name__)

class Graph:
    """A DAG of processing nodes with leaves (losses, metrics, visualizations) and monitors.

    Example::

        graph = Graph("rx")
        norm = graph.add_node(MinMaxNormalizer())
        rx = graph.add_node(RXGlobal(), parent=norm)
        graph.train(datamodule, TrainingConfig(trainer=TrainerConfig(max_epochs=0)))
        scores = graph.predict(cube)["rx_global_0"]
    """

    def __init__(self, name: str = "graph") -> None:
        self._name = check_name(name, "Graph(name=...)")
        self._nodes: dict[str, Node] = {}
        self._leaves: dict[str, LeafNode] = {}
        self._wiring: dict[str, dict[str, list[ParentRef]]] = {}
        self._leaf_parents: dict[str, ParentRef] = {}
        self._monitors: list[MonitoringNode] = []
        self._problems: list[Problem] = []
        self._type_counts: dict[str, int] = {}
        #: what the graph was last trained on (channel count, wavelengths); saved in ``meta.json``
        self.data_spec: DataSpec | None = None

    @property
    def name(self) -> str:
        """The pipeline's name: a folder of its run directories (``runs/<name>/...``)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = check_name(value, "Graph.name")

    # -- building ------------------------------------------------------------------------
    def _assign_name(self, obj: Node | LeafNode, explicit: str | None, method: str) -> str:
        if explicit is not None:
            obj.name = check_name(explicit, f"{method}(name=...)", dots=False)
        if obj.name is not None:
            name = check_name(obj.name, f"{method}: {type(obj).__name__}.name", dots=False)
            if name in self._nodes or name in self._leaves:
                self._problems.append(Problem(f"node '{name}'", "duplicate name: another node or leaf has it"))
                k = 1
                while f"{name}#{k}" in self._nodes or f"{name}#{k}" in self._leaves:
                    k += 1
                return f"{name}#{k}"
            return name
        base = snake_case(type(obj).__name__)
        while True:
            n = self._type_counts.get(base, 0)
            self._type_counts[base] = n + 1
            candidate = f"{base}_{n}"
            if candidate not in self._nodes and candidate not in self._leaves:
                obj.name = candidate
                return candidate

    def add_node(self, node: Node, parent: ParentLike | Sequence[ParentLike] | Mapping[str, Any] | None = None,
                 name: str | None = None) -> Node:
        """Add ``node`` fed by ``parent``; returns the node.

        ``parent`` is ``None`` (reads ``batch["cube"]``), a node / name / ``(node, port)``
        (its first input port), a list (the ports in order, or all into a variadic port),
        or ``{"port": parent_or_list}``.
        """
        if not isinstance(node, Node):
            raise TypeError(f"add_node takes a Node, got {type(node).__name__}"
                            + (" (use add_leaf_node for leaves)" if isinstance(node, LeafNode) else ""))
        if any(node is n for n in self._nodes.values()):
            raise CuvisGraphError(f"node '{node.name}' is already in graph '{self.name}'")
        key = self._assign_name(node, name, "add_node")
        self._nodes[key] = node
        self._wiring[key] = self._wire(node, parent)
        return node

    @staticmethod
    def _wire(node: Node, parent: Any) -> dict[str, list[ParentRef]]:
        if parent is None:
            return {}
        ports = list(node.input_specs)
        if isinstance(parent, Mapping):
            return {port: [ParentRef.parse(p) for p in (refs if isinstance(refs, list) else [refs])]
                    for port, refs in parent.items()}
        if isinstance(parent, list):
            if ports and node.input_specs[ports[0]].variadic:
                return {ports[0]: [ParentRef.parse(p) for p in parent]}
            wiring = {port: [ParentRef.parse(p)] for port, p in zip(ports, parent, strict=False)}
            for extra in parent[len(ports):]:
                wiring.setdefault(f"<extra parent {ParentRef.parse(extra).label()}>", []).append(ParentRef.parse(extra))
            return wiring
        return {ports[0]: [ParentRef.parse(parent)]}

    def add_leaf_node(self, leaf: LeafNode, parent: ParentLike, name: str | None = None) -> LeafNode:
        """Attach a loss, metric or visualization leaf to ``parent``; returns the leaf."""
        if not isinstance(leaf, LeafNode):
            raise TypeError(f"add_leaf_node takes a LeafNode, got {type(leaf).__name__}")
        key = self._assign_name(leaf, name, "add_leaf_node")
        self._leaves[key] = leaf
        self._leaf_parents[key] = ParentRef.parse(parent)
        return leaf

    def register_monitor(self, monitor: MonitoringNode) -> MonitoringNode:
        """Send this graph's metrics and figures to ``monitor`` during training."""
        if not isinstance(monitor, MonitoringNode):
            raise TypeError(f"register_monitor takes a MonitoringNode, got {type(monitor).__name__}")
        if getattr(monitor, "name", None) is not None:
            check_name(monitor.name, f"register_monitor: {type(monitor).__name__}.name")
        self._monitors.append(monitor)
        return monitor

    @property
    def structure(self) -> GraphStructure:
        """A frozen snapshot of the nodes with their wiring, the leaves with their parents,
        the monitors and the problems found while building (see :mod:`cuvis_graph.core.structure`)."""
        return GraphStructure.snapshot(self._name, self._nodes, self._wiring, self._leaves, self._leaf_parents,
                                       self._monitors, self._problems)

    @property
    def nodes(self) -> dict[str, Node]:
        return dict(self._nodes)

    @property
    def leaves(self) -> dict[str, LeafNode]:
        return dict(self._leaves)

    @property
    def monitors(self) -> list[MonitoringNode]:
        return list(self._monitors)

    def __getitem__(self, name: str) -> Node | LeafNode:
        if name in self._nodes:
            return self._nodes[name]
        return self._leaves[name]

    # -- compile -------------------------------------------------------------------------
    def compile(self, datamodule: Any = None, for_training: bool = False) -> Plan:
        """Validate and plan (see :func:`~cuvis_graph.core.compiler.compile_graph`), then build
        the nodes for the plan (:func:`~cuvis_graph.core.compiler.build_plan`: parameters whose
        size the data fixes, parents bound to the leaves that read them)."""
        data = _data_spec(datamodule)
        plan = compile_graph(self, data, for_training=for_training)
        build_plan(plan, data)
        return plan

    def validate(self, datamodule: Any = None) -> Plan:
        """Run every compile check without reading data; raises one ``CompileError``.
        Changes nothing: every node's parameters and state dict stay as they are."""
        return compile_graph(self, _data_spec(datamodule))

    def describe(self, datamodule: Any = None) -> str:
        """A table: name, type, parents, output dims (channels from ``datamodule`` or the data
        last trained on), trainable/statistical, parameters."""
        from cuvis_graph.core.describe import describe_graph

        return describe_graph(self, datamodule)

    # -- YAML (see cuvis_graph.io.spec) ---------------------------------------------------------
    @classmethod
    def from_yaml(cls, source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (),
                  allow_modules: Sequence[str] = ()) -> Graph:
        """A graph from a pipeline file, YAML text or mapping (Hydra overrides allowed).

        Only nodes, leaves and monitors are built; :func:`cuvis_graph.io.spec.load_pipeline`
        also gives the datamodule and training configuration.
        """
        from cuvis_graph.io.spec import graph_from_yaml

        return graph_from_yaml(source, overrides, allow_modules)

    def to_yaml(self, path: str | os.PathLike | None = None, **sections: Any) -> str:
        """This graph as pipeline YAML (written atomically to ``path`` when given);
        ``training=``/``data=`` add those sections."""
        from cuvis_graph.io.spec import graph_to_yaml

        return graph_to_yaml(self, path, **sections)

    # -- train -------------------------------------------------------------------------
    def train(self, datamodule: Any, config: TrainingConfig | Mapping[str, Any] | None = None, *,
              training_config: TrainingConfig | Mapping[str, Any] | None = None,
              callbacks: list[pl.Callback] | None = None, refit: bool | Sequence[str] = False,
              run_dir: str | os.PathLike | Literal[False] | None = None, runs_root: str | os.PathLike | None = None,
              resume: str | os.PathLike | None = None, pipeline_spec: Mapping[str, Any] | None = None) -> TrainResult:
        """Compile, fit statistics, then train the stages with Lightning (see
        :mod:`cuvis_graph.train.training`; ``config.stages`` empty = one stage of ``max_epochs``).

        Every call trains into a run directory (see :mod:`cuvis_graph.io.runs`):
        ``run_dir`` when given, else a new ``<runs_root or config.run.root>/<graph name>/<stamp>/``;
        ``run_dir=False`` trains without one (no files, no checkpoints, no resume).
        Under DDP every process may pass the same ``run_dir`` (on shared storage for several
        nodes): rank 0 writes it, the processes of rank > 0 join it and write nothing.
        ``resume="auto"`` continues the newest run of this graph from its ``last.ckpt``
        (``resume=<run dir | .ckpt>`` a given one) without repeating statistical init.
        ``callbacks``: extra Lightning callbacks; one that raises is reported and skipped.
        ``refit``: fit already-fitted statistical nodes again (``True``: all; or their names).
        ``pipeline_spec``: the resolved YAML pipeline, written to ``config.yaml``.
        ``training_config``: cuvis.ai name of ``config`` (give one of the two).
        """
        from cuvis_graph.train import entry

        if training_config is not None:
            if config is not None:
                raise TypeError("train: 'config' and 'training_config' name the same argument; give one")
            config = training_config
        return entry.train(self, datamodule, config, callbacks=callbacks, refit=refit, run_dir=run_dir,
                           runs_root=runs_root, resume=resume, pipeline_spec=pipeline_spec)

    def test(self, datamodule: Any, split: Literal["auto", "test", "val"] = "auto", *, accelerator: str = "auto",
             precision: str | int = "32-true") -> dict[str, float]:
        """Evaluate the graph as it is (e.g. trained, or loaded with :meth:`load`) on one split
        of ``datamodule``: its loss and metric leaves, dataset-level, with the same code as the
        test at the end of :meth:`train`. ``split="auto"``: the test split, or the validation
        split when there is none. Returns ``{"<split>/<leaf>/<metric>": value, "<split>/loss": ...}``.
        """
        from cuvis_graph.train import entry

        return entry.test(self, datamodule, split, accelerator=accelerator, precision=precision)

    # -- save / load / export (see cuvis_graph.io.saving, cuvis_graph.io.export) ---------------------
    def save(self, path: str | os.PathLike) -> Any:
        """Write ``pipeline.yaml``, ``weights.safetensors`` and ``meta.json`` into ``path``."""
        from cuvis_graph.io.saving import save_graph

        return save_graph(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> Graph:
        """A graph saved by :meth:`save`; never unpickles (see :func:`cuvis_graph.io.saving.load_graph`)."""
        from cuvis_graph.io.saving import load_graph

        return load_graph(path, **kwargs)

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        """Export the inference graph to ONNX (see :func:`cuvis_graph.io.export.export_onnx`)."""
        from cuvis_graph.io.export import export_onnx

        return export_onnx(self, path, **kwargs)

    # -- inference ------------------------------------------------------------------------
    def predict(self, data: Any, output: str | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """Run the graph on a cube ``[H,W,C]``, a batch ``[B,H,W,C]`` or a batch dict.

        Returns ``{sink_name: tensor}`` (each sink's first port), or the tensor of node
        ``output`` (``"name"`` or ``"name.port"``). A 3-D input gives outputs without the batch
        dimension. Runs in eval and inference mode; every node's train/eval mode is restored
        afterwards. Each call compiles the graph: to predict many batches, build one
        :class:`~cuvis_graph.core.inference.InferenceSession` and call its ``predict``.
        """
        from cuvis_graph.core.inference import InferenceSession

        single = False
        if isinstance(data, Mapping):
            batch = dict(data)
        else:
            cube = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
            if cube.ndim == 3:
                cube, single = cube[None], True
            if cube.ndim != 4:
                raise ValueError(f"predict takes a cube [H,W,C] or a batch [B,H,W,C], got shape {tuple(cube.shape)}")
            batch = {"cube": cube.float()}
        result = InferenceSession.for_batch(self, batch).predict(batch, output)
        if isinstance(result, torch.Tensor):
            return result[0] if single else result
        return {n: (t[0] if single else t) for n, t in result.items()}


def _data_spec(datamodule: Any) -> DataSpec | None:
    if datamodule is None or isinstance(datamodule, DataSpec):
        return datamodule
    if hasattr(datamodule, "data_spec"):
        return datamodule.data_spec()
    if hasattr(datamodule, "train_dataloader"):  # e.g. a LightningDataModule: learn C from one batch
        from cuvis_graph.data.datamodule import spec_from_first_batch

        return spec_from_first_batch(datamodule)
    raise TypeError(f"expected a GraphDataModule, a datamodule with train_dataloader() or a DataSpec, "
                    f"got {type(datamodule).__name__}")
