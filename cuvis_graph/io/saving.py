"""Saved models: ``Graph.save(dir)`` / ``Graph.load(dir)``.

A saved model is a directory of three plain files, no pickle and no code::

    pipeline.yaml          structure and parameters (nodes, leaves), through the registry
    weights.safetensors    state dicts of every node and leaf with state, keys ``<name>.<param>``
    meta.json              format / library / torch versions, channel count and wavelengths
                           the graph was trained on, per-node fit status, sinks, creation time,
                           the plugin modules its own types come from (``plugins``)

Writing is atomic (principle 10): the files go into a temporary sibling directory that is
put in place of the target only when complete (:func:`~cuvis_graph.io.output_paths.replace_dir`:
one atomic exchange on Linux), so a kill leaves the old model or the new one, never half of
one; where the exchange is unavailable and a kill falls between two renames, loading names
the complete sibling to rename back.

Loading is safe by default (principle 9): ``pipeline.yaml`` is read with the strict YAML
reader and every ``type`` / ``_target_`` is resolved through the registry *before* any
object is created or any module imported; a saved model cannot allowlist modules itself
(``allow_modules`` must come from the caller). Weights are read with safetensors only,
never ``torch.load`` / pickle. Monitors are side effects of a training run, not part of
the model, and are not saved.

Everything is checked at load, not at the first prediction (principle 13): every
``meta.json`` field's type, model files that are symbolic links (refused), weights that are
NaN/Inf (named with their count) or whose shape or dtype differs from what the graph holds.

This module writes and reads the folder; ``meta.json`` and its checks are
:mod:`cuvis_graph.io.model_meta`, the weights and their checks
:mod:`cuvis_graph.io.model_weights`, the channel count :mod:`cuvis_graph.io.model_channels`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.errors import CuvisGraphError, Problem
from cuvis_graph.io.atomic import fsync_file, temporary_sibling, write_synced
from cuvis_graph.io.model_channels import ChannelMismatchError, check_channels, infer_n_channels
from cuvis_graph.io.model_meta import (
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILES,
    PIPELINE_FILE,
    WEIGHTS_FILE,
    ModelFormatError,
    check_library_version,
    is_model_meta,
    library_version,
    read_meta,
)
from cuvis_graph.io.model_weights import graph_state, load_state, load_weights, probe
from cuvis_graph.io.output_paths import model_folder_of, refuse_link, replace_dir

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["save_graph", "load_graph", "ModelFormatError", "ChannelMismatchError"]

log = logging.getLogger(__name__)


# -- save ----------------------------------------------------------------------------------
def save_graph(graph: Graph, path: str | os.PathLike) -> Path:
    """Save ``graph`` into the directory ``path`` (created or atomically replaced); returns it.

    Writes ``pipeline.yaml`` (``graph.to_yaml()`` without monitors), ``weights.safetensors``
    (:func:`~cuvis_graph.io.model_weights.graph_state`) and ``meta.json``. An existing ``path`` is replaced only if it is
    empty or a saved model, and only after the new directory is complete.
    """
    from safetensors.torch import save_file

    target = Path(path)
    refuse_link(target, "cannot save the model to")
    if target.exists():
        if not target.is_dir():
            raise CuvisGraphError(f"cannot save the model to {target}: it exists and is not a directory")
        entries = {p.name for p in target.iterdir()}
        if entries and (entries - set(MODEL_FILES) or not is_model_meta(target / META_FILE)):
            raise CuvisGraphError(f"cannot save the model to {target}: the directory is not empty and is not a "
                                  f"saved model (only {', '.join(MODEL_FILES)} with a cuvis-graph {META_FILE}); "
                                  "refusing to replace it")
    outer = model_folder_of(target.parent)
    if outer is not None:
        raise CuvisGraphError(f"cannot save the model to {target}: it lies in the saved model folder {outer}; "
                              "choose a path outside it")
    pipeline_text = _pipeline_yaml(graph)  # fails early on unregistered types, before writing
    state = graph_state(graph)
    meta = _meta(graph)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    tmp.mkdir()
    try:
        write_synced(tmp / PIPELINE_FILE, pipeline_text.encode("utf-8"))
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "cuvis-graph-model",
                                                             "format_version": str(FORMAT_VERSION)})
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())  # safetensors writes it private; a model is shared
        fsync_file(tmp / WEIGHTS_FILE)
        # meta.json last: a folder holding it holds every file complete
        write_synced(tmp / META_FILE, (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode("utf-8"))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _meta(graph: Graph) -> dict[str, Any]:
    from cuvis_graph.core.compiler import compile_graph
    from cuvis_graph.io.plugins import plugins_of

    spec = graph.data_spec
    n_channels = infer_n_channels(graph)
    wavelengths = list(spec.wavelengths) if spec is not None and spec.wavelengths else None
    try:
        sinks = compile_graph(graph, DataSpec(n_channels=n_channels), with_leaves=False).sinks()
    except CuvisGraphError:
        sinks = []
    return {
        "format": "cuvis-graph-model",
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "torch_version": torch.__version__,
        "name": graph.name,
        "created_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "n_channels": n_channels,
        "wavelengths": wavelengths,
        "batch_keys": sorted(spec.batch_keys) if spec is not None else ["cube"],
        "sinks": sinks,
        "fitted": {name: bool(node.is_fitted) for name, node in graph.nodes.items()},
        "plugins": plugins_of([*graph.nodes.values(), *graph.leaves.values()]),
    }


def _pipeline_yaml(graph: Graph) -> str:
    from cuvis_graph.io.spec import graph_to_yaml

    data = yaml.safe_load(graph_to_yaml(graph, monitors=False))  # monitors: side effects of a run, not the model
    header = "# cuvis-graph saved model: structure and parameters (weights in weights.safetensors)\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)



def _pipeline_yaml(graph: Graph) -> str:
    from cuvis_graph.io.spec import graph_to_yaml

    data = yaml.safe_load(graph_to_yaml(graph, monitors=False))  # monitors: side effects of a run, not the model
    header = "# cuvis-graph saved model: structure and parameters (weights in weights.safetensors)\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- load ----------------------------------------------------------------------------------
def load_graph(path: str | os.PathLike, *, allow_modules: Iterable[str] = (), n_channels: int | None = None,
               strict_version: bool = False) -> Graph:
    """The graph saved in the directory ``path`` by :func:`save_graph`, in eval mode.

    Args:
        path: the model directory.
        allow_modules: modules whose classes ``_target_`` may name (besides the registry);
            a saved model can never allowlist modules itself.
        n_channels: the channel count of the data to be scored; checked against the model
            (:class:`ChannelMismatchError` explaining both counts).
        strict_version: refuse any library version difference (default: refuse another
            major version, warn on another minor version).

    Raises:
        ModelFormatError: missing files, unknown format, incompatible version, weights that
            are not safetensors or do not match the structure (the keys are named).
        SpecError: ``pipeline.yaml`` names an unregistered or non-allowlisted type; raised
            before anything is created or imported.
        MissingPluginError: a type from a plugin ``meta.json`` records is not registered;
            the message names the ``--plugin`` to pass (nothing is imported).
    """
    from cuvis_graph.io.plugins import check_plugins
    from cuvis_graph.io.spec import build_pipeline

    directory = Path(path)
    meta = read_meta(directory)
    check_library_version(meta, directory / META_FILE, strict_version)
    check_plugins(meta, str(directory))  # names the --plugin to pass; never imports one
    allow = list(allow_modules)
    config = _read_pipeline(directory / PIPELINE_FILE, allow)
    # classes are resolved through the registry for every entry, and problems raised, before
    # any constructor runs or any (allowlisted) module is imported
    graph = build_pipeline(config, str(directory / PIPELINE_FILE), allow, build_data=False, check=False).graph
    if meta.get("n_channels") or meta.get("wavelengths"):
        wl = meta.get("wavelengths")
        graph.data_spec = DataSpec(n_channels=meta.get("n_channels"),
                                   batch_keys=frozenset(meta.get("batch_keys") or ["cube"]),
                                   wavelengths=tuple(float(w) for w in wl) if wl else None)
    if n_channels is not None:
        check_channels(meta, n_channels, str(directory))
    weights = load_weights(directory / WEIGHTS_FILE)
    load_state(graph, weights, directory / WEIGHTS_FILE)
    for obj in [*graph.nodes.values(), *graph.leaves.values()]:
        obj.eval()
    if isinstance(meta.get("n_channels"), int):  # read_meta refused every other non-null value
        probe(graph, meta["n_channels"], directory / WEIGHTS_FILE)
    return graph


def _read_pipeline(file: Path, allow_modules: Iterable[str]) -> dict[str, Any]:
    from cuvis_graph.io.spec import SpecError, read_yaml

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFormatError(f"{file}: cannot read: {exc}") from None
    config = dict(read_yaml(text, str(file)))
    problems = []
    if "defaults" in config:
        problems.append(Problem("defaults", "a saved model is one self-contained file; config groups are refused"))
    allowed = set(allow_modules)
    for i, module in enumerate(config.get("allow_modules") or []):
        if module not in allowed:
            problems.append(Problem(f"allow_modules[{i}]", f"a saved model cannot allowlist module '{module}' "
                                                           f"itself; pass allow_modules=['{module}'] (or "
                                                           f"'--allow-module {module}') if you trust it"))
    if problems:
        raise SpecError(str(file), problems)
    config.pop("allow_modules", None)
    config.pop("monitors", None)
    return config
