"""Checks of the training stages against the graph (run by the compiler).

Every node or leaf a stage of ``training.stages`` names must exist and be of the right
kind (``trainable`` / ``frozen``: nodes; ``refit``: statistical nodes; ``losses``: loss
leaves), and a stage that trains (``max_epochs > 0``) needs a loss. Each problem names
its place: ``training.stages.<i>.<field>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cuvis_graph.core.leaves import LossNode
from cuvis_graph.errors import Problem, did_you_mean

if TYPE_CHECKING:
    from cuvis_graph.core.structure import GraphStructure

__all__ = ["stage_problems"]


def stage_problems(structure: GraphStructure, stages: Sequence[Any]) -> list[Problem]:
    """The problems of ``stages`` (:class:`~cuvis_graph.train.config.StageConfig`) in the graph
    ``structure``; empty when every stage fits the graph."""
    nodes, leaves, graph = structure.node_objects(), structure.leaf_objects(), structure.name
    losses = [n for n, leaf in leaves.items() if isinstance(leaf, LossNode)]
    problems: list[Problem] = []

    def unknown_node(name: str, where: str) -> None:
        problems.append(Problem(where, f"no node '{name}' in graph '{graph}'{did_you_mean(name, nodes)}"))

    for i, stage in enumerate(stages):
        at = f"training.stages.{i}"
        for field in ("trainable", "frozen"):
            for name in getattr(stage, field) or []:
                if name not in nodes:
                    unknown_node(name, f"{at}.{field}")
        for name in [] if stage.refit == "all" else stage.refit:
            if name not in nodes:
                unknown_node(name, f"{at}.refit")
            elif not nodes[name].statistical:
                problems.append(Problem(f"{at}.refit", f"node '{name}' ({type(nodes[name]).__name__}) has no "
                                                       "statistics to fit"))
        for name in stage.loss_weights() or {}:
            if name in leaves and name not in losses:
                problems.append(Problem(f"{at}.losses", f"leaf '{name}' is a {type(leaves[name]).__name__}, "
                                                        "not a loss"))
            elif name not in leaves:
                problems.append(Problem(f"{at}.losses", f"no loss leaf '{name}' in graph '{graph}'"
                                                        f"{did_you_mean(name, losses)}"))
        if stage.max_epochs > 0 and not (losses if stage.losses is None else stage.loss_weights()):
            problems.append(Problem(at, f"stage '{stage.name}' trains {stage.max_epochs} epoch(s) but has no loss"))
    return problems
