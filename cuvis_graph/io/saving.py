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
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.errors import CuvisGraphError, Problem
from cuvis_graph.io.output_paths import (
    interrupted_replacement,
    model_folder_of,
    refuse_link,
    replace_dir,
    temporary_sibling,
)

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = [
    "FORMAT_VERSION",
    "PIPELINE_FILE",
    "WEIGHTS_FILE",
    "META_FILE",
    "ModelFormatError",
    "ChannelMismatchError",
    "save_graph",
    "load_graph",
    "read_meta",
    "check_channels",
    "infer_n_channels",
    "graph_state",
]

log = logging.getLogger(__name__)

#: Version of the saved-model layout; bumped on incompatible changes.
FORMAT_VERSION = 1
PIPELINE_FILE = "pipeline.yaml"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_MODEL_FILES = (PIPELINE_FILE, WEIGHTS_FILE, META_FILE)


class ModelFormatError(CuvisGraphError):
    """A model directory that cannot be loaded (missing files, bad format, version, weights)."""


class ChannelMismatchError(CuvisGraphError):
    """Input data whose channel count differs from the one the model was trained on."""


# -- helpers ----------------------------------------------------------------------------------
def _library_version() -> str:
    from cuvis_graph import __version__

    return __version__


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def graph_state(graph: Graph) -> dict[str, torch.Tensor]:
    """``{"<node or leaf name>.<param>": tensor}`` over every node and leaf with state.

    Tensors are detached, moved to the CPU, made contiguous and cloned (safetensors refuses
    tensors that share memory, e.g. tied or aliased buffers).
    """
    state: dict[str, torch.Tensor] = {}
    for name, obj in [*graph.nodes.items(), *graph.leaves.items()]:
        for key, tensor in obj.state_dict().items():
            state[f"{name}.{key}"] = tensor.detach().to("cpu").contiguous().clone()
    return state


def infer_n_channels(graph: Graph) -> int | None:
    """The input channel count C of ``graph``: its ``data_spec``, else (best effort) the
    size a fitted node reading ``batch.cube`` has taken (an ``n_channels`` attribute or a
    per-channel ``mean``/``min`` buffer ``[C]``); ``None`` when unknown."""
    if graph.data_spec is not None and graph.data_spec.n_channels:
        return int(graph.data_spec.n_channels)
    from cuvis_graph.core.compiler import compile_graph

    try:
        plan = compile_graph(graph, DataSpec(n_channels=None), with_leaves=False)
    except CuvisGraphError:
        return None
    for step in plan.steps:
        sources = [s for src in step.inputs.values() for s in (src if isinstance(src, list) else [src])]
        if not any(s.kind == "batch" and s.key == "cube" for s in sources):
            continue
        n = getattr(step.node, "n_channels", None)
        if isinstance(n, int) and n > 0:
            return n
        if getattr(step.node, "per_channel", True):
            for buffer in ("mean", "min"):
                t = getattr(step.node, buffer, None)
                if isinstance(t, torch.Tensor) and t.ndim == 1 and t.numel() > 0:
                    return int(t.numel())
    return None


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
        "library_version": _library_version(),
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


def _is_model_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == "cuvis-graph-model"
    except (OSError, ValueError, AttributeError):
        return False


# -- save ----------------------------------------------------------------------------------
def save_graph(graph: Graph, path: str | os.PathLike) -> Path:
    """Save ``graph`` into the directory ``path`` (created or atomically replaced); returns it.

    Writes ``pipeline.yaml`` (``graph.to_yaml()`` without monitors), ``weights.safetensors``
    (:func:`graph_state`) and ``meta.json``. An existing ``path`` is replaced only if it is
    empty or a saved model, and only after the new directory is complete.
    """
    from safetensors.torch import save_file

    target = Path(path)
    refuse_link(target, "cannot save the model to")
    if target.exists():
        if not target.is_dir():
            raise CuvisGraphError(f"cannot save the model to {target}: it exists and is not a directory")
        entries = {p.name for p in target.iterdir()}
        if entries and (entries - set(_MODEL_FILES) or not _is_model_meta(target / META_FILE)):
            raise CuvisGraphError(f"cannot save the model to {target}: the directory is not empty and is not a "
                                  f"saved model (only {', '.join(_MODEL_FILES)} with a cuvis-graph {META_FILE}); "
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
        _fsync_write(tmp / PIPELINE_FILE, pipeline_text.encode("utf-8"))
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "cuvis-graph-model",
                                                             "format_version": str(FORMAT_VERSION)})
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())  # safetensors writes it private; a model is shared
        # meta.json last: a folder holding it holds every file complete
        _fsync_write(tmp / META_FILE, (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode("utf-8"))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- load ----------------------------------------------------------------------------------
def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of the model directory ``path``, with the format version checked."""
    directory = Path(path)
    if not directory.exists():
        recovery = interrupted_replacement(directory)
        raise ModelFormatError(f"{directory}: no such model directory" + (f"; {recovery}" if recovery else ""))
    if not directory.is_dir():
        raise ModelFormatError(f"{directory}: is a file, not a model directory (a saved model is a folder with "
                               f"{', '.join(_MODEL_FILES)}, written by graph.save(dir))")
    for name in _MODEL_FILES:
        if (directory / name).is_symlink():
            raise ModelFormatError(f"{directory / name}: is a symbolic link (to {os.readlink(directory / name)}); "
                                   "a saved model holds its own files: replace the link by a copy of the file")
    missing = [f for f in _MODEL_FILES if not (directory / f).is_file()]
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
                               f"({_library_version()}) reads ({FORMAT_VERSION}); upgrade cuvis-graph")
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


def _check_library_version(meta: Mapping[str, Any], file: Path, strict: bool) -> None:
    saved = str(meta.get("library_version") or "")
    current = _library_version()
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


def _load_weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:  # from bytes, not a memory map: the tensors never depend on the file staying intact
        weights = load(file.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{file}: not a valid safetensors file, truncated or corrupt ({exc}); weights are "
                               "only ever read as safetensors, never unpickled; restore it or save the model "
                               "again") from None
    bad = {k: int((~torch.isfinite(t)).sum()) for k, t in weights.items() if t.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        listed = ", ".join(f"{k} ({n} of {weights[k].numel()})" for k, n in sorted(bad.items()))
        raise ModelFormatError(f"{file}: {sum(bad.values())} NaN/Inf value(s) in {len(bad)} weight(s): {listed}; "
                               "a model with non-finite weights scores nothing reliably: retrain or restore it")
    return weights


def _load_state(graph: Graph, weights: Mapping[str, torch.Tensor], file: Path) -> None:
    owners = {**graph.nodes, **graph.leaves}
    expected = {f"{name}.{key}" for name, obj in owners.items() for key in obj.state_dict()}
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key{'s' * (len(missing) > 1)} {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected key{'s' * (len(unexpected) > 1)} {', '.join(unexpected)}")
        raise ModelFormatError(f"{file}: weights do not match pipeline.yaml: {'; '.join(parts)}")
    # tensors sized at fit time start empty and take the saved shape (Node._load_from_state_dict);
    # a tensor the fresh object already sizes (scalars such as ``_fitted``) must keep its shape
    shapes = [f"{name}.{key} has shape {list(weights[f'{name}.{key}'].shape)}, {type(obj).__name__} "
              f"'{name}' has {list(t.shape)}" for name, obj in owners.items() for key, t in obj.state_dict().items()
              if t.numel() > 0 and t.shape != weights[f"{name}.{key}"].shape]
    shapes += [f"{name}.{key} has dtype {weights[f'{name}.{key}'].dtype}, {type(obj).__name__} '{name}' holds "
               f"{t.dtype}" for name, obj in owners.items() for key, t in obj.state_dict().items()
               if t.dtype != weights[f"{name}.{key}"].dtype]
    if shapes:
        raise ModelFormatError(f"{file}: weights do not match pipeline.yaml: {'; '.join(shapes)}")
    for name, obj in owners.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not sub:
            continue
        try:
            obj.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ModelFormatError(f"{file}: cannot load the weights of '{name}' ({type(obj).__name__}): "
                                   f"{exc}") from None


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
    _check_library_version(meta, directory / META_FILE, strict_version)
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
    weights = _load_weights(directory / WEIGHTS_FILE)
    _load_state(graph, weights, directory / WEIGHTS_FILE)
    for obj in [*graph.nodes.values(), *graph.leaves.values()]:
        obj.eval()
    if _is_int(meta.get("n_channels")):
        _probe(graph, meta["n_channels"], directory / WEIGHTS_FILE)
    return graph


def _probe(graph: Graph, n_channels: int, file: Path) -> None:
    """Run the fitted graph once on a small ``[1, 4, 4, C]`` ramp, node by node, so that weights
    sized at fit time (empty before loading, so not comparable to the fresh graph) that do not
    fit the model's C fail here, naming the node and its weights' shapes."""
    from cuvis_graph.core.compiler import compile_graph
    from cuvis_graph.core.executor import Executor

    if not all(node.is_fitted for node in graph.nodes.values()):
        return
    try:
        plan = compile_graph(graph, DataSpec(n_channels=n_channels, batch_keys=frozenset({"cube"})),
                             with_leaves=False)
    except CuvisGraphError:
        return  # structural problems are reported where the graph is used, with every problem listed
    executor = Executor(plan)
    batch = {"cube": torch.linspace(0.0, 1.0, 16 * n_channels).reshape(1, 4, 4, n_channels)}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for step in plan.steps:
            try:
                outputs[step.name] = executor.run_step(step, batch, outputs)
            except (RuntimeError, ValueError, IndexError) as exc:
                shapes = ", ".join(f"{step.name}.{k} {list(t.shape)}" for k, t in step.node.state_dict().items()
                                   if t.numel() > 1)
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelFormatError(f"{file}: the weights of node '{step.name}' ({type(step.node).__name__}) "
                                       f"do not fit the model's {n_channels}-channel input ({shapes}): {first}; "
                                       "restore the file or save the model again") from None


# -- channel check -----------------------------------------------------------------------------
def check_channels(model: Graph | Mapping[str, Any], n_channels: int, source: str = "input") -> None:
    """Raise :class:`ChannelMismatchError` when ``n_channels`` differs from the model's C.

    ``model``: a graph (its ``data_spec`` or inferred C) or a ``meta.json`` mapping. Nothing
    is checked when the model's C is unknown. Message: ``"<source>: model expects C=100
    channels (wavelengths 400–1000 nm), the data has 50"``.
    """
    if isinstance(model, Mapping):
        expected, wavelengths = model.get("n_channels"), model.get("wavelengths")
    else:
        expected = infer_n_channels(model)
        spec = model.data_spec
        wavelengths = spec.wavelengths if spec is not None else None
    if not expected or int(expected) == int(n_channels):
        return
    where = ""
    if wavelengths:
        where = f" (wavelengths {min(wavelengths):g}–{max(wavelengths):g} nm)"
    raise ChannelMismatchError(f"{source}: model expects C={int(expected)} channels{where}, "
                               f"the data has {int(n_channels)}")
