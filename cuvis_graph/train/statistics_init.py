"""Statistical init and stage refits for training: one orchestration for one process and DDP.

:func:`fit_for_training` is the one path: move the nodes to the device, set the stage's
train/eval modes, stream the batches through :func:`cuvis_graph.core.fitting.fit_statistics`,
then let each fitted node prepare for gradient training. In one process it streams every
batch; under DDP rank ``r`` of ``W`` streams batches ``r, r+W, ...`` and the accumulators are
all-reduced before finalizing, so every rank ends with the buffers one process would have
fitted. Under DDP it runs inside Lightning's ``setup("fit")`` (:func:`statistics_task`), when
the process group is up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from cuvis_graph.core.fitting import FitReport, fit_statistics
from cuvis_graph.core.plan import Plan
from cuvis_graph.errors import ConfigError
from cuvis_graph.train.distributed import shard_batches
from cuvis_graph.train.trainability import set_stage_modes

if TYPE_CHECKING:
    from cuvis_graph.train.lightning import GraphModule

__all__ = ["fit_for_training", "statistics_task", "check_batches_per_process", "loader_length"]


def fit_for_training(plan: Plan, loader: Callable[[], Any], *, device: torch.device, refit: bool | Sequence[str],
                     progress: bool, init: bool, modes: frozenset[str] | None = None, rank: int = 0,
                     world: int = 1) -> FitReport:
    """Fit the statistics a training needs and prepare the fitted nodes for gradients.

    ``init``: statistical init (every unfitted node, plus ``refit``; then every node prepares
    for training); otherwise a stage's refit of the nodes named in ``refit``. ``modes``: the
    stage's frozen nodes, run in eval mode (``None``: leave the modes as they are).
    ``rank``/``world``: this process's shard of the batches under DDP.
    """
    if world > 1:
        check_batches_per_process(loader_length(loader()), world)
    for step in plan.steps:
        step.node.to(device)
    if modes is not None:
        set_stage_modes(plan, modes)
    batches = shard_batches(loader, rank, world) if world > 1 else loader
    report = fit_statistics(plan, batches, device=device, refit=refit, progress=progress and rank == 0)
    refitted = set(refit) if not isinstance(refit, bool) else set()
    for step in plan.steps:
        if init or step.name in refitted:
            step.node.prepare_for_train()
    return report


def statistics_task(plan: Plan, loader: Any, refit: bool | Sequence[str], progress: bool, fits: list[FitReport],
                    *, init: bool = False, after: Any = None, modes: frozenset[str] = frozenset()) -> Any:
    """:func:`fit_for_training` as a task every DDP rank runs in ``setup("fit")``, with the
    rank, world size and device of the running trainer. ``after``: called last (the stage's
    freeze / unfreeze); an init's report is appended to ``fits``."""
    def task(module: GraphModule) -> None:
        trainer = module.trainer
        report = fit_for_training(plan, loader, device=trainer.strategy.root_device, refit=refit,
                                  progress=progress, init=init, modes=modes, rank=trainer.global_rank,
                                  world=trainer.world_size)
        if after is not None:
            after()
        if init:
            fits.append(report)

    return task


def check_batches_per_process(n_batches: int | None, world: int, batch_size: Any = None) -> None:
    """Statistics under DDP: each of the ``world`` processes streams its own batches (at least one)."""
    if n_batches is not None and n_batches < world:
        size = f" of batch_size={batch_size}" if batch_size else ""
        raise ConfigError(f"statistical init with {world} processes needs at least {world} training batches "
                          f"(one per process); the training loader has {n_batches}{size}: use more training "
                          "data, a smaller batch size or fewer processes (training.trainer.devices x num_nodes)")


def loader_length(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for a loader without a length."""
    try:
        return len(loader)
    except TypeError:
        return None

