"""Constructor parameters from a pipeline file, checked against the class's signature and
type hints (pydantic), each problem naming its YAML path."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cuvis_graph.errors import Problem, did_you_mean

if typing.TYPE_CHECKING:
    pass

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


def validate_params(cls: type, values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[Problem]]:
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
