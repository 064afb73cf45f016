"""The checkpoints of a run: where a resume restarts, each ``last.ckpt`` noted in the stage
state, the best checkpoint, and the weights the run's ``model/`` ships.

Resume (``resume="auto"`` or a run directory): completed stages are skipped; the current
stage continues from its ``last.ckpt`` (weights, optimizer, epoch, RNG states), or, when it
had not written one yet, starts over from the previous stage's ``final.ckpt``. Every
``last.ckpt`` written is noted in ``stage_state.json`` (``last_checkpoint_step``): a resume
whose checkpoint was deleted since is refused rather than started over.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cuvis_graph.core.plan import Plan
from cuvis_graph.train import checkpoints
from cuvis_graph.train.callbacks import AtomicCheckpointIO
from cuvis_graph.train.config import StageConfig, TrainingConfig
from cuvis_graph.train.stage_state import StageState

__all__ = ["load_checkpoint", "restore_point", "stage_resume_checkpoint", "RecordedCheckpointIO",
           "best_checkpoint", "node_states", "load_node_states", "best_weights"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` on the CPU (see
    :mod:`cuvis_graph.train.checkpoints`)."""
    return checkpoints.load_checkpoint(path)


def restore_point(run: Any, state: StageState, config: TrainingConfig) -> Any:
    """The checkpoint whose weights a resumed run starts from (``None``: a fresh start)."""
    if run is None or not run.resuming:
        return None
    if not config.stages:
        return run.resume_checkpoint
    current = state.current
    if current is not None and (run.checkpoint_dir / current / "last.ckpt").is_file():
        return run.checkpoint_dir / current / "last.ckpt"
    final = state.last_final_checkpoint()
    return run.path / final if final else None


def stage_resume_checkpoint(run: Any, state: StageState, stage: StageConfig, ckpt_dir: Any,
                            config: TrainingConfig) -> Any:
    """The ``last.ckpt`` a resumed run continues ``stage`` from, if it had started it."""
    if run is None or not run.resuming or state.current != stage.name and config.stages:
        return None
    if not config.stages:
        return run.resume_checkpoint
    last = ckpt_dir / "last.ckpt"
    return last if last.is_file() else None


class RecordedCheckpointIO(AtomicCheckpointIO):
    """Atomic checkpoints; each ``last.ckpt`` written is noted in the stage state
    (``last_checkpoint_step``), so that a resume can tell a run that never had a checkpoint
    from one whose checkpoint was lost (:func:`cuvis_graph.io.run_resume.resume_target`)."""

    def __init__(self, state: StageState, stage: str) -> None:
        super().__init__()
        self.state, self.stage = state, stage

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if os.path.basename(path) == "last.ckpt":
            self.state.info(self.stage)["last_checkpoint_step"] = int(checkpoint.get("global_step", 0))
            self.state.save()


def best_checkpoint(checkpoint: ModelCheckpoint | None, run_path: Any) -> dict[str, Any] | None:
    """The run's ``best`` record from the checkpoint callback: monitor, mode, run-relative
    path and score (``None`` when no checkpoint was chosen; a non-finite score as ``None``)."""
    if checkpoint is None or not checkpoint.best_model_path:
        return None
    score = checkpoint.best_model_score
    path = os.path.relpath(checkpoint.best_model_path, run_path)
    return {"monitor": checkpoint.monitor, "mode": checkpoint.mode, "checkpoint": path,
            "score": float(score) if score is not None and math.isfinite(float(score)) else None}


def node_states(plan: Plan) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every node's state dict (the weights right after statistical init)."""
    return {s.name: {k: v.detach().clone() for k, v in s.node.state_dict().items()} for s in plan.steps}


def load_node_states(plan: Plan, states: dict[str, dict[str, torch.Tensor]] | None) -> None:
    """Load ``states`` (from :func:`node_states`) back into the nodes, each on its own device
    (``None``: nothing to load)."""
    for s in plan.steps if states is not None else []:
        device = next(iter(s.node.state_dict().values()), torch.empty(0)).device
        s.node.load_state_dict({k: v.to(device) for k, v in states[s.name].items()})


def best_weights(plan: Plan, run: Any, best: Mapping[str, Any] | None, initial: Mapping[str, float],
                 initial_state: dict[str, dict[str, torch.Tensor]] | None
                  ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]] | None]:
    """The weights ``<run>/model`` ships, so that it is never worse than the run's own start:
    ``(run.json "model_weights", node states or None for the final weights)``.

    Candidates, with a checkpoint monitor set (single-stage runs; a staged run ships its
    final weights): the best checkpoint and, when ``initial_metrics`` (the validation right
    after statistical init, before any gradient step) has the monitored value, the initial
    weights (held in memory: a resumed run compares its best checkpoint only). The better
    by the monitor's ``mode`` wins (a tie keeps the trained one; a non-finite score never wins).
    """
    if not best or not best.get("monitor") or not best.get("checkpoint"):
        return {"source": "final"}, None
    monitor, mode, score = best["monitor"], best.get("mode", "min"), best.get("score")
    start = initial.get(monitor) if initial_state is not None else None
    start = start if start is not None and math.isfinite(start) else None

    def better(a: float | None, b: float | None) -> bool:
        return a is not None and (b is None or (a < b if mode == "min" else a > b))

    if better(start, score):
        states, source = initial_state, {"source": "initial", "monitor": monitor, "score": start}
    else:
        path = run.path / best["checkpoint"]
        if not path.is_file():
            log.warning("best checkpoint %s is missing: the final weights are the run's model", path)
            return {"source": "final"}, None
        saved = load_checkpoint(path)["state_dict"]
        states = {s.name: {k[len(f"graph_nodes.{s.name}."):]: v for k, v in saved.items()
                           if k.startswith(f"graph_nodes.{s.name}.")} for s in plan.steps}
        source = {"source": "best", "checkpoint": best["checkpoint"], "monitor": monitor, "score": score}
    return source, states

