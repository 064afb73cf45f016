"""Alternative names accepted for constructor arguments and flags (cuvis.ai vocabulary).

:data:`ARGUMENT_ALIASES` is the one table: ``{class name: {alternative: primary}}``. A
class listed there (or whose base is) accepts ``Class(alternative=value)`` as
``Class(primary=value)``; the primary name is what is stored, saved and shown by
``hparams()``. Giving both names of one argument is an error naming them. The
alternative name also reads the value back (``viz.max_samples`` is ``viz.max_points``)
unless the class already defines that attribute.

:class:`CallableBool` lets a flag read both as a method and as a property:
``node.is_trainable()`` and ``if node.is_trainable:`` give the same answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ARGUMENT_ALIASES", "aliases_for", "install_argument_aliases", "CallableBool", "callable_flag"]

_VISUALIZATION = {"log_every_n_epochs": "log_frequency"}

#: ``{class name: {alternative name: primary name}}``; a class inherits its bases' entries.
ARGUMENT_ALIASES: dict[str, dict[str, str]] = {
    "VisualizationNode": _VISUALIZATION,
    "AnomalyHeatmap": {"colormap": "cmap"},
    "ScoreHistogram": {"n_bins": "bins"},
    "PCAVisualization": {"subsample": "max_points", "max_samples": "max_points", "n_dims": "n_components"},
    "WeightedMultiLoss": {"loss_weights": "weights"},
    "FileMonitor": {"output_dir": "root"},
    "TensorBoardMonitor": {"log_dir": "root"},
}


def aliases_for(cls: type) -> dict[str, str]:
    """The alternative names ``cls`` accepts (its own entry and its bases')."""
    merged: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        merged.update(ARGUMENT_ALIASES.get(klass.__name__, {}))
    return merged


def _rename(cls: type, aliases: Mapping[str, str], kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for alternative, primary in aliases.items():
        if alternative in out:
            if primary in out:
                raise TypeError(f"{cls.__name__}: '{alternative}' and '{primary}' name the same argument; "
                                f"give one ('{primary}' is the primary name)")
            out[primary] = out.pop(alternative)
    return out


def install_argument_aliases(cls: type) -> None:
    """Wrap ``cls.__init__`` (when ``cls`` defines one) to accept the table's alternative names,
    and give each alternative name not yet defined on ``cls`` a read-only property."""
    aliases = aliases_for(cls)
    for alternative, primary in aliases.items():
        if not hasattr(cls, alternative):
            setattr(cls, alternative, _read_alias(alternative, primary))
    if "__init__" not in cls.__dict__ or not aliases:
        return
    original = cls.__dict__["__init__"]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **_rename(type(self), aliases, kwargs))

    cls.__init__ = __init__


def _read_alias(alternative: str, primary: str) -> property:
    def getter(self: Any) -> Any:
        return getattr(self, primary)

    getter.__name__ = alternative
    getter.__doc__ = f"cuvis.ai name of :attr:`{primary}` (read-only)."
    return property(getter)


class CallableBool:
    """A truth value that can also be called: ``bool(flag) == flag()``.

    ``flag is True`` stays false (it is not the ``bool`` singleton); compare with ``==`` or
    use it in a condition.
    """

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = bool(value)

    def __bool__(self) -> bool:
        return self.value

    def __call__(self) -> bool:
        return self.value

    def __eq__(self, other: object) -> bool:
        return self.value == (bool(other) if isinstance(other, CallableBool | bool) else other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


def callable_flag(method: Callable[[Any], bool]) -> property:
    """Turn ``def is_x(self) -> bool`` into a property giving a :class:`CallableBool`."""

    @functools.wraps(method)
    def getter(self: Any) -> CallableBool:
        return CallableBool(method(self))

    return property(getter)
