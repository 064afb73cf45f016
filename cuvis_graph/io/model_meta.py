"""``meta.json`` of a saved model: the format, its fields and their checks.

Fields: ``format`` (``"cuvis-graph-model"``), ``format_version`` (:data:`FORMAT_VERSION`),
``library_version``, ``torch_version``, ``name``, ``created_at``, ``n_channels`` (C or
null), ``wavelengths`` ([C] nm or null), ``batch_keys``, ``sinks``, ``fitted`` ({node:
bool}), ``plugins`` ([{module, types}]). :func:`read_meta` checks every field's type and
refuses a newer format; :func:`check_library_version` refuses another major version of
cuvis-graph (or any other version with ``strict``) and warns on another minor version.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.output_paths import interrupted_replacement

__all__ = ["FORMAT_VERSION", "PIPELINE_FILE", "WEIGHTS_FILE", "META_FILE", "MODEL_FILES", "ModelFormatError",
           "read_meta", "is_model_meta", "check_library_version", "library_version"]

#: Version of the saved-model layout; bumped on incompatible changes.
FORMAT_VERSION = 1
PIPELINE_FILE = "pipeline.yaml"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
MODEL_FILES = (PIPELINE_FILE, WEIGHTS_FILE, META_FILE)


class ModelFormatError(CuvisGraphError):
    """A model directory that cannot be loaded (missing files, bad format, version, weights)."""


def library_version() -> str:
    from cuvis_graph import __version__

    return __version__


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def is_model_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == "cuvis-graph-model"
    except (OSError, ValueError, AttributeError):
        return False


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of the model directory ``path``, with the format version checked."""
    directory = Path(path)
    if not directory.exists():
        recovery = interrupted_replacement(directory)
        raise ModelFormatError(f"{directory}: no such model directory" + (f"; {recovery}" if recovery else ""))
    if not directory.is_dir():
        raise ModelFormatError(f"{directory}: is a file, not a model directory (a saved model is a folder with "
                               f"{', '.join(MODEL_FILES)}, written by graph.save(dir))")
    for name in MODEL_FILES:
        if (directory / name).is_symlink():
            raise ModelFormatError(f"{directory / name}: is a symbolic link (to {os.readlink(directory / name)}); "
                                   "a saved model holds its own files: replace the link by a copy of the file")
    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if missing:
        raise ModelFormatError(f"{directory}: not a saved cuvis-graph model: missing {', '.join(missing)} "
                               "(save one with graph.save(dir))")
    file = directory / META_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{file}: cannot read: not valid JSON ({exc}); restore it or save the model "
                               "again") from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{file}: expected a JSON object with the model's fields, got a "
                               f"{type(meta).__name__}")
    version = meta.get("format_version")
    if not _is_int(version):
        raise ModelFormatError(f"{file}: format_version: missing or not an integer (got {_show(version)})")
    if version > FORMAT_VERSION:
        raise ModelFormatError(f"{file}: format_version {version} is newer than this cuvis-graph "
                               f"({library_version()}) reads ({FORMAT_VERSION}); upgrade cuvis-graph")
    if version < 1:
        raise ModelFormatError(f"{file}: format_version {version} is not a valid model format")
    problems = _meta_problems(meta)
    if problems:
        raise ModelFormatError(f"{file}: {'; '.join(problems)}; restore the file or save the model again")
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _meta_problems(meta: Mapping[str, Any]) -> list[str]:
    """Every ``meta.json`` field of the wrong type or value, each as ``"field: expected ..., got ..."``."""
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    problems = []
    if meta.get("format") != "cuvis-graph-model":
        problems.append(f"format: expected 'cuvis-graph-model', got {_show(meta.get('format'))}")
    if not isinstance(meta.get("library_version"), str):
        problems.append(f"library_version: expected a version string, got {_show(meta.get('library_version'))}")
    n = meta.get("n_channels")
    if n is not None and not (_is_int(n) and n > 0):
        problems.append(f"n_channels: expected a positive integer or null, got {_show(n)}")
    wl = meta.get("wavelengths")
    if wl is not None:
        if not (isinstance(wl, list) and wl and all((_is_int(w) or isinstance(w, float)) and math.isfinite(w)
                                                  for w in wl)):
            problems.append(f"wavelengths: expected a list of finite numbers (nm) or null, got {_show(wl)}")
        elif _is_int(n) and len(wl) != n:
            problems.append(f"wavelengths: {len(wl)} values for n_channels {n}")
    for field, check, expected in (("batch_keys", strings, "a list of strings"),
                                   ("sinks", strings, "a list of node names"),
                                   ("name", lambda v: isinstance(v, str), "a string"),
                                   ("fitted", lambda v: isinstance(v, dict) and all(isinstance(x, bool)
                                                                                    for x in v.values()),
                                    "a mapping of node name to true/false")):
        if meta.get(field) is not None and not check(meta[field]):
            problems.append(f"{field}: expected {expected}, got {_show(meta[field])}")
    plugins = meta.get("plugins")
    if plugins is not None and not (isinstance(plugins, list) and all(
            isinstance(p, dict) and isinstance(p.get("module"), str) and strings(p.get("types")) for p in plugins)):
        problems.append(f"plugins: expected a list of {{module: name, types: [names]}}, got {_show(plugins)}")
    return problems


def check_library_version(meta: Mapping[str, Any], file: Path, strict: bool) -> None:
    saved = str(meta.get("library_version") or "")
    current = library_version()
    if not saved:
        raise ModelFormatError(f"{file}: library_version: missing")
    if saved == current:
        return
    s, c = _version_tuple(saved), _version_tuple(current)
    if strict:
        raise ModelFormatError(f"{file}: saved with cuvis-graph {saved}, this is {current} (strict_version=True)")
    if s[0] != c[0]:
        raise ModelFormatError(f"{file}: saved with cuvis-graph {saved}, incompatible with this major version "
                               f"{current}; load it with cuvis-graph {s[0]}.x")
    if s[:2] != c[:2]:
        warnings.warn(f"{file}: saved with cuvis-graph {saved}, loading with {current}", UserWarning, stacklevel=3)
