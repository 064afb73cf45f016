"""The weights of a saved model: ``weights.safetensors`` written from and loaded into a graph.

Keys are ``<node or leaf name>.<state_dict key>``. Loading reads the file as safetensors
only (never pickle) from bytes, refuses NaN/Inf weights (named with their count), keys
that do not match the graph, and shapes or dtypes that differ from what the graph holds;
:func:`probe` then runs the fitted graph once on a small ramp so that weights sized at fit
time that do not fit the model's channel count fail at load, naming the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.model_meta import ModelFormatError

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["graph_state", "load_weights", "load_state", "probe"]


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


def load_weights(file: Path) -> dict[str, torch.Tensor]:
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


def load_state(graph: Graph, weights: Mapping[str, torch.Tensor], file: Path) -> None:
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


def probe(graph: Graph, n_channels: int, file: Path) -> None:
    """Run the fitted graph once on a small ``[1, 4, 4, C]`` ramp, node by node, so that weights
    sized at fit time (empty before loading, so not comparable to the fresh graph) that do not
    fit the model's C fail here, naming the node and its weights' shapes."""
    from cuvis_graph.core.compiler import compile_graph
    from cuvis_graph.core.executor import Executor

    if not all(node.is_fitted for node in graph.nodes.values()):
        return
    try:
        # C left open: the compile's own check of fitted channels would refuse without naming the file
        plan = compile_graph(graph, DataSpec(n_channels=None, batch_keys=frozenset({"cube"})), with_leaves=False)
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
