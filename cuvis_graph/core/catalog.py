"""The registry as a catalog: ports, parameters (type, default) and summary of every type.

Used by ``cuvis-graph nodes [--markdown]``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from cuvis_graph.core.registry import kind_of, registered

__all__ = ["Entry", "catalog", "catalog_text", "catalog_markdown"]

_SECTIONS = (("node", "Nodes"), ("leaf", "Leaves (losses, metrics, visualizations)"), ("monitor", "Monitors"),
             ("data", "Datamodules"))


@dataclass
class Entry:
    """One registered type, described."""

    name: str
    kind: str
    role: str
    summary: str
    module: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    params: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, default or "required")
    notes: list[str] = field(default_factory=list)


def _dims(dims: tuple) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _port(name: str, spec: Any) -> str:
    flags = [f for f, on in (("optional", spec.optional), ("variadic", spec.variadic)) if on]
    if spec.batch_key:
        flags.append(f"default batch.{spec.batch_key}")
    text = f"{name} {_dims(spec.dims)}"
    return text + (f" ({', '.join(flags)})" if flags else "")


def _annotation(p: inspect.Parameter) -> str:
    ann = p.annotation
    if ann is inspect.Parameter.empty:
        return "any"
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def _role(cls: type, kind: str) -> str:
    if kind == "leaf":
        from cuvis_graph.core.leaves import LossNode, MetricNode, VisualizationNode

        for role, base in (("loss", LossNode), ("metric", MetricNode), ("visualization", VisualizationNode)):
            if issubclass(cls, base):
                return role
    if kind == "node":
        return "statistical" if getattr(cls, "statistical", False) else "node"
    return kind


def _label_parameter(cls: type) -> str:
    """Which constructor argument names the labels, and its default (``batch.<key>``)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    for arg in ("label_source", "target"):
        if arg in params and isinstance(params[arg].default, str):
            return f"{arg}, default batch.{params[arg].default}"
    return "label_source, default batch.mask"


def _describe(name: str, cls: type) -> Entry:
    kind = kind_of(cls) or "other"
    doc = inspect.getdoc(cls) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else ""
    entry = Entry(name, kind, _role(cls, kind), summary, cls.__module__)
    if kind == "node":
        entry.inputs = [_port(n, s) for n, s in getattr(cls, "INPUTS", {}).items()]
        entry.outputs = [_port(n, s) for n, s in getattr(cls, "OUTPUTS", {}).items()]
    if kind == "leaf":
        types = getattr(cls, "compatible_parent_types", ())
        if types:
            entry.notes.append("parent: " + " | ".join(t.__name__ for t in types))
        if getattr(cls, "needs_labels", False):
            entry.notes.append(f"needs labels ({_label_parameter(cls)})")
        rank = getattr(cls, "parent_output_rank", None)
        if rank is not None:
            entry.notes.append(f"parent output rank {rank}")
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    for p in (signature.parameters.values() if signature else []):
        if p.name in ("self", "name") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
        entry.params.append((p.name, _annotation(p), default))
    return entry


def catalog() -> list[Entry]:
    """Every registered type, grouped by kind then sorted by name."""
    order = {k: i for i, (k, _) in enumerate(_SECTIONS)}
    entries = [_describe(n, c) for n, c in registered().items()]
    return sorted(entries, key=lambda e: (order.get(e.kind, 99), e.name))


def catalog_text() -> str:
    lines: list[str] = []
    entries = catalog()
    for kind, title in _SECTIONS:
        group = [e for e in entries if e.kind == kind]
        if not group:
            continue
        lines += [title.upper(), ""]
        for e in group:
            role = f" [{e.role}]" if e.role not in (kind, "node") else ""
            lines.append(f"  {e.name}{role} - {e.summary.replace('``', '')}")
            if e.inputs:
                lines.append(f"      inputs:  {'; '.join(e.inputs)}")
            if e.outputs:
                lines.append(f"      outputs: {'; '.join(e.outputs)}")
            for note in e.notes:
                lines.append(f"      {note}")
            if e.params:
                lines.append("      params:  " + ", ".join(f"{n}: {t} = {d}" if d != "required" else f"{n}: {t} (required)"
                                                       for n, t, d in e.params))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def catalog_markdown() -> str:
    lines = ["# cuvis-graph catalog", "", "Registered types (`cuvis-graph nodes --markdown`). Use the name as "
             "`type:` in a pipeline.", ""]
    entries = catalog()
    for kind, title in _SECTIONS:
        group = [e for e in entries if e.kind == kind]
        if not group:
            continue
        lines += [f"## {title}", ""]
        for e in group:
            lines += [f"### `{e.name}`" + (f" ({e.role})" if e.role not in (kind, "node") else ""), "", e.summary, ""]
            if e.inputs or e.outputs:
                lines.append("- **inputs**: " + (", ".join(f"`{p}`" for p in e.inputs) or "none"))
                lines.append("- **outputs**: " + (", ".join(f"`{p}`" for p in e.outputs) or "none"))
            for note in e.notes:
                lines.append(f"- {note}")
            if e.inputs or e.outputs or e.notes:
                lines.append("")
            if e.params:
                lines += ["| parameter | type | default |", "|---|---|---|"]
                lines += [f"| `{n}` | `{_md(t)}` | `{_md(d)}` |" for n, t, d in e.params]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
