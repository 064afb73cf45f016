"""Writing a graph: its pipeline mapping (:func:`graph_spec`, also the run record's
``pipeline`` section) and YAML (:func:`graph_to_yaml`)."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from cuvis_graph.core.registry import (
    registered_name,
)
from cuvis_graph.errors import Problem
from cuvis_graph.io.atomic import atomic_write_text
from cuvis_graph.io.plain import plain
from cuvis_graph.io.spec.schema import SpecError
from cuvis_graph.train.config import TrainingConfig

if typing.TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.core.node import PortSpec
    from cuvis_graph.core.structure import NodeEntry

__all__ = ["graph_spec", "graph_to_yaml", "wiring_fields"]


def _refuse(value: Any, where: str) -> Any:
    raise SpecError("to_yaml", [Problem(where, f"a {type(value).__name__} cannot be written to YAML; "
                                               "use plain numbers, strings, lists and mappings as parameters")])


def _type_name(obj: Any, where: str, strict: bool) -> str:
    name = registered_name(type(obj))
    if name is None and strict:
        raise SpecError("to_yaml", [Problem(where, f"{type(obj).__name__} is not registered; decorate it with "
                                                   "@cuvis_graph.register so a pipeline can name it")])
    return name or type(obj).__name__


def _component(obj: Any, where: str, strict: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": _type_name(obj, where, strict)}
    params = plain(obj.hparams() if hasattr(obj, "hparams") else {}, f"{where}.params",
                   _refuse if strict else lambda v, _: str(v))
    if params:
        entry["params"] = params
    return entry


def _wiring_yaml(entry: NodeEntry) -> dict[str, Any]:
    return wiring_fields(entry.labels(), entry.node.input_specs)


def wiring_fields(labels: Mapping[str, list[str]], specs: Mapping[str, PortSpec]) -> dict[str, Any]:
    """A node's wiring ``{port: [labels]}`` as pipeline-file fields: ``parent: x`` /
    ``parent: [x, y]`` where the first of its input ``specs`` says it all, else
    ``parents: {port: x or [x, y]}`` (a list for a variadic port or several parents)."""
    ports = list(specs)
    if not labels:
        return {}
    if len(labels) == 1 and ports and next(iter(labels)) == ports[0]:
        refs = labels[ports[0]]
        if specs[ports[0]].variadic:
            return {"parent": refs}
        if len(refs) == 1:
            return {"parent": refs[0]}
    return {"parents": {port: (refs[0] if len(refs) == 1 and not (port in specs and specs[port].variadic) else refs)
                        for port, refs in labels.items()}}


def graph_spec(graph: Graph, *, strict: bool = True, monitors: bool = True) -> dict[str, Any]:
    """The pipeline mapping of ``graph``'s structure: ``name``, ``nodes`` (type, params,
    parent/parents), ``leaves`` (type, params, parent), ``monitors`` (unless ``monitors=False``).

    Parameters are the constructor arguments each object recorded (``obj.hparams()``), in
    the plain form of :func:`cuvis_graph.io.plain.plain`. ``strict`` (the YAML writer): an
    unregistered class or a parameter with no plain form raises :class:`SpecError` naming
    its place; otherwise (the run record) the class name and the value's ``str`` stand in.
    """
    structure = graph.structure
    out: dict[str, Any] = {"name": structure.name, "nodes": {}}
    for name, entry in structure.nodes.items():
        item = _component(entry.node, f"nodes.{name}", strict)
        item.update(_wiring_yaml(entry))
        out["nodes"][name] = item
    if structure.leaves:
        out["leaves"] = {}
        for name, leaf in structure.leaves.items():
            item = _component(leaf.leaf, f"leaves.{name}", strict)
            item["parent"] = leaf.parent.label()
            out["leaves"][name] = item
    if structure.monitors and monitors:
        out["monitors"] = {}
        for i, monitor in enumerate(structure.monitors):
            name = getattr(monitor, "name", None) or f"{type(monitor).__name__.lower()}_{i}"
            while name in out["monitors"]:
                name = f"{name}_{i}"
            out["monitors"][name] = _component(monitor, f"monitors.{name}", strict)
    return out


def graph_to_yaml(graph: Graph, path: str | os.PathLike | None = None, *, training: Any = None,
                  data: Mapping[str, Any] | None = None, monitors: bool = True) -> str:
    """The pipeline YAML of ``graph`` (:func:`graph_spec`; ``training``/``data`` when given),
    written atomically to ``path`` when given.

    ``Graph.from_yaml(graph.to_yaml())`` rebuilds the same graph (unfitted).
    """
    out = graph_spec(graph, monitors=monitors)
    if data is not None:
        out["data"] = plain(dict(data), "data", _refuse)
    if training is not None:
        config = TrainingConfig.model_validate(training) if not isinstance(training, TrainingConfig) else training
        out["training"] = config.model_dump(mode="json")
    text = yaml.safe_dump(out, sort_keys=False, allow_unicode=True)
    if path is not None:
        atomic_write_text(path, text)
    return text
