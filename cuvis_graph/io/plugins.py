"""Plugins: the user's own registered classes, imported only because the user asked.

A plugin is a Python file (``my_nodes.py``) or an importable module (``my_package.nodes``)
whose classes register themselves with :func:`cuvis_graph.register` when it is imported;
pipelines then name them by type (``type: MyNode``). Plugins come from three places only:
``--plugin`` on the command line, :func:`load_plugin` (or a plain ``import``) in Python,
and installed entry points (group ``cuvis_graph.plugins``). A pipeline file or a saved
model can never name one (principles 9 and 12).

A saved model records which plugin modules its types come from (``meta.json``
``plugins``); loading it without them raises :class:`MissingPluginError` naming the
``--plugin`` to pass, and imports nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cuvis_graph.core import registry
from cuvis_graph.core.names import shorten
from cuvis_graph.errors import CuvisGraphError

__all__ = ["PluginError", "MissingPluginError", "load_plugin", "plugins_of", "check_plugins"]


class PluginError(CuvisGraphError):
    """A plugin that cannot be imported; the message names its file or module."""


class MissingPluginError(CuvisGraphError):
    """A saved model whose types come from a plugin that is not loaded."""


def load_plugin(plugin: str | os.PathLike) -> ModuleType:
    """Import ``plugin`` so that its ``@register``-ed classes can be named in pipelines.

    ``plugin`` is a ``.py`` file, imported by path as the module named after its stem
    (``my_nodes.py`` -> ``my_nodes``; a stem that would shadow an installed module or a
    module already imported from another file is refused), or a dotted module name,
    imported normally with the working directory on the import path for that import.
    Loading the same file again returns the module already imported.

    Raises:
        PluginError: a missing file, a syntax error (with its line) or an exception while
            importing, naming the plugin.
    """
    text = os.fspath(plugin)
    registry.registered()  # built-ins first, so a plugin reusing a built-in name fails at its own import
    if text.endswith(".py") or "/" in text or os.sep in text:
        return _load_file(Path(text).expanduser(), text)
    return _load_module(text)


def _load_file(path: Path, shown: str) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin {shown}: no such file" if not path.exists() else f"plugin {shown}: not a file")
    if path.suffix != ".py":
        raise PluginError(f"plugin {shown}: expected a Python file (.py) or a dotted module name")
    name = path.stem
    if not name.isidentifier() or name.startswith("_") or not name.isascii():
        raise PluginError(f"plugin {shown}: its name becomes the module name '{shorten(name)}', which is not a "
                          "plain identifier; rename the file (letters, digits, '_'), e.g. my_nodes.py")
    real = path.resolve()
    loaded = sys.modules.get(name)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        if file and Path(file).resolve() == real:
            return loaded
        raise PluginError(f"plugin {shown}: its module name '{name}' is already imported from "
                          f"{file or 'the interpreter'}; rename the plugin file")
    other = _installed_origin(name)
    if other is not None and other != str(real):
        raise PluginError(f"plugin {shown}: its module name '{name}' would shadow the installed module "
                          f"'{name}' ({other}); rename the plugin file")
    spec = importlib.util.spec_from_file_location(name, real)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        _forget(name)
        if not isinstance(exc, Exception):
            raise
        raise PluginError(_failure(shown, exc, str(real))) from exc
    return module


def _installed_origin(name: str) -> str | None:
    """Where ``import name`` would find a module now (a resolved file, ``'built-in'``), else ``None``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = spec.origin if spec.has_location and spec.origin else None
    return str(Path(origin).resolve()) if origin else str(spec.origin or "a namespace package")


def _load_module(name: str) -> ModuleType:
    problem = registry._segment_problem(name)
    if problem:
        raise PluginError(f"plugin '{shorten(name)}': expected a Python file (.py) or a dotted module name: "
                          f"{problem}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # after the installed packages: a file here never shadows them
        sys.path.append(cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise PluginError(f"plugin {name}: no module named '{exc.name}' in the working directory or the "
                              f"installed packages; pass the file (--plugin path/to/{name.rsplit('.', 1)[-1]}.py) "
                              "or install it") from None
        _forget(name)
        raise PluginError(_failure(name, exc)) from exc
    except Exception as exc:
        _forget(name)
        raise PluginError(_failure(name, exc)) from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _forget(module: str) -> None:
    """Drop a half-imported plugin: its module and the classes it registered before failing."""
    sys.modules.pop(module, None)
    for key, cls in list(registry._CLASSES.items()):
        if registry._under(cls.__module__, [module]):
            del registry._CLASSES[key]


def _failure(shown: str, exc: Exception, file: str | None = None) -> str:
    """One line: the plugin, what went wrong and where (the plugin's line, else the last frame)."""
    if isinstance(exc, SyntaxError):
        where = "" if exc.filename == file else f" in {exc.filename}"
        return f"plugin {shown}: syntax error{where} at line {exc.lineno}: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    own = [f for f in frames if f.filename == file]
    if own:
        where = f" (line {own[-1].lineno})"
    else:
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"plugin {shown}: importing it raised {type(exc).__name__}{': ' + message if message else ''}{where}"


# -- saved models ------------------------------------------------------------------------------
def _entry_point_modules() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.module for ep in entry_points(group=registry.ENTRY_POINT_GROUP)]


def plugins_of(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """``[{"module": ..., "types": [...]}]``: the registered types of ``objects`` whose class
    lives outside cuvis_graph and outside installed entry points, by module."""
    builtin = ["cuvis_graph", *_entry_point_modules()]
    by_module: dict[str, set[str]] = {}
    for obj in objects:
        cls = type(obj)
        name = registry.registered_name(cls)
        if name is not None and not registry._under(cls.__module__, builtin):
            by_module.setdefault(cls.__module__, set()).add(name)
    return [{"module": m, "types": sorted(t)} for m, t in sorted(by_module.items())]


def _flag(module: str) -> str:
    return f"--plugin {module}" if "." in module else f"--plugin {module}.py"


def check_plugins(meta: Mapping[str, Any], model: str) -> None:
    """Raise :class:`MissingPluginError` when a plugin type ``meta`` records is not registered."""
    known = registry.registered()
    missing = [(str(e["module"]), [t for t in e["types"] if t not in known]) for e in meta.get("plugins") or []]
    missing = [(m, types) for m, types in missing if types]
    if not missing:
        return
    needs = " and ".join(f"type{'s' * (len(types) > 1)} {', '.join(repr(shorten(t)) for t in types)} from plugin "
                         f"module '{shorten(m)}'" for m, types in missing)
    scripts = [m for m, _ in missing if registry._segment_problem(m)]
    if scripts:  # e.g. '__main__': registered by a script, not an importable module
        hint = ("define the classes (run the code registering them) before loading; on the command line put them "
                "in a file and pass --plugin FILE.py")
    else:
        flags = " ".join(_flag(m) for m, _ in missing)
        hint = f"pass {flags} (or install {'it' if len(missing) == 1 else 'them'})"
    raise MissingPluginError(f"model {model} needs {needs}: {hint}")
