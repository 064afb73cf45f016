"""Name -> class registry: the only way pipeline YAML creates objects.

Built-in nodes, leaves, monitors and datamodules register themselves with
:func:`register`; users add their own classes the same way::

    from cuvis_graph import register

    @register
    class MyNode(Node): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import CuvisGraphError, did_you_mean

__all__ = ["register", "get_class", "registered", "UnknownTypeError"]

T = TypeVar("T", bound=type)

_CLASSES: dict[str, type] = {}


class UnknownTypeError(CuvisGraphError, KeyError):
    """A type name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Register ``cls`` under ``name`` (default: the class name). Usable as a decorator."""

    def add(c: T) -> T:
        key = name or c.__name__
        existing = _CLASSES.get(key)
        if existing is not None and existing is not c and (
            existing.__module__, existing.__qualname__) != (c.__module__, c.__qualname__):
            raise CuvisGraphError(f"type name '{key}' is already registered for {existing.__module__}.{existing.__qualname__}")
        _CLASSES[key] = c
        return c

    return add(cls) if cls is not None else add


def _ensure_builtins() -> None:
    import cuvis_graph.data  # noqa: F401
    import cuvis_graph.monitors  # noqa: F401
    import cuvis_graph.nodes  # noqa: F401


def get_class(name: str) -> type:
    """The class registered as ``name``; :class:`UnknownTypeError` with a hint otherwise."""
    _ensure_builtins()
    try:
        return _CLASSES[name]
    except KeyError:
        raise UnknownTypeError(f"unknown type '{name}'{did_you_mean(name, _CLASSES)}; "
                               "register custom classes with @cuvis_graph.register") from None


def registered() -> dict[str, type]:
    """A copy of the registry, built-ins included."""
    _ensure_builtins()
    return dict(_CLASSES)
