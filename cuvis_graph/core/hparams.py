"""Automatic recording of constructor arguments, so nodes and leaves can be written to YAML.

A class that inherits :class:`RecordsInit` gets ``self._hparams``: the arguments of its
outermost ``__init__`` call (defaults filled in, ``self`` and ``name`` excluded).

It is also the one place where every node's and leaf's parameters pass before the
constructor body runs: a non-finite float (``nan``, ``inf``, also inside lists, tuples and
mappings) is refused with a :class:`~cuvis_graph.errors.ConfigError` naming the parameter
and the node (principle 13), whether the node comes from Python or from YAML.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

from cuvis_graph.errors import ConfigError

__all__ = ["RecordsInit", "non_finite_parameter"]


def non_finite_parameter(value: Any, path: str) -> tuple[str, float] | None:
    """``(path, value)`` of the first non-finite float in ``value`` (recursing into containers), else ``None``."""
    if isinstance(value, numbers.Integral | str | bytes) or value is None:
        return None
    if isinstance(value, numbers.Real):  # float, numpy floating scalars
        return None if math.isfinite(value) else (path, float(value))
    if isinstance(value, Mapping):
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for p, v in items if (found := non_finite_parameter(v, p)) is not None), None)


def _refuse_non_finite(cls: type, arguments: Mapping[str, Any]) -> None:
    for key, value in arguments.items():
        if key in ("self", "name"):
            continue
        found = non_finite_parameter(value, key)
        if found is not None:
            path, bad = found
            name = arguments.get("name")
            owner = f"{cls.__name__} '{name}'" if name else cls.__name__
            raise ConfigError(f"{path}: {bad} is not a finite number; {owner} needs a finite value here")


class RecordsInit:
    """Mixin: record ``__init__`` arguments in ``self._hparams``; refuse non-finite floats among them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__dict__["__init__"]
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            outermost = not hasattr(self, "_hparams_depth") or self._hparams_depth == 0
            if outermost:
                try:
                    bound = signature.bind(self, *args, **kw)
                except TypeError:
                    bound = None  # the call itself reports the wrong arguments
                if bound is not None:
                    _refuse_non_finite(type(self), bound.arguments)
            object.__setattr__(self, "_hparams_depth", getattr(self, "_hparams_depth", 0) + 1)
            try:
                original(self, *args, **kw)
            finally:
                object.__setattr__(self, "_hparams_depth", self._hparams_depth - 1)
            if outermost:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                params = {k: v for k, v in bound.arguments.items() if k not in ("self", "name")}
                for k, p in signature.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        params.update(params.pop(k, {}))
                    elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                        params.pop(k, None)
                object.__setattr__(self, "_hparams", params)

        cls.__init__ = __init__
