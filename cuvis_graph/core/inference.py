"""The inference session: a graph's inference path compiled once, run on many batches.

:class:`InferenceSession` is built once per (graph, data spec) and is what
:meth:`Graph.predict`, file prediction, tiled prediction and ONNX export run:

* the plan is compiled (and built, :func:`~cuvis_graph.core.compiler.build_plan`) once,
  without leaves (losses, metrics, plots do not run);
* the device is resolved once: where the nodes' weights are (the first parameter or buffer
  of the plan's nodes; CPU when there is none); every batch is moved there;
* each call runs under ``torch.inference_mode`` with every node in eval mode, and puts
  back the train/eval flag of every module of every node afterwards;
* the result is the sink outputs, one rule (:func:`sink_outputs`) also used by the Lightning
  predict step: the first output port of each sink (a node no other node reads), in
  topological order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cuvis_graph.core.compiler import build_plan, compile_graph
from cuvis_graph.core.executor import Executor, Outputs, StepHook
from cuvis_graph.core.fitting import move_batch
from cuvis_graph.core.plan import DataSpec, Plan
from cuvis_graph.errors import did_you_mean

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["InferenceSession", "eval_modes", "sink_outputs", "weights_device"]


def sink_outputs(plan: Plan, outputs: Outputs) -> dict[str, torch.Tensor]:
    """``{sink: tensor}``: the first output port of every sink of ``plan``, in topological order."""
    return {name: next(iter(outputs[name].values())) for name in plan.sinks()}


def weights_device(modules: Iterable[nn.Module]) -> torch.device:
    """The device of the first parameter or buffer of ``modules``; CPU when they hold none."""
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_modes(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Put ``modules`` in eval mode; afterwards every submodule gets its own flag back
    (a node in train mode before is in train mode after, an eval-mode part stays eval)."""
    modules = list(modules)
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


class InferenceSession:
    """``graph``'s inference path compiled for ``spec``; see the module doc.

    Example::

        session = InferenceSession(graph, DataSpec(n_channels=C))
        scores = session.predict({"cube": cube_bhwc})["rx"]      # [B, H, W, 1]
    """

    def __init__(self, graph: Graph, spec: DataSpec) -> None:
        self.graph_name = graph.name
        self.spec = spec
        self.plan = compile_graph(graph, spec, with_leaves=False)
        build_plan(self.plan, spec)
        self.executor = Executor(self.plan)
        self.sinks: list[str] = self.plan.sinks()
        self.device = weights_device(step.node for step in self.plan.steps)

    @classmethod
    def for_batch(cls, graph: Graph, batch: Mapping[str, Any]) -> InferenceSession:
        """A session for batches like ``batch`` (its keys; C of its ``cube [B, H, W, C]``)."""
        return cls(graph, DataSpec(n_channels=int(batch["cube"].shape[-1]), batch_keys=frozenset(batch)))

    def evaluating(self) -> contextlib.AbstractContextManager[None]:
        """Every node in eval mode for the block; the modes are restored afterwards."""
        return eval_modes(step.node for step in self.plan.steps)

    def run(self, batch: Mapping[str, Any], keep: Collection[str] | None = None,
            on_step: StepHook | None = None) -> Outputs:
        """Every node's outputs on ``batch`` (only those of ``keep`` when given; see
        :meth:`Executor.run`), computed on :attr:`device` in eval and inference mode."""
        cube = batch.get("cube")
        n = self.spec.n_channels
        if n is not None and isinstance(cube, torch.Tensor) and cube.ndim >= 1 and int(cube.shape[-1]) != n:
            raise ValueError(f"graph '{self.graph_name}': this inference session was compiled for {n} channels, "
                             f"the batch's cube has shape {tuple(cube.shape)}")
        batch = move_batch(batch, self.device)
        with self.evaluating(), torch.inference_mode():
            return self.executor.run(batch, keep=keep, on_step=on_step)

    def output_port(self, output: str) -> tuple[str, str | None]:
        """``(node, port)`` of ``"name.port"`` (``port`` ``None`` for ``"name"``: its first port);
        ``KeyError`` naming the closest node, or the ports, when there is no such output."""
        name, _, port = output.partition(".")
        ports = self.plan.output_dims.get(name)
        if ports is None:
            raise KeyError(f"no node '{name}' in graph '{self.graph_name}'{did_you_mean(name, self.plan.node_names)}")
        if port and port not in ports:
            raise KeyError(f"node '{name}' has no output port '{port}'; ports: {list(ports)}")
        return name, port or None

    def predict(self, batch: Mapping[str, Any], output: str | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """``{sink: tensor}`` (:func:`sink_outputs`) on ``batch``, or the tensor of ``output``
        (``"name"`` or ``"name.port"``); intermediates are released as soon as they are used."""
        if output is None:
            return sink_outputs(self.plan, self.run(batch, keep=self.sinks))
        name, port = self.output_port(output)
        ports = self.run(batch, keep={name})[name]
        return ports[port] if port is not None else next(iter(ports.values()))
