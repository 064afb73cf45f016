"""Building a pipeline from its composed mapping: parameters checked against each class's
signature and type hints, types through the registry, parents, then the objects and the
:class:`~cuvis_graph.core.graph.Graph` (:func:`build_pipeline`, :func:`load_pipeline`)."""

from __future__ import annotations

import inspect
import math
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cuvis_graph.core.compiler import compile_graph
from cuvis_graph.core.names import name_from, name_problem, shorten
from cuvis_graph.core.registry import (
    UnknownTypeError,
    UnsafeTargetError,
    check_module_name,
    get_class,
    kind_of,
    registered,
    resolve_target,
)
from cuvis_graph.errors import CompileError, Problem, did_you_mean
from cuvis_graph.io.spec.composition import keys_at, load_config
from cuvis_graph.io.spec.parameters import class_parameters, validate_params
from cuvis_graph.io.spec.schema import (
    DEFAULT_DATA,
    KIND_SECTION,
    SECTION_KIND,
    ComponentSpec,
    NodeSpec,
    PipelineSpec,
    SpecError,
)
from cuvis_graph.train.config import TrainingConfig

if typing.TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

# -- types --------------------------------------------------------------------------------------
def _names_of_kind(kind: str) -> list[str]:
    return [n for n, c in registered().items() if kind_of(c) == kind]


def _resolve_class(spec: ComponentSpec, where: str, kind: str, allow: list[str]) -> tuple[type | None, list[Problem]]:
    if spec.type is not None and spec.target is not None and not (kind == "data" and spec.type == DEFAULT_DATA):
        return None, [Problem(where, "give either 'type' or '_target_', not both")]
    name = spec.target or spec.type
    key = f"{where}._target_" if spec.target else f"{where}.type"
    if not name:
        return None, [Problem(where, f"missing 'type' (a registered {kind} class; `cuvis-graph nodes` lists them)")]
    try:
        if "." in name:
            cls = resolve_target(name, allow)
        else:
            cls = get_class(name)
    except UnsafeTargetError as exc:
        return None, [Problem(key, str(exc))]
    except UnknownTypeError:
        label = {"node": "node type", "leaf": "leaf type", "monitor": "monitor type", "data": "datamodule type"}[kind]
        return None, [Problem(key, f"unknown {label} '{name}'{did_you_mean(name, _names_of_kind(kind) or registered())}; "
                                   "`cuvis-graph nodes` lists the registered types; register your own with "
                                   "@cuvis_graph.register and pass their file with --plugin FILE.py")]
    actual = kind_of(cls)
    if actual != kind:
        section = KIND_SECTION.get(actual or "")
        hint = f"; put it under '{section}:'" if section else ""
        return None, [Problem(key, f"'{name}' is a {actual or 'plain class'}, not a {kind}{hint}")]
    return cls, []


def _make(cls: type, kwargs: dict[str, Any], where: str, causes: list[BaseException]) -> tuple[Any, list[Problem]]:
    try:
        return cls(**kwargs), []
    except Exception as exc:  # noqa: BLE001 - a constructor's refusal is a configuration problem
        causes.append(exc)
        message = str(exc).strip() or type(exc).__name__
        params, _ = class_parameters(cls)
        head, sep, rest = message.partition(": ")
        if sep and head in params:
            return None, [Problem(f"{where}.params.{head}", rest)]
        return None, [Problem(f"{where}.params", f"{cls.__name__} rejected its parameters: {message}")]


# -- parents ------------------------------------------------------------------------------------
def _check_ref(ref: Any, where: str, nodes: Iterable[str], leaves: Iterable[str], allow_batch: bool = True) -> list[Problem]:
    if not isinstance(ref, str) or not ref:
        return [Problem(where, f"a parent is a node name ('norm', 'norm.out') or a batch key ('batch.mask'), got {ref!r}")]
    head, _, tail = ref.partition(".")
    nodes = list(nodes)
    if head == "batch" and allow_batch:
        return [] if tail else [Problem(where, "'batch' needs a key: 'batch.cube', 'batch.mask', ...")]
    if head in nodes:
        return []
    if head in leaves:
        return [Problem(where, f"'{head}' is a leaf; leaves have no outputs to feed other nodes")]
    return [Problem(where, f"unknown parent '{head}'{did_you_mean(head, nodes + (['batch'] if allow_batch else []))}; "
                           f"nodes: {nodes}")]


def _node_parents(spec: NodeSpec, where: str, nodes: list[str], leaves: list[str]) -> tuple[Any, list[Problem]]:
    if spec.parent is not None and spec.parents is not None:
        return None, [Problem(where, "give 'parent' or 'parents', not both")]
    key = "parents" if spec.parents is not None else "parent"
    value = spec.parents if spec.parents is not None else spec.parent
    place = f"{where}.{key}"
    if value is None:
        return None, []
    problems: list[Problem] = []
    if isinstance(value, str):
        problems += _check_ref(value, place, nodes, leaves)
    elif isinstance(value, list):
        for i, ref in enumerate(value):
            problems += _check_ref(ref, f"{place}[{i}]", nodes, leaves)
    elif isinstance(value, Mapping):
        for port, refs in value.items():
            items = refs if isinstance(refs, list) else [refs]
            for i, ref in enumerate(items):
                suffix = f"[{i}]" if isinstance(refs, list) else ""
                problems += _check_ref(ref, f"{place}.{port}{suffix}", nodes, leaves)
        value = {str(k): v for k, v in value.items()}
    else:
        problems.append(Problem(place, "must be a node name, a list of names, or a mapping port -> name(s)"))
    return value, problems


# -- building -----------------------------------------------------------------------------------
@dataclass
class Pipeline:
    """A loaded pipeline: the graph, its datamodule, training configuration and resolved config."""

    name: str
    graph: Graph
    training: TrainingConfig
    datamodule: Any
    config: dict[str, Any]
    source: str
    spec: PipelineSpec
    allow_modules: list[str] = field(default_factory=list)

    def resolved_yaml(self) -> str:
        """The resolved configuration as YAML (what a run stores as ``config.yaml``)."""
        return yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc) or "<file>"
        if e["type"] == "extra_forbidden":
            allowed = keys_at(e["loc"][:-1]) or []
            problems.append(Problem(where, f"unknown key '{loc[-1]}'{did_you_mean(loc[-1], allowed)}; "
                                           f"allowed here: {allowed}"))
        elif e["type"] == "missing" and loc == ["nodes"]:
            problems.append(Problem("nodes", "a pipeline needs a 'nodes:' section"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(Problem(where, msg))
    return problems


def _check_names(config: Mapping[str, Any], source: str) -> None:
    """Names that become paths (:mod:`cuvis_graph.core.names`) and integers beyond 64 bits, checked
    before anything echoes or uses them."""
    problems = []
    if "name" in config:
        problem = name_problem(config["name"])
        if problem:
            problems.append(Problem("name", problem))
    for section in ("nodes", "leaves", "monitors"):
        entries = config.get(section)
        for key in entries if isinstance(entries, Mapping) else ():
            problem = name_problem(key, dots=section == "monitors")
            if problem:
                problems.append(Problem(f"{section}.{shorten(key)}", problem))
    problems += [Problem(where, f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits is "
                                f"beyond the 64-bit range (|x| < {_INT64:.3g}): no count, size or seed is that large "
                                "(write a real number as a float, e.g. 1.0e+26)")
                 for where, value in _huge_integers(config, [])]
    if problems:
        raise SpecError(source, problems)


_INT64 = 2**63


def _huge_integers(value: Any, path: list[str]) -> Iterable[tuple[str, int]]:
    """``(yaml path, value)`` of every integer that no 64-bit field can hold."""
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        yield ".".join(path) or "<file>", value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _huge_integers(v, path + [shorten(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _huge_integers(v, path[:-1] + [f"{path[-1]}[{i}]"] if path else [f"[{i}]"])


def parse_spec(config: Mapping[str, Any], source: str = "<pipeline>") -> PipelineSpec:
    """Validate the structure of a (composed) pipeline config; :class:`SpecError` otherwise."""
    try:
        return PipelineSpec.model_validate(dict(config))
    except ValidationError as exc:
        raise SpecError(source, _pydantic_problems(exc)) from None


def build_pipeline(config: Mapping[str, Any], source: str = "<pipeline>", allow_modules: Iterable[str] = (),
                   build_data: bool = True, check: bool = True) -> Pipeline:
    """Create the graph (and datamodule) from a composed config, reporting every problem.

    Args:
        config: the resolved pipeline mapping (see :func:`load_config`).
        source: label for messages (the file name).
        allow_modules: modules whose classes ``_target_`` may name (besides the registry).
        build_data: create the datamodule (its constructor reads only the declared spec).
        check: compile the graph against the datamodule's spec (for training when
            ``training.trainer.max_epochs > 0``).
    """
    from cuvis_graph.core.graph import Graph

    _check_names(config, source)
    spec = parse_spec(config, source)
    allow: list[str] = []
    problems: list[Problem] = []
    for module in allow_modules:
        try:
            check_module_name(module)
            allow.append(module)
        except UnsafeTargetError as exc:
            problems.append(Problem(f"--allow-module {module}", str(exc)))
    node_names, leaf_names = list(spec.nodes), list(spec.leaves)
    for name in leaf_names:
        if name in spec.nodes:
            problems.append(Problem(f"leaves.{name}", f"a node is also named '{name}'; every name must be unique"))

    classes: dict[tuple[str, str], type] = {}
    kwargs: dict[tuple[str, str], dict[str, Any]] = {}
    wiring: dict[str, Any] = {}
    sections: list[tuple[str, str, ComponentSpec]] = (
        [("nodes", n, s) for n, s in spec.nodes.items()] + [("leaves", n, s) for n, s in spec.leaves.items()]
        + [("monitors", n, s) for n, s in spec.monitors.items()]
        + ([("data", "", spec.data)] if build_data else []))
    for section, name, entry in sections:
        where = f"{section}.{name}" if name else section
        cls, found = _resolve_class(entry, where, SECTION_KIND[section], allow)
        problems += found
        if cls is not None:
            classes[section, name] = cls
            kwargs[section, name], found = validate_params(cls, entry.params, where)
            problems += found
        if section == "nodes":
            wiring[name], found = _node_parents(entry, where, node_names, leaf_names)
            problems += found
        elif section == "leaves":
            problems += _check_ref(entry.parent, f"{where}.parent", node_names, leaf_names, allow_batch=False)
    if problems:
        raise SpecError(source, problems)

    causes: list[BaseException] = []
    objects: dict[tuple[str, str], Any] = {}
    for key, cls in classes.items():
        section, name = key
        kw = dict(kwargs[key])
        if section == "monitors" and "name" in inspect.signature(cls).parameters:
            kw["name"] = name
        obj, found = _make(cls, kw, f"{section}.{name}" if name else section, causes)
        problems += found
        if obj is not None:
            objects[key] = obj
    if problems:
        raise SpecError(source, problems, causes)

    graph = Graph(spec.name)
    for name in spec.nodes:
        graph.add_node(objects["nodes", name], parent=wiring[name], name=name)
    for name, entry in spec.leaves.items():
        graph.add_leaf_node(objects["leaves", name], parent=entry.parent, name=name)
    for name in spec.monitors:
        monitor = objects["monitors", name]
        if getattr(monitor, "name", None) in (None, "") or "name" not in inspect.signature(type(monitor)).parameters:
            monitor.name = name
        graph.register_monitor(monitor)
    datamodule = objects.get(("data", ""))
    if check:
        data = datamodule.data_spec() if hasattr(datamodule, "data_spec") else None
        try:  # graph and stage problems, without changing a node
            compile_graph(graph, data, for_training=spec.training.trains, stages=spec.training.stages)
        except CompileError as exc:
            raise SpecError(source, exc.problems) from None
    resolved: dict[str, Any] = {"name": spec.name}
    resolved.update((k, config[k]) for k in ("nodes", "leaves", "monitors") if config.get(k))
    resolved["data"] = {"type": spec.data.type_name, "params": dict(spec.data.params)}
    resolved["training"] = spec.training.model_dump(mode="json")
    return Pipeline(spec.name, graph, spec.training, datamodule, resolved, source, spec, allow)


def load_pipeline(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (),
                  allow_modules: Iterable[str] = (), build_data: bool = True, check: bool = True) -> Pipeline:
    """Compose (Hydra), validate and build a pipeline; one :class:`SpecError` lists all problems."""
    config, label = load_config(source, overrides, allow_modules)
    if not config.get("name") and label not in ("<pipeline>", "<yaml text>"):
        config["name"] = name_from(Path(label).stem)  # a name the user did not write is made safe
    return build_pipeline(config, label, allow_modules, build_data=build_data, check=check)


def graph_from_yaml(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (),
                    allow_modules: Iterable[str] = ()) -> Graph:
    """The graph of a pipeline (nodes, leaves, monitors); no datamodule, not compiled."""
    return load_pipeline(source, overrides, allow_modules, build_data=False, check=False).graph
