"""The one rule for names that become paths: pipeline, node, leaf and monitor names.

A pipeline's name is a folder of the run directory (``runs/<name>/<stamp>/``); node and
leaf names name artifacts and log keys. A name therefore must stay inside its folder:
letters, digits, ``_``, ``-`` and ``.``, at most :data:`MAX_NAME_LENGTH` characters, not
``.``/``..`` and not starting with ``.`` (no hidden files, no parent folder). No
separators (``/``, ``\\``), spaces or control characters. Node and leaf names take no ``.``
at all (``dots=False``): ``parent: "norm.out"`` reads as node ``norm``, port ``out``.
"""

from __future__ import annotations

import re

from cuvis_graph.errors import ConfigError

__all__ = ["MAX_NAME_LENGTH", "InvalidNameError", "name_problem", "check_name", "name_from", "shorten"]

#: Longest name (characters).
MAX_NAME_LENGTH = 100

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class InvalidNameError(ConfigError, ValueError):
    """A name that could leave its folder or is too long; the message names the field."""


def shorten(text: object, limit: int = 60) -> str:
    """``text`` for a message: control characters escaped, cut to ``limit`` characters plus ``…``."""
    s = str(text)
    cut = s[:limit]
    cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + "…" if len(s) > limit else cut


def name_problem(name: object, dots: bool = True) -> str | None:
    """Why ``name`` is not a safe name (``None``: it is); ``dots=False`` for node and leaf names."""
    if not isinstance(name, str):
        return f"a name is a string, got {type(name).__name__}"
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a name of {len(name)} characters ('{shorten(name)}'); names have at most {MAX_NAME_LENGTH}"
    if name.startswith("."):
        return (f"'{shorten(name)}' starts with '.': names become folder and file names, which must stay "
                "inside their folder and not be hidden")
    if not dots and "." in name:
        return (f"'{shorten(name)}' contains '.': node and leaf names cannot, since 'name.port' names a "
                "node's port; use '_' or '-'")
    if not _NAME.fullmatch(name):
        bad = next(c for c in name if not _NAME.fullmatch(c))
        return (f"'{shorten(name)}' contains {repr(bad)}: names become folder and file names; use letters, "
                "digits, '_', '-' and '.'")
    return None


def check_name(name: object, where: str, dots: bool = True) -> str:
    """``name`` when it is safe; :class:`InvalidNameError` starting with ``where`` otherwise."""
    problem = name_problem(name, dots)
    if problem is not None:
        raise InvalidNameError(f"{where}: {problem}")
    return name  # type: ignore[return-value]


def name_from(text: str, default: str = "pipeline") -> str:
    """A safe name derived from ``text`` (e.g. a file's stem): other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")[:MAX_NAME_LENGTH]
    return name or default
