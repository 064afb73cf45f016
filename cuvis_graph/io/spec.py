"""Pipeline YAML <-> :class:`~cuvis_graph.core.graph.Graph`.

A pipeline file::

    defaults:                 # Hydra config groups under the file's folder (optional)
      - data: synthetic
      - training: default
      - _self_
    name: selector_rx
    nodes:                    # name -> {type | _target_, params, parent | parents}
      norm: {type: MinMaxNormalizer}
      rx:   {type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}
    leaves:                   # name -> {type, params, parent}
      metrics: {type: AnomalyDetectionMetrics, params: {from_logits: false}, parent: rx}
    monitors:                 # name -> {type, params}
      files: {type: FileMonitor, params: {root: runs/files}}
    data: {type: SyntheticHSIDataModule, params: {n_train: 8}}   # default: synthetic scenes
    training: {trainer: {max_epochs: 0}}                          # TrainingConfig fields

``parent`` is a node name, ``"name.port"``, ``"batch.<key>"``, a list of those (the
input ports in order, or all into a variadic port), or a mapping ``port -> parent(s)``.

Loading goes: YAML syntax and duplicate keys (a strict pass over the file, with line
numbers) -> Hydra composition (config groups, command-line overrides; an override of a
key the file does not spell out is accepted when the schema knows it; ``trainer.*``,
``optimizer.*``... stand for ``training.trainer.*``...) -> the pydantic
schema -> types through the registry (:mod:`cuvis_graph.core.registry`, never an import of a
module the YAML names) -> constructor parameters against each class's signature and type
hints -> objects -> :meth:`Graph.compile` against the datamodule's declared spec. Every
problem found at one stage is reported together in one :class:`SpecError`, each naming
its YAML path (``nodes.rx.params.eps: Input should be a valid number``) with a "did you
mean" hint for names.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from cuvis_graph.core.names import name_from, name_problem, shorten
from cuvis_graph.core.registry import (
    UnknownTypeError,
    UnsafeTargetError,
    check_module_name,
    get_class,
    kind_of,
    registered,
    registered_name,
    resolve_target,
)
from cuvis_graph.errors import CompileError, ConfigError, CuvisGraphError, Problem, did_you_mean
from cuvis_graph.io.yaml_reading import YAMLReadError, read_yaml_file, read_yaml_text
from cuvis_graph.train.config import TrainingConfig

if typing.TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = [
    "SpecError",
    "PipelineSpec",
    "NodeSpec",
    "LeafSpec",
    "ComponentSpec",
    "Pipeline",
    "load_pipeline",
    "load_config",
    "build_pipeline",
    "graph_from_yaml",
    "graph_to_yaml",
    "expand_sweeps",
    "read_yaml",
    "class_parameters",
]

DEFAULT_DATA = "SyntheticHSIDataModule"
_SECTION_KIND = {"nodes": "node", "leaves": "leaf", "monitors": "monitor", "data": "data"}
_KIND_SECTION = {v: k for k, v in _SECTION_KIND.items()}


class SpecError(ConfigError):
    """Problems in a pipeline definition, each naming its YAML path; reported together."""

    def __init__(self, source: str, problems: Sequence[Problem], causes: Sequence[BaseException] = ()) -> None:
        self.source = source
        self.problems = list(problems)
        self.causes = list(causes)
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            body = "\n".join(f"  {i}. {p}" for i, p in enumerate(self.problems, 1))
            message = f"{source}: {len(self.problems)} problems found\n{body}"
        super().__init__(message)


# -- the schema ------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"params must be a mapping of parameter names to values, got {type(value).__name__}")
    return dict(value)


class ComponentSpec(_Strict):
    """A class by registered name (``type``) or dotted path (``_target_``) with its parameters."""

    type: str | None = None
    target: str | None = Field(None, alias="_target_")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> dict[str, Any]:
        return _check_params(v)

    @property
    def type_name(self) -> str | None:
        return self.target or self.type


class NodeSpec(ComponentSpec):
    """A processing node: its class, parameters and parent(s)."""

    parent: Any = None
    parents: Any = None


class LeafSpec(ComponentSpec):
    """A loss, metric or visualization leaf on one parent (``"node"`` or ``"node.port"``)."""

    parent: str


class DataComponentSpec(ComponentSpec):
    type: str | None = DEFAULT_DATA


class PipelineSpec(_Strict):
    """The whole pipeline file (after Hydra composition)."""

    name: str = Field("pipeline", min_length=1)
    nodes: dict[str, NodeSpec] = Field(min_length=1)
    leaves: dict[str, LeafSpec] = Field(default_factory=dict)
    monitors: dict[str, ComponentSpec] = Field(default_factory=dict)
    data: DataComponentSpec = Field(default_factory=DataComponentSpec)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    allow_modules: list[str] = Field(default_factory=list)

    @field_validator("leaves", "monitors", "data", "training", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("allow_modules", mode="before")
    @classmethod
    def _not_from_a_file(cls, v: Any) -> Any:
        if v:
            shown = shorten(v[0] if isinstance(v, list) and v else v)
            raise ValueError(f"a pipeline cannot widen its own allowlist; allow a module where you run it: "
                             f"'--allow-module {shown}' on the command line, allow_modules=['{shown}'] in "
                             f"Python, or register its classes (@cuvis_graph.register in a --plugin file, or an entry point)")
        return []


# -- YAML text -------------------------------------------------------------------------------
def _as_spec_error(exc: YAMLReadError) -> SpecError:
    return SpecError(exc.source, [Problem(exc.where, exc.detail)])


def _pipeline_mapping(data: Any, source: str) -> dict[str, Any]:
    if data is None:
        raise SpecError(source, [Problem("<file>", "the file is empty; a pipeline needs at least 'nodes:'")])
    if not isinstance(data, Mapping):
        raise SpecError(source, [Problem("<file>", f"a pipeline is a mapping (name:, nodes:, ...), got a "
                                                   f"{type(data).__name__}")])
    return dict(data)


def read_yaml(text: str, source: str) -> Any:
    """Parse pipeline YAML text within the reader's limits (:mod:`cuvis_graph.io.yaml_reading`):
    syntax errors with line/column, duplicate keys, tags, deep nesting and alias bombs refused,
    empty or non-mapping documents refused."""
    try:
        return _pipeline_mapping(read_yaml_text(text, source), source)
    except YAMLReadError as exc:
        raise _as_spec_error(exc) from None


def read_pipeline_file(path: str | os.PathLike, source: str | None = None) -> dict[str, Any]:
    """Read a pipeline (or config-group) file within the reader's limits; :class:`SpecError` otherwise."""
    label = source or str(path)
    try:
        return _pipeline_mapping(read_yaml_file(path, label), label)
    except YAMLReadError as exc:
        raise _as_spec_error(exc) from None


def _hydra_settings(raw: Mapping[str, Any], source: str) -> None:
    """Refuse Hydra's own settings in a file: ``hydra.searchpath`` alone imports a package
    (``pkg://name``) while composing, and callbacks/logging configs run code."""
    problems = []
    if "hydra" in raw:
        problems.append(Problem("hydra", "Hydra's own settings (searchpath, callbacks, job_logging...) cannot be "
                                         "set in a pipeline; remove the 'hydra:' section"))
    for i, entry in enumerate(raw.get("defaults") or []):
        names = list(entry) if isinstance(entry, Mapping) else [entry]
        for name in names:
            if isinstance(name, str) and "hydra" in re.split(r"[/@.\s]+", name):
                problems.append(Problem(f"defaults[{i}]", f"'{shorten(name)}' names Hydra's own config groups or "
                                                          "package; a pipeline's defaults choose its own groups only"))
    if problems:
        raise SpecError(source, problems)


# -- overrides and Hydra composition -------------------------------------------------------------
def _parse_overrides(overrides: Sequence[str], source: str) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except (HydraException, ValueError) as exc:
            raise SpecError(source, [Problem(f"override '{shorten(line)}'",
                                             shorten(str(exc).strip().splitlines()[0], 200))]) from None
    return parsed


#: Most jobs one ``-m/--multirun`` command may sweep (each is validated before any trains).
MAX_SWEEP_JOBS = 100


def expand_sweeps(overrides: Sequence[str], source: str = "overrides") -> list[list[str]]:
    """Hydra sweep syntax (``a=1,2 b=range(3)``) -> one override list per job (cartesian product).

    At most :data:`MAX_SWEEP_JOBS` jobs: the values are counted lazily, so ``range(10**9)``
    is refused at once with the count instead of being listed.
    """
    from hydra.errors import HydraException

    axes: list[list[str]] = []
    sizes: list[int] = []
    approx = ""
    for o in _parse_overrides(overrides, source):
        if not o.is_sweep_override():
            axes.append([o.input_line])
            sizes.append(1)
            continue
        key = o.get_key_element()
        try:
            values = list(itertools.islice(o.sweep_string_iterator(), MAX_SWEEP_JOBS + 1))
        except (HydraException, ValueError) as exc:
            raise SpecError(source, [Problem(f"override '{shorten(o.input_line)}'",
                                             f"cannot sweep it: {str(exc).strip().splitlines()[0]}")]) from None
        if not values:
            raise SpecError(source, [Problem(f"override '{shorten(o.input_line)}'", "sweeps no value at all")])
        axes.append([f"{key}={v}" for v in values])
        exact = _sweep_size(o.value())
        sizes.append(exact or len(values))
        approx = approx or ("at least " if exact is None and len(values) > MAX_SWEEP_JOBS else "")
    total = math.prod(sizes)
    if total > MAX_SWEEP_JOBS:
        shape = " x ".join(str(n) for n in sizes if n > 1)
        raise SpecError(source, [Problem("-m/--multirun", f"the overrides sweep {approx}{total} combinations "
                                                          f"({shape} values); at most {MAX_SWEEP_JOBS} runs per "
                                                          "command: sweep fewer values or split the sweep")])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _sweep_size(sweep: Any) -> int | None:
    """The number of values of an integer range sweep (``None`` for other sweeps: counted)."""
    bounds = [getattr(sweep, k, None) for k in ("start", "stop", "step")]
    if all(isinstance(b, int) for b in bounds) and bounds[2]:
        return len(range(*bounds))
    return None


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _model_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_field(model: type[BaseModel], key: str) -> Any:
    for n, f in model.model_fields.items():
        if key in (n, f.alias):
            return f
    return None


def _keys_at(loc: Sequence[Any], root: type[BaseModel] = PipelineSpec) -> list[str] | None:
    """The keys the schema allows at ``loc`` (``None`` when free-form there)."""
    t: Any = root
    for part in loc:
        t = _unwrap(t)
        if _is_model(t):
            f = _model_field(t, str(part))
            if f is None:
                return None
            t = f.annotation
        elif typing.get_origin(t) is dict:
            t = typing.get_args(t)[1]
        else:
            return None
    t = _unwrap(t)
    return _model_keys(t) if _is_model(t) else None


def _section_class(section: str, entry: Any, allow: Iterable[str]) -> type | None:
    if not isinstance(entry, Mapping):
        return get_class(DEFAULT_DATA) if section == "data" else None
    name = entry.get("_target_") or entry.get("type") or (DEFAULT_DATA if section == "data" else None)
    if not isinstance(name, str):
        return None
    try:
        return resolve_target(name, allow) if "." in name else get_class(name)
    except CuvisGraphError:
        return None


def _override_problem(config: Mapping[str, Any], key: str, allow: Iterable[str]) -> str | None:
    """Why ``key`` cannot be set by an override (``None``: it can)."""
    parts = key.split(".")
    top = parts[0]
    if top not in _model_keys(PipelineSpec):
        return f"unknown key '{shorten(top)}'{did_you_mean(top, _model_keys(PipelineSpec))}; a pipeline has {_model_keys(PipelineSpec)}"
    if top == "training":
        model: Any = TrainingConfig
        for i, part in enumerate(parts[1:], 1):
            model = _unwrap(model)
            if not _is_model(model):
                return None
            f = _model_field(model, part)
            if f is None:
                keys = _model_keys(model)
                return f"unknown key '{shorten(part)}' in {shorten('.'.join(parts[:i]))}{did_you_mean(part, keys)}; known keys: {keys}"
            model = f.annotation
        return None
    if top in ("nodes", "leaves", "monitors"):
        if len(parts) < 2:
            return None
        entries = config.get(top) or {}
        name = parts[1]
        if name not in entries:
            return (f"no entry '{name}' in {top}{did_you_mean(name, entries)}; to add one, write "
                    f"'+{key}=...'")
        rest, entry = parts[2:], entries[name]
    elif top == "data":
        rest, entry = parts[1:], config.get("data")
    else:
        return None
    if not rest:
        return None
    spec_model = {"nodes": NodeSpec, "leaves": LeafSpec, "monitors": ComponentSpec, "data": DataComponentSpec}[top]
    if rest[0] not in _model_keys(spec_model):
        keys = _model_keys(spec_model)
        where = ".".join(parts[: len(parts) - len(rest)])
        return f"unknown key '{shorten(rest[0])}' in {shorten(where)}{did_you_mean(rest[0], keys)}; known keys: {keys}"
    if rest[0] == "params" and len(rest) > 1:
        cls = _section_class(top, entry, allow)
        if cls is not None:
            params, var_kw = class_parameters(cls)
            if rest[1] not in params and not var_kw:
                return (f"{cls.__name__} has no parameter '{rest[1]}'{did_you_mean(rest[1], params)}; "
                        f"its parameters: {list(params)}")
    return None


_HYDRA_OVERRIDE = ("Hydra's own settings (hydra.*) are not used by cuvis-graph: runs go to "
                   "'--runs-dir DIR' (default runs/), sweeps run with -m")


def _prepare_overrides(base: Mapping[str, Any], parsed: list[Any], groups: set[str], source: str,
                       allow: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split into (group overrides, value overrides); value overrides of keys the schema knows
    are forced (``++``) so a pipeline need not spell out every default."""
    group_lines, value_lines, problems = [], [], []
    for o in parsed:
        if o.key_or_group.split(".")[0].split("/")[0] == "hydra":
            problems.append(Problem(f"override '{shorten(o.input_line)}'", _HYDRA_OVERRIDE))
            continue
        if o.is_sweep_override():
            problems.append(Problem(f"override '{shorten(o.input_line)}'", "sweeps several values; run it with -m/--multirun"))
            continue
        if o.is_add() or o.is_force_add() or o.is_delete():
            value_lines.append(o.input_line)
        elif o.key_or_group in groups and o.package is None:
            group_lines.append(o.input_line)
        else:
            key, line = o.key_or_group, o.input_line
            top = key.split(".")[0]
            if top in TrainingConfig.model_fields and top not in PipelineSpec.model_fields and top not in base:
                key, line = f"training.{key}", f"training.{line}"  # `trainer.max_epochs=3` for short
            problem = _override_problem(base, key, allow)
            if problem:
                problems.append(Problem(f"override '{shorten(o.input_line)}'", problem))
            else:
                value_lines.append("++" + line)
    if problems:
        raise SpecError(source, problems)
    return group_lines, value_lines


def _hydra_compose(path: Path, overrides: list[str], source: str) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent.resolve()), version_base=None, job_name="cuvis_graph"):
            return compose(config_name=path.stem, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc).split("Config search path:")[0].strip()
        where = "overrides" if overrides else "defaults"
        raise SpecError(source, [Problem(where, text)]) from None
    finally:
        GlobalHydra.instance().clear()


def _defaults_files(raw: Mapping[str, Any], group: str, root: Path) -> list[Path]:
    """The config-group files a ``defaults:`` list in folder ``group`` selects."""
    files = []
    for entry in raw.get("defaults") or []:
        items = entry.items() if isinstance(entry, Mapping) else [(None, entry)]
        for key, option in items:
            if key is None:  # `- other_config` in the same folder, `- _self_`
                options, folder = [option], group
            else:
                name = str(key).replace("override ", "").replace("optional ", "").strip().split("@")[0]
                folder = name.lstrip("/") if name.startswith("/") else "/".join(p for p in (group, name) if p)
                options = option if isinstance(option, list) else [option]
            files += [root / folder / f"{o}.yaml" for o in options if isinstance(o, str) and o != "_self_"]
    return files


def _check_group_files(path: Path, raw: Mapping[str, Any], group_lines: list[str]) -> None:
    """Read every config-group file the composition uses (nested defaults followed) with the
    bounded reader and refuse Hydra's own settings in them, before Hydra reads them itself."""
    root = path.parent
    todo = _defaults_files(raw, "", root)
    todo += [root / group / f"{option}.yaml" for group, _, option in (line.partition("=") for line in group_lines)]
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen or not file.is_file():
            continue
        seen.add(file)
        try:
            data = read_yaml_file(file)
        except YAMLReadError as exc:
            raise _as_spec_error(exc) from None
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise SpecError(str(file), [Problem("<file>", f"a config-group file is a mapping, got a "
                                                          f"{type(data).__name__}")])
        header = re.search(r"^#\s*@package\s+(\S+)", file.read_text(encoding="utf-8"), re.MULTILINE)
        if header and "hydra" in re.split(r"[/@.]+", header.group(1)):
            raise SpecError(str(file), [Problem("@package", "a config-group file cannot write into Hydra's own "
                                                            "settings; remove the '@package hydra' header")])
        _hydra_settings(data, str(file))
        todo += _defaults_files(data, str(file.parent.relative_to(root)), root)


def _to_container(cfg: Any, source: str) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "interpolation"
        raise SpecError(source, [Problem(str(key), str(exc).strip().splitlines()[0])]) from None
    data.pop("hydra", None)
    data.pop("defaults", None)
    missing = list(_missing_values(data, []))
    if missing:
        raise SpecError(source, [Problem(m, f"no value given (it is '???'); set it on the command line: {m}=...")
                                 for m in missing])
    return data


def _missing_values(value: Any, path: list[str]) -> Iterable[str]:
    if value == "???":
        yield ".".join(path)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _missing_values(v, path + [str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _missing_values(v, path + [str(i)])


def _is_yaml_text(source: str) -> bool:
    """A string is YAML text (not a path) when it has several lines, or one line with a
    ``key:`` and no existing file of that name."""
    if "\n" in source:
        return True
    return ":" in source and not source.strip().endswith((".yaml", ".yml")) and not Path(source).exists()


def load_config(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (),
                allow_modules: Iterable[str] = ()) -> tuple[dict[str, Any], str]:
    """The composed, resolved pipeline config and a label for messages.

    ``source``: a ``.yaml`` path (composed by Hydra: ``defaults`` config groups next to it
    and ``overrides``), YAML text, or a mapping (overrides applied with OmegaConf).
    """
    from omegaconf import OmegaConf

    allow = list(allow_modules)
    if isinstance(source, Mapping):
        label, raw, path = "<pipeline>", dict(source), None
    elif isinstance(source, str) and _is_yaml_text(source):
        label, raw, path = "<yaml text>", read_yaml(source, "<yaml text>"), None
    else:
        path = Path(source)
        label = str(source)
        raw = read_pipeline_file(path, label)
    _hydra_settings(raw, label)
    parsed = _parse_overrides(list(overrides), label)
    if path is not None and path.suffix == ".yaml":
        groups = {d.name for d in path.parent.iterdir() if d.is_dir()}
        group_lines = [o.input_line for o in parsed if o.key_or_group in groups and o.package is None
                       and not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_sweep_override())]
        _check_group_files(path, raw, group_lines)
        base = _to_container_unresolved(_hydra_compose(path, group_lines, label))
        group_lines, value_lines = _prepare_overrides(base, parsed, groups, label, allow)
        return _to_container(_hydra_compose(path, group_lines + value_lines, label), label), label
    if raw.get("defaults"):
        raise SpecError(label, [Problem("defaults", "config groups need a pipeline file ending in .yaml")])
    group_lines, value_lines = _prepare_overrides(raw, parsed, set(), label, allow)
    cfg = OmegaConf.create(raw)
    for o in _parse_overrides(value_lines, label):
        if o.is_delete():
            OmegaConf.update(cfg, o.key_or_group, None, merge=False)
        else:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    return _to_container(cfg, label), label


def _to_container_unresolved(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


# -- parameters ---------------------------------------------------------------------------------
_ADAPTERS: dict[Any, TypeAdapter | None] = {}


def _adapter(annotation: Any) -> TypeAdapter | None:
    key = repr(annotation)
    if key not in _ADAPTERS:
        try:
            _ADAPTERS[key] = TypeAdapter(annotation)
        except Exception:  # noqa: BLE001 - types pydantic cannot check are passed through
            _ADAPTERS[key] = None
    return _ADAPTERS[key]


def _hints(cls: type) -> dict[str, Any]:
    init = inspect.unwrap(cls.__init__)
    try:
        return typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - fall back to resolving one annotation at a time
        hints = {}
        module = inspect.getmodule(init)
        namespace = dict(vars(module)) if module else {}
        for name, ann in getattr(init, "__annotations__", {}).items():
            try:
                hints[name] = eval(ann, namespace) if isinstance(ann, str) else ann  # noqa: S307 - class's own annotation
            except Exception:  # noqa: BLE001
                hints[name] = Any
        return hints


def class_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """Constructor parameters settable from YAML (``name`` excluded) and whether ``**kwargs`` exists."""
    signature = inspect.signature(cls)
    params = {n: p for n, p in signature.parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "name")}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return params, var_kw


def parameter_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of the constructor parameters."""
    return _hints(cls)


def _validate_params(cls: type, values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[Problem]]:
    params, var_kw = class_parameters(cls)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in values.items():
        place = f"{where}.params.{key}"
        if key == "name":
            problems.append(Problem(place, "a name comes from the entry's key; remove 'name' from params"))
            continue
        if key not in params and not var_kw:
            problems.append(Problem(place, f"{cls.__name__} has no parameter '{key}'{did_you_mean(key, params)}; "
                                           f"its parameters: {list(params) or 'none'}"))
            continue
        adapter = _adapter(hints.get(key, Any))
        if adapter is None:
            kwargs[key] = value
            continue
        try:
            kwargs[key] = adapter.validate_python(value)
        except ValidationError as exc:
            for e in exc.errors():
                sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
                problems.append(Problem(place + sub, f"{e['msg']} (got {value!r})"))
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in values:
            problems.append(Problem(f"{where}.params.{key}", f"missing required parameter of {cls.__name__}"))
    return kwargs, problems


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
        section = _KIND_SECTION.get(actual or "")
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
            allowed = _keys_at(e["loc"][:-1]) or []
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
        cls, found = _resolve_class(entry, where, _SECTION_KIND[section], allow)
        problems += found
        if cls is not None:
            classes[section, name] = cls
            kwargs[section, name], found = _validate_params(cls, entry.params, where)
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
        from cuvis_graph.train.training import stage_problems

        problems = stage_problems(graph, spec.training)
        try:
            graph.compile(datamodule, for_training=spec.training.trains)
        except CompileError as exc:
            problems = list(exc.problems) + problems
        if problems:
            raise SpecError(source, problems) from None
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


# -- writing ------------------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else float(value)
    if isinstance(value, Enum):
        return _plain(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _plain(value.item(), where)
    if hasattr(value, "tolist") and getattr(value, "ndim", 2) <= 1:
        return _plain(value.tolist(), where)
    raise SpecError("to_yaml", [Problem(where, f"a {type(value).__name__} cannot be written to YAML; "
                                               "use plain numbers, strings, lists and mappings as parameters")])


def _type_name(obj: Any, where: str) -> str:
    name = registered_name(type(obj))
    if name is None:
        raise SpecError("to_yaml", [Problem(where, f"{type(obj).__name__} is not registered; decorate it with "
                                                   "@cuvis_graph.register so a pipeline can name it")])
    return name


def _component(obj: Any, where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": _type_name(obj, where)}
    params = _plain(obj.hparams() if hasattr(obj, "hparams") else {}, f"{where}.params")
    if params:
        entry["params"] = params
    return entry


def _wiring_yaml(node: Any, wiring: Mapping[str, list[Any]]) -> dict[str, Any]:
    ports = list(node.input_specs)
    labels = {port: [r.label() for r in refs] for port, refs in wiring.items()}
    if not labels:
        return {}
    if len(labels) == 1 and ports and next(iter(labels)) == ports[0]:
        refs = labels[ports[0]]
        if node.input_specs[ports[0]].variadic:
            return {"parent": refs}
        if len(refs) == 1:
            return {"parent": refs[0]}
    return {"parents": {port: (refs[0] if len(refs) == 1 and not (port in node.input_specs
                                                                   and node.input_specs[port].variadic) else refs)
                        for port, refs in labels.items()}}


def graph_to_yaml(graph: Graph, path: str | os.PathLike | None = None, *, training: Any = None,
                  data: Mapping[str, Any] | None = None, monitors: bool = True) -> str:
    """The pipeline YAML of ``graph`` (nodes, leaves, monitors unless ``monitors=False``;
    ``training``/``data`` when given).

    Parameters are the constructor arguments each object recorded (``obj.hparams()``);
    ``Graph.from_yaml(graph.to_yaml())`` rebuilds the same graph (unfitted).
    """
    out: dict[str, Any] = {"name": graph.name, "nodes": {}}
    for name, node in graph._nodes.items():
        entry = _component(node, f"nodes.{name}")
        entry.update(_wiring_yaml(node, graph._wiring.get(name, {})))
        out["nodes"][name] = entry
    if graph._leaves:
        out["leaves"] = {}
        for name, leaf in graph._leaves.items():
            entry = _component(leaf, f"leaves.{name}")
            entry["parent"] = graph._leaf_parents[name].label()
            out["leaves"][name] = entry
    if graph._monitors and monitors:
        out["monitors"] = {}
        for i, monitor in enumerate(graph._monitors):
            name = getattr(monitor, "name", None) or f"{type(monitor).__name__.lower()}_{i}"
            while name in out["monitors"]:
                name = f"{name}_{i}"
            out["monitors"][name] = _component(monitor, f"monitors.{name}")
    if data is not None:
        out["data"] = _plain(dict(data), "data")
    if training is not None:
        config = TrainingConfig.model_validate(training) if not isinstance(training, TrainingConfig) else training
        out["training"] = config.model_dump(mode="json")
    text = yaml.safe_dump(out, sort_keys=False, allow_unicode=True)
    if path is not None:
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return text
