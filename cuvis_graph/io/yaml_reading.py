"""The one bounded YAML reader: pipeline files, config-group files, YAML text, saved models.

A file the user reads must not be able to hang, crash or run anything (principle 12).
Before anything is composed, one pass over the parser's events (``yaml.parse``, which is
not recursive) checks:

* size: at most :data:`MAX_BYTES` bytes;
* depth: at most :data:`MAX_DEPTH` nested lists/mappings, counting what aliases expand to;
* aliases: the document expanded (every alias replaced by its anchor's content) has at
  most :data:`MAX_NODES` values. Each anchor's expanded size is computed once
  (memoised), so ``9`` levels of ``9`` aliases cost 81 additions, not ``9**9`` copies;
* tags: only the standard ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!map``, ``!!seq``); ``!!python/...`` and custom tags are refused;
* keys: a mapping key is a name of at most :data:`MAX_KEY_LENGTH` characters.

Then the document is composed and constructed with PyYAML's safe loader; a key given
twice is refused. Every refusal is a :class:`YAMLReadError` naming the file and line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cuvis_graph.core.names import shorten
from cuvis_graph.errors import ConfigError

__all__ = ["read_yaml_text", "read_yaml_file", "YAMLReadError", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES",
           "MAX_KEY_LENGTH"]

#: Largest file or text read (bytes).
MAX_BYTES = 1_000_000
#: Deepest nesting of lists/mappings, aliases expanded.
MAX_DEPTH = 64
#: Most values (scalars, lists, mappings) in a document, aliases expanded.
MAX_NODES = 200_000
#: Longest mapping key (characters).
MAX_KEY_LENGTH = 256

_STANDARD_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq"))
_DUPLICATE_WHAT = {"nodes": "node name", "leaves": "leaf name", "monitors": "monitor name"}


class YAMLReadError(ConfigError):
    """A YAML file or text that cannot be read safely; the message names the file and line."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source, self.where, self.detail = source, where, message
        super().__init__(f"{source}: {where}: {message}")


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<file>"


def _did_you_mean(path: Path) -> str:
    """``"; did you mean pipelines/x.yaml?"`` for a missing ``x`` (or ``x.yaml``) whose likely
    spelling exists: with ``.yaml`` added, or in ``pipelines/`` of the working directory."""
    names = [path.name] if path.suffix in (".yaml", ".yml") else [path.name + ".yaml", path.name]
    folders = [path.parent] + ([Path("pipelines")] if path.parent == Path(".") else [])
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate != path and candidate.is_file():
                return f"; did you mean {candidate}?"
    return ""


def read_yaml_file(path: str | os.PathLike, source: str | None = None) -> Any:
    """Read ``path`` as UTF-8 YAML within the limits; ``source`` labels messages (default: the path)."""
    path = Path(path)
    label = source or str(path)
    if path.is_dir():
        raise YAMLReadError(label, "<file>", "is a directory; give a pipeline .yaml file inside it")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise YAMLReadError(label, "<file>", f"the file has {size} bytes, more than the {MAX_BYTES} a "
                                                 "pipeline may have; put data in data files, not in the YAML")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YAMLReadError(label, "<file>", "no such file" + _did_you_mean(path)) from None
    except OSError as exc:
        raise YAMLReadError(label, "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YAMLReadError(label, f"line {line}", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                                   f"{exc.start}); is this a binary file? Save it as UTF-8") from None
    return read_yaml_text(text, label)


def read_yaml_text(text: str, source: str) -> Any:
    """Parse ``text`` within the limits; ``None`` for an empty document."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YAMLReadError(source, "<file>", f"the YAML has {size} bytes, more than the {MAX_BYTES} a pipeline "
                                              "may have; put data in data files, not in the YAML")
    try:
        _check_events(text, source)
        loader = yaml.SafeLoader(text)
        try:
            tree = loader.get_single_node()
            if tree is None:
                return None
            _check_duplicates(tree, [], source)
            return loader.construct_document(tree)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YAMLReadError(source, f"line {line}", f"character #x{code:04x} is not allowed in YAML text; "
                                                    "is this a binary file?") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise YAMLReadError(source, "<file>", f"a value cannot be read: {shorten(exc, 120)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem}" + (f" ({context})" if context else "")
        raise YAMLReadError(source, _line(mark), f"YAML syntax error: {shorten(detail, 200)}") from None


def _check_events(text: str, source: str) -> None:
    """Depth, alias expansion, tags and key lengths, from the event stream (nothing composed)."""
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) once expanded
    stack: list[list[Any]] = []  # open collections: [values, height, anchor, is_mapping, n_children]
    total = 0

    def close(values: int, height: int, anchor: str | None, event: Any) -> None:
        nonlocal total
        if anchor is not None:
            sizes[anchor] = (values, height)
        if not stack:
            total += values
        else:
            parent = stack[-1]
            parent[0] += values
            parent[1] = max(parent[1], height + 1)
            parent[4] += 1
        depth = len(stack) + height
        if depth > MAX_DEPTH:
            raise YAMLReadError(source, _line(event.start_mark), f"nested {depth} levels deep, more than the "
                                                                 f"{MAX_DEPTH} a pipeline may have")
        if total + sum(s[0] for s in stack) > MAX_NODES:
            raise YAMLReadError(source, _line(event.start_mark), f"the document expands to more than {MAX_NODES} "
                                                                 "values (aliases '*name' repeat their anchor's "
                                                                 "content); write the values out or use fewer aliases")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _STANDARD_TAGS and tag != "!":
            raise YAMLReadError(source, _line(event.start_mark), f"tag '{shorten(tag, 60)}' is refused: pipelines "
                                                                 "are plain YAML (strings, numbers, lists, mappings)")
        if isinstance(event, yaml.ScalarEvent):
            if stack and stack[-1][3] and stack[-1][4] % 2 == 0 and len(event.value) > MAX_KEY_LENGTH:
                raise YAMLReadError(source, _line(event.start_mark),
                                    f"a key of {len(event.value)} characters ('{shorten(event.value, 60)}'); "
                                    f"names and keys have at most {MAX_KEY_LENGTH}")
            close(1, 0, event.anchor, event)
        elif isinstance(event, yaml.AliasEvent):
            values, height = sizes.get(event.anchor, (1, 0))  # unknown anchors fail in the composer
            close(values, height, None, event)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            stack.append([1, 0, event.anchor, isinstance(event, yaml.MappingStartEvent), 0])
            if len(stack) > MAX_DEPTH:
                raise YAMLReadError(source, _line(event.start_mark), f"nested more than {MAX_DEPTH} levels deep, "
                                                                     f"the most a pipeline may have")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            values, height, anchor, _, _ = stack.pop()
            close(values, height, anchor, event)


def _check_duplicates(node: yaml.Node, path: list[str], source: str) -> None:
    """Refuse a key given twice in one mapping (PyYAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    where = ".".join(path + [shorten(str(key), 60)])
                    what = _DUPLICATE_WHAT.get(".".join(path), "key")
                    raise YAMLReadError(source, where, f"duplicate {what} '{shorten(str(key), 60)}' (line {line}; "
                                                       f"first defined at line {seen[key]}): every name must be unique")
                seen[key] = line
            _check_duplicates(value_node, path + [str(key)], source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, path[:-1] + [f"{path[-1]}[{i}]"] if path else [f"[{i}]"], source)
