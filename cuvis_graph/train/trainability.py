"""Which nodes train in a stage: freeze / unfreeze, train / eval modes, refit and trainable names.

In a stage, ``trainable`` nodes get gradients and every other node is frozen: its parameters
are left out of the optimizer and it runs in eval mode (no Gumbel noise, no hard/soft
switching mid-stage), so its weights end the stage bit-identical.
"""

from __future__ import annotations

from cuvis_graph.core.plan import Plan
from cuvis_graph.train.config import StageConfig

__all__ = ["Trainability", "set_stage_modes", "refit_names", "trainable_names"]


class Trainability:
    """Which nodes train in a stage; remembers the graph's own settings to restore them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.saved = {s.name: (s.node._frozen, {n: p.requires_grad for n, p in s.node.named_parameters()})
                      for s in plan.steps}

    def restore(self) -> None:
        """The graph as built: each node's own frozen flag and parameter settings."""
        for s in self.plan.steps:
            frozen, grads = self.saved[s.name]
            s.node._frozen = frozen
            for n, p in s.node.named_parameters():
                p.requires_grad_(grads.get(n, not frozen))

    def apply(self, stage: StageConfig) -> frozenset[str]:
        """Freeze / unfreeze for ``stage``; returns the frozen node names."""
        self.restore()
        if stage.trainable is not None:
            frozen = {s.name for s in self.plan.steps if s.name not in stage.trainable}
            for s in self.plan.steps:
                if s.name not in frozen and s.node._frozen:  # frozen by the user: the stage trains it
                    s.node.unfreeze()
        else:
            frozen = set(stage.frozen or [])
        for name in frozen:
            self.plan.step(name).node.freeze()
        return frozenset(frozen)


def set_stage_modes(plan: Plan, frozen: frozenset[str]) -> None:
    """Train mode for the nodes that train in the stage, eval for frozen ones: refits see the
    data as the stage's training steps will."""
    for s in plan.steps:
        s.node.train(s.name not in frozen)


def refit_names(plan: Plan, stage: StageConfig) -> list[str]:
    """The statistical nodes ``stage`` refits at its start (``refit: all`` -> every one)."""
    if stage.refit == "all":
        return [s.name for s in plan.steps if s.node.statistical]
    return list(stage.refit)


def trainable_names(plan: Plan, frozen: frozenset[str]) -> list[str]:
    """The nodes outside ``frozen`` that have parameters needing gradients."""
    return [s.name for s in plan.steps if s.name not in frozen and any(p.requires_grad for p in s.node.parameters())]
