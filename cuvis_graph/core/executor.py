"""THE executor: runs a compiled plan on a batch.

Statistical initialization, training, validation, testing and prediction all call
:meth:`Executor.run` (principle: one forward path). Fan-in nodes receive exactly the
outputs of the parents wired to their ports, in wiring order.

A node that raises is re-raised (chained, same exception type where it can be rebuilt
from a message) with the node's name, class and the dtype and shape of every input in the
message: ``boom (in node 'head' (RXLogitHead), inputs: data float32 [2, 8, 8, 1])``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

from cuvis_graph.core.leaves import TARGET_KEY
from cuvis_graph.core.plan import LeafBinding, Plan, Source, Step
from cuvis_graph.errors import CuvisGraphError

__all__ = ["Executor", "NodeError", "Outputs", "StepHook", "describe_inputs"]

#: node name -> output port -> tensor
Outputs = dict[str, dict[str, torch.Tensor]]
#: ``hook(step, inputs, result)``, called after each step with its keyword inputs and outputs
StepHook = Callable[[Step, dict[str, Any], dict[str, torch.Tensor]], None]


class NodeError(CuvisGraphError):
    """A node raised an exception whose type cannot carry the node's context itself."""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        device = "" if value.device.type == "cpu" else f" {value.device}"
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}{device}"
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return type(value).__name__


def describe_inputs(inputs: Mapping[str, Any]) -> str:
    """``"data float32 [2, 8, 8, 5], mask bool [2, 8, 8, 1]"``: dtype and shape per port."""
    return ", ".join(f"{port} {_describe(v)}" for port, v in inputs.items()) or "none"


def _in_context(exc: Exception, step: Step, inputs: Mapping[str, Any]) -> Exception | None:
    """``exc`` rebuilt with the node and its inputs in the message, or ``None`` when it
    already names the node (a cuvis-graph error about it, or one placed by an inner run)."""
    if getattr(exc, "node_name", None) is not None or (
            isinstance(exc, CuvisGraphError) and f"'{step.name}'" in str(exc)):
        return None
    where = f"in node '{step.name}' ({type(step.node).__name__}), inputs: {describe_inputs(inputs)}"
    message = f"{exc} ({where})" if str(exc) else where
    try:
        placed = type(exc)(message)
        rebuilt = message in str(placed)  # KeyError quotes its message
    except Exception:  # noqa: BLE001 - a type whose constructor wants more than a message
        rebuilt = False
    if not rebuilt:
        placed = NodeError(f"{type(exc).__name__}: {message}")
    placed.node_name = step.name  # type: ignore[attr-defined]
    return placed


class Executor:
    """Runs the steps of a :class:`Plan` in topological order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._last_use: dict[str, float] | None = None

    @staticmethod
    def read(source: Source, batch: Mapping[str, Any], outputs: Outputs) -> Any:
        if source.kind == "batch":
            return batch.get(source.key)
        return outputs[source.key][source.port]

    def node_inputs(self, step: Step, batch: Mapping[str, Any], outputs: Outputs) -> dict[str, Any]:
        """Keyword arguments for ``step.node``; absent optional batch keys are left out."""
        kwargs: dict[str, Any] = {}
        for port, src in step.inputs.items():
            if isinstance(src, list):
                values = [self.read(s, batch, outputs) for s in src]
                if any(v is None for v in values):
                    continue
                kwargs[port] = values
            else:
                value = self.read(src, batch, outputs)
                if value is not None:
                    kwargs[port] = value
        return kwargs

    def call(self, step: Step, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run ``step.node`` on ``inputs``; a failure is re-raised naming the node and its inputs."""
        step.node.check_fitted()
        try:
            result = step.node(**inputs)
        except Exception as exc:
            placed = _in_context(exc, step, inputs)
            if placed is None:
                raise
            raise placed from exc
        if isinstance(result, Mapping):
            return dict(result)
        ports = step.node.output_specs
        if len(ports) != 1:
            raise CuvisGraphError(f"node '{step.name}' returned one tensor but declares outputs {sorted(ports)}")
        return {next(iter(ports)): result}

    def run_step(self, step: Step, batch: Mapping[str, Any], outputs: Outputs) -> dict[str, torch.Tensor]:
        return self.call(step, self.node_inputs(step, batch, outputs))

    def last_use(self) -> dict[str, float]:
        """Node name -> index of the last step that reads its outputs (its own index when none
        does; ``inf`` when a leaf reads it)."""
        if self._last_use is None:
            last: dict[str, float] = {}
            for i, step in enumerate(self.plan.steps):
                last[step.name] = max(last.get(step.name, i), i)
                for src in step.inputs.values():
                    for s in src if isinstance(src, list) else [src]:
                        if s.kind == "node":
                            last[s.key] = max(last.get(s.key, i), i)
            for binding in self.plan.leaves:
                for s in (binding.parent, binding.target):
                    if s is not None and s.kind == "node":
                        last[s.key] = float("inf")
            self._last_use = last
        return self._last_use

    def run(self, batch: Mapping[str, Any], only: Collection[str] | None = None, *,
            on_step: StepHook | None = None, keep: Collection[str] | None = None) -> Outputs:
        """Run all steps (or only those named in ``only``) and return the nodes' outputs.

        ``on_step(step, inputs, result)`` is called after every step that ran, in order.
        ``keep``: return only these nodes' outputs (and those a leaf reads); every other
        output is released as soon as no later step reads it. ``None``: keep all.
        """
        outputs: Outputs = {}
        last_use = self.last_use() if keep is not None else {}
        for i, step in enumerate(self.plan.steps):
            if only is None or step.name in only:
                inputs = self.node_inputs(step, batch, outputs)
                outputs[step.name] = self.call(step, inputs)
                if on_step is not None:
                    on_step(step, inputs, outputs[step.name])
                del inputs
            if keep is not None:
                for name in [n for n in outputs if last_use[n] <= i and n not in keep]:
                    del outputs[name]
        return outputs

    def leaf_inputs(self, binding: LeafBinding, batch: Mapping[str, Any], outputs: Outputs) -> tuple[Any, dict]:
        """The leaf's parent output and its batch (with ``"target"`` when it needs labels)."""
        output = self.read(binding.parent, batch, outputs)
        leaf_batch = dict(batch)
        if binding.target is not None:
            target = self.read(binding.target, batch, outputs)
            if target is None:
                raise CuvisGraphError(f"leaf '{binding.name}' needs labels from {binding.target}, absent in this batch")
            leaf_batch[TARGET_KEY] = target
        return output, leaf_batch
