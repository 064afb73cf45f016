"""Exceptions of cuvis-graph. Every message names the place (node, port, leaf, YAML field)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CuvisGraphError", "CompileError", "ConfigError", "NotFittedError", "Problem", "did_you_mean"]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class CuvisGraphError(Exception):
    """Base class of all errors raised by cuvis-graph."""


@dataclass(frozen=True)
class Problem:
    """One validation finding: where it is (``node 'rx' port 'x'``) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class CompileError(CuvisGraphError):
    """All problems found while compiling a graph, reported together."""

    def __init__(self, graph_name: str, problems: list[Problem]) -> None:
        self.graph_name = graph_name
        self.problems = list(problems)
        n = len(self.problems)
        head = f"graph '{graph_name}': {n} problem{'s' if n != 1 else ''} found"
        body = "\n".join(f"  {i}. {p}" for i, p in enumerate(self.problems, 1))
        super().__init__(f"{head}\n{body}")


class ConfigError(CuvisGraphError):
    """An invalid configuration value; the message starts with the field path."""


class NotFittedError(CuvisGraphError):
    """A statistical node was run before its statistics were initialised."""
