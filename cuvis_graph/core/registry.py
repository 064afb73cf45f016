"""Name -> class registry: the only way pipeline YAML creates objects.

Built-in nodes, leaves, monitors and datamodules register themselves with
:func:`register`; users add their own classes the same way::

    from cuvis_graph import register

    @register
    class MyNode(Node): ...

in a file the command line imports with ``--plugin my_nodes.py`` (in Python:
:func:`cuvis_graph.io.plugins.load_plugin`, or a plain ``import``),
or from an installed package through an entry point in the group ``cuvis_graph.plugins``
(the entry point names a module, which registers its classes on import, or a class)::

    [project.entry-points."cuvis_graph.plugins"]
    my_nodes = "my_package.nodes"

**Safety** (principles 9 and 12). A pipeline names a class by its registered name
(``type: RXGlobal``) or by a dotted path (``_target_: cuvis_graph.nodes.RXGlobal``, as in
Hydra/cuvis.ai configs). :func:`resolve_target` checks the path by name before anything
is imported:

* every dotted segment is a plain identifier not starting with ``_`` (no ``__main__``,
  no private submodules) and the attribute is a public class name (``CapWords``);
* a registered class is matched against its module *without* importing anything;
* otherwise the module must equal or be under a module the user allowlisted: with
  :func:`allow_module`, the ``allow_modules=`` argument of the Python API, or
  ``--allow-module`` on the command line. A file the user reads (a pipeline, a saved
  model) can never allowlist a module itself. Only then is the module imported, and the
  object must be a node, leaf, monitor or datamodule class.

Modules that can run commands or code (``os``, ``subprocess``, ``builtins``...) are also
refused outright, but that denylist is a second line, not the defence.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from cuvis_graph.core.names import shorten
from cuvis_graph.errors import CuvisGraphError, did_you_mean

__all__ = [
    "register",
    "get_class",
    "registered",
    "registered_name",
    "resolve_target",
    "allow_module",
    "allowed_modules",
    "check_module_name",
    "kind_of",
    "UnknownTypeError",
    "UnsafeTargetError",
    "ENTRY_POINT_GROUP",
]

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

#: Entry-point group scanned for plugin modules or classes.
ENTRY_POINT_GROUP = "cuvis_graph.plugins"

#: Top-level modules that can never be allowlisted or instantiated from YAML.
DENIED_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "importlib", "imp", "runpy",
    "shutil", "socket", "pickle", "cPickle", "marshal", "shelve", "ctypes", "code", "codeop", "pty",
    "multiprocessing", "threading", "_thread", "signal", "pathlib", "io", "tempfile", "webbrowser",
    "asyncio", "pdb", "inspect", "gc", "types", "functools", "operator", "http", "urllib", "ftplib",
    "smtplib", "telnetlib", "xmlrpc", "platform", "pip", "setuptools", "sysconfig", "site",
})

_CLASSES: dict[str, type] = {}
_ALLOWED: set[str] = set()
_loaded = False


class UnknownTypeError(CuvisGraphError, KeyError):
    """A type name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnsafeTargetError(CuvisGraphError, ValueError):
    """A dotted ``_target_`` that is neither registered nor in an allowlisted module."""


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


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the built-ins
            log.warning("cuvis-graph plugin '%s' (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and obj not in _CLASSES.values():
            register(obj)


def _ensure_builtins() -> None:
    global _loaded
    import cuvis_graph.data  # noqa: F401
    import cuvis_graph.monitors  # noqa: F401
    import cuvis_graph.nodes  # noqa: F401

    if not _loaded:
        _loaded = True
        _load_entry_points()


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


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under (``None`` when it is not registered)."""
    _ensure_builtins()
    if _CLASSES.get(cls.__name__) is cls:
        return cls.__name__
    return next((k for k, c in _CLASSES.items() if c is cls), None)


def kind_of(cls: type) -> str | None:
    """``"node"``, ``"leaf"``, ``"monitor"``, ``"data"`` or ``None`` for other classes.

    ``"data"``: a :class:`~cuvis_graph.data.GraphDataModule` or a Lightning
    ``LightningDataModule`` (recognised by its bases' names, without importing Lightning).
    """
    from cuvis_graph.core.leaves import LeafNode, MonitoringNode
    from cuvis_graph.core.node import Node
    from cuvis_graph.data.datamodule import GraphDataModule

    if not isinstance(cls, type):
        return None
    for kind, base in (("node", Node), ("leaf", LeafNode), ("monitor", MonitoringNode),
                       ("data", GraphDataModule)):
        if issubclass(cls, base):
            return kind
    if any(c.__name__ == "LightningDataModule" and c.__module__.split(".")[0] in _LIGHTNING_PACKAGES
           for c in cls.__mro__):
        return "data"
    return None


#: top-level packages whose ``LightningDataModule`` subclasses are datamodules
_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")


# -- allowlist ----------------------------------------------------------------------------
def _segment_problem(path: str) -> str | None:
    """Why the dotted ``path`` is not made of public identifiers (``None``: it is)."""
    for segment in path.split("."):
        if not segment.isidentifier() or keyword.iskeyword(segment) or not segment.isascii():
            return f"'{shorten(segment)}' is not a plain identifier"
        if segment.startswith("_"):
            return f"'{shorten(segment)}' starts with '_': private modules and '__main__' are never imported"
    return None


def check_module_name(module: str) -> None:
    """Raise :class:`UnsafeTargetError` unless ``module`` may be allowlisted."""
    problem = _segment_problem(str(module))
    if problem:
        raise UnsafeTargetError(f"'{shorten(module)}' is not a dotted module name: {problem}")
    if module.split(".")[0] in DENIED_MODULES:
        raise UnsafeTargetError(f"module '{module}' can never be allowlisted: pipelines may not run "
                                "system, process or code-execution functions")


def allow_module(module: str) -> None:
    """Allow YAML ``_target_``s in ``module`` and its submodules (imported on use).

    Only node, leaf, monitor and datamodule classes can be created from it.
    """
    check_module_name(module)
    _ALLOWED.add(module)


def allowed_modules() -> frozenset[str]:
    """Modules allowlisted process-wide with :func:`allow_module`."""
    return frozenset(_ALLOWED)


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _how_to_register(target: str, module: str) -> str:
    return (f"register the class with @cuvis_graph.register (in a file passed with --plugin FILE.py, or an entry "
            f"point in group '{ENTRY_POINT_GROUP}') and write its name as 'type:', or allowlist its module with "
            f"'--allow-module {module}' on the command line (allow_modules=['{module}'] in Python)")


def resolve_target(target: str, allow: Iterable[str] = ()) -> type:
    """The class a dotted ``_target_`` designates, or :class:`UnsafeTargetError`.

    ``allow``: extra allowlisted modules (besides :func:`allowed_modules`). Nothing is
    imported unless the module is allowlisted.
    """
    target = str(target).strip()
    shown = shorten(target)
    problem = _segment_problem(target) if "." in target else "it has no module"
    if problem:
        raise UnsafeTargetError(f"_target_ '{shown}' is not a dotted path like 'package.module.ClassName': {problem}")
    module, _, attr = target.rpartition(".")
    if not attr[0].isupper():
        raise UnsafeTargetError(f"_target_ '{shown}' is refused: '{shorten(attr)}' is not a class name; pipelines "
                                "create only node, leaf, monitor and datamodule classes (CapWords names)")
    if module.split(".")[0] in DENIED_MODULES:
        raise UnsafeTargetError(f"_target_ '{shown}' is refused: pipelines create only registered node, "
                                f"leaf, monitor and datamodule classes, never functions of '{module}'")
    _ensure_builtins()
    for key, cls in _CLASSES.items():
        if attr in (key, cls.__name__) and _under(cls.__module__, [module]):
            return cls
    allowed = set(_ALLOWED)
    for m in allow:
        check_module_name(m)
        allowed.add(m)
    if not _under(module, allowed):
        hint = did_you_mean(attr, _CLASSES)
        raise UnsafeTargetError(f"_target_ '{shown}' is refused: it is not a registered class{hint} and module "
                                f"'{module}' is not allowlisted; {_how_to_register(target, module)}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise UnsafeTargetError(f"_target_ '{target}': cannot import allowlisted module '{module}': {exc}; for a "
                                f"file of your own, pass it with --plugin (e.g. --plugin {module.split('.')[0]}.py)") from None
    except AttributeError:
        raise UnsafeTargetError(f"_target_ '{target}': module '{module}' has no attribute '{attr}'") from None
    if not inspect.isclass(obj) or kind_of(obj) is None:
        raise UnsafeTargetError(f"_target_ '{target}' is refused: only node, leaf, monitor and datamodule "
                                f"classes can be created from a pipeline, got {type(obj).__name__}")
    return obj
