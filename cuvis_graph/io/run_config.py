"""A run's ``config.yaml``: what it was trained with, written at the start of every attempt.

Layout::

    pipeline:     the pipeline file as composed (a run started from YAML), or the graph's
                  pipeline mapping (:func:`pipeline_summary`, a graph trained from Python):
                  name, nodes {name: {type, params, parent | parents}}, leaves, monitors
    training:     the resolved training configuration
    versions:     python and the libraries (cuvis-graph, torch, lightning, ...)
    git_commit:   of the cuvis-graph checkout, or null

Runs recorded by earlier versions of cuvis-graph held a graph trained from Python as
lists (``nodes: [{name, type, params, parents: {port: [labels]}}]``, ``leaves: [{name,
type, params, parents: label}]``, ``monitors: [{type, params}]``, with class names as
types); :func:`recorded_pipeline` reads those in today's layout, so that resuming such a
run compares like with like.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cuvis_graph.io.atomic import atomic_write_text
from cuvis_graph.io.plain import plain

__all__ = ["CONFIG_FILE", "PIPELINE_FILE", "library_versions", "git_commit", "pipeline_summary", "write_run_config",
           "write_pipeline_file", "recorded_pipeline"]

CONFIG_FILE = "config.yaml"
#: A run started from a pipeline file: that pipeline as composed, re-runnable as it is.
PIPELINE_FILE = "pipeline.yaml"


def library_versions() -> dict[str, str]:
    """``{"python": "3.11.9", "torch": ..., ...}`` of the installed distributions (looked up once
    per process: the libraries a process runs do not change while it runs)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("cuvis-graph", "torch", "lightning", "torchmetrics", "numpy", "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the package checkout, ``None`` when not a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pipeline_summary(graph: Any) -> dict[str, Any]:
    """The graph's pipeline mapping (used in ``config.yaml`` when no YAML spec is given): the
    same serializer as ``graph.to_yaml()`` (:func:`cuvis_graph.io.spec.writer.graph_spec`),
    with the class name and ``str`` standing in for what a pipeline file could not hold.
    Its ``params`` are every constructor parameter (defaults included)."""
    from cuvis_graph.io.spec.writer import graph_spec

    return graph_spec(graph, strict=False)


def write_run_config(run_dir: Path, training: Mapping[str, Any], pipeline: Mapping[str, Any]) -> Path:
    """``<run_dir>/config.yaml`` (atomically): pipeline, training config, versions, git commit."""
    data = {"pipeline": dict(pipeline), "training": dict(training), "versions": library_versions(),
            "git_commit": git_commit()}
    return atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(plain(data), sort_keys=False))


# -- records of earlier versions ---------------------------------------------------------------
def recorded_pipeline(recorded: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``pipeline`` section of a ``config.yaml`` in today's layout (see the module doc).

    A record in the earlier list layout is converted entry by entry: each node's wiring
    ``{port: [labels]}`` is written by the pipeline-file rule
    (:func:`~cuvis_graph.io.spec.writer.wiring_fields`) with the ports its class declares
    (found by the recorded class name among the registered and the defined node classes);
    a type is written by its registered name; empty ``params`` / ``leaves`` / ``monitors``
    are left out, as today's writer does. Monitors had no names then: the ``i``-th takes
    the name of the ``i``-th monitor of ``current`` (the pipeline being resumed) when that
    one has the same type, else ``<type in lower case>_<i>``. Any other record is returned
    as it is.
    """
    if not isinstance(recorded.get("nodes"), list):
        return dict(recorded)
    out = {k: v for k, v in recorded.items() if k not in ("nodes", "leaves", "monitors")}
    out["nodes"] = {}
    for entry in recorded["nodes"]:
        cls = _class_named(entry.get("type"))
        item = _component(entry, cls)
        labels = {str(port): list(refs) if isinstance(refs, list) else [refs]
                  for port, refs in dict(entry.get("parents") or {}).items()}
        item.update(_wiring(labels, cls))
        out["nodes"][str(entry.get("name"))] = item
    if recorded.get("leaves"):
        out["leaves"] = {str(e.get("name")): {**_component(e, _class_named(e.get("type"))), "parent": e.get("parents")}
                         for e in recorded["leaves"]}
    if recorded.get("monitors"):
        now = list(dict((current or {}).get("monitors") or {}).items())
        out["monitors"] = {}
        for i, entry in enumerate(recorded["monitors"]):
            item = _component(entry, _class_named(entry.get("type")))
            same = i < len(now) and isinstance(now[i][1], Mapping) and now[i][1].get("type") == item["type"]
            out["monitors"][now[i][0] if same else f"{str(entry.get('type')).lower()}_{i}"] = item
    return out


def _class_named(name: Any) -> type | None:
    """The class a record of an earlier version names by ``__name__``: a registered one,
    else a node, leaf or monitor class defined in this process; ``None`` when none is."""
    from cuvis_graph.core.leaves import LeafNode, MonitoringNode
    from cuvis_graph.core.node import Node
    from cuvis_graph.core.registry import registered

    if not isinstance(name, str):
        return None
    found = registered().get(name)
    if found is not None:
        return found
    todo: list[type] = [Node, LeafNode, MonitoringNode]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _component(entry: Mapping[str, Any], cls: type | None) -> dict[str, Any]:
    """``{type, params}`` of a list-layout entry (no ``params`` when empty)."""
    from cuvis_graph.core.registry import registered_name

    item: dict[str, Any] = {"type": (registered_name(cls) if cls is not None else None) or entry.get("type")}
    if entry.get("params"):
        item["params"] = entry["params"]
    return item


def _wiring(labels: dict[str, list[str]], cls: type | None) -> dict[str, Any]:
    from cuvis_graph.io.spec.writer import wiring_fields

    specs = getattr(cls, "INPUTS", None)
    if not isinstance(specs, Mapping):  # the class is gone: its one wired port taken as its first
        from cuvis_graph.core.node import PortSpec

        specs = {next(iter(labels)): PortSpec(())} if len(labels) == 1 else {}
    return wiring_fields(labels, specs)


def write_pipeline_file(run_dir: Path, pipeline: Mapping[str, Any]) -> Path:
    """``pipeline.yaml``: the composed pipeline file of a run started from YAML (``pipeline``
    as recorded in ``config.yaml``, without its command-line ``overrides``, which it holds)."""
    text = yaml.safe_dump({k: v for k, v in pipeline.items() if k != "overrides"}, sort_keys=False,
                          allow_unicode=True)
    return atomic_write_text(Path(run_dir) / PIPELINE_FILE, text)
