"""THE executor: runs a compiled plan on a batch.

Statistical initialization, training, validation, testing and prediction all call
:meth:`Executor.run` (principle: one forward path). Fan-in nodes receive exactly the
outputs of the parents wired to their ports, in wiring order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch

from cuvis_graph.core.leaves import TARGET_KEY
from cuvis_graph.core.plan import LeafBinding, Plan, Source, Step
from cuvis_graph.errors import CuvisGraphError

__all__ = ["Executor", "Outputs"]

#: node name -> output port -> tensor
Outputs = dict[str, dict[str, torch.Tensor]]


class Executor:
    """Runs the steps of a :class:`Plan` in topological order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

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

    def run_step(self, step: Step, batch: Mapping[str, Any], outputs: Outputs) -> dict[str, torch.Tensor]:
        step.node.check_fitted()
        result = step.node(**self.node_inputs(step, batch, outputs))
        if isinstance(result, Mapping):
            return dict(result)
        ports = step.node.output_specs
        if len(ports) != 1:
            raise CuvisGraphError(f"node '{step.name}' returned one tensor but declares outputs {sorted(ports)}")
        return {next(iter(ports)): result}

    def run(self, batch: Mapping[str, Any], only: Collection[str] | None = None) -> Outputs:
        """Run all steps (or only those named in ``only``) and return every node's outputs."""
        outputs: Outputs = {}
        for step in self.plan.steps:
            if only is None or step.name in only:
                outputs[step.name] = self.run_step(step, batch, outputs)
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
