"""Reading a pipeline: strict YAML (duplicate keys, line numbers), command-line overrides,
sweeps and Hydra composition (config groups) into one plain mapping (:func:`load_config`)."""

from __future__ import annotations

import itertools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel

from cuvis_graph.core.names import shorten
from cuvis_graph.core.registry import (
    get_class,
    resolve_target,
)
from cuvis_graph.errors import CuvisGraphError, Problem, did_you_mean
from cuvis_graph.io.spec.hydra_composition import hydra_compose
from cuvis_graph.io.spec.parameters import class_parameters
from cuvis_graph.io.spec.plain_defaults import compose_plain_defaults
from cuvis_graph.io.spec.schema import (
    DEFAULT_DATA,
    ComponentSpec,
    DataComponentSpec,
    LeafSpec,
    NodeSpec,
    PipelineSpec,
    SpecError,
)
from cuvis_graph.io.yaml_reading import YAMLReadError, read_yaml_file, read_yaml_text
from cuvis_graph.train.config import TrainingConfig

if typing.TYPE_CHECKING:
    pass

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
    if not overrides:
        return []
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


def keys_at(loc: Sequence[Any], root: type[BaseModel] = PipelineSpec) -> list[str] | None:
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
    and ``overrides``; a plain defaults list without overrides is merged as Hydra merges it,
    :mod:`~cuvis_graph.io.spec.plain_defaults`), YAML text, or a mapping (overrides applied
    with OmegaConf).
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
        composed = compose_plain_defaults(path) if not parsed else None  # Hydra's result, without Hydra
        if composed is None:
            composed = hydra_compose(path, group_lines, label)
        base = _to_container_unresolved(composed)
        first_lines = group_lines
        group_lines, value_lines = _prepare_overrides(base, parsed, groups, label, allow)
        if group_lines + value_lines != first_lines:  # else the same composition again
            composed = hydra_compose(path, group_lines + value_lines, label)
        return _to_container(composed, label), label
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
