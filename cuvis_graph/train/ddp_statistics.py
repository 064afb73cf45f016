"""Statistical init and stage refits under DDP: a task every rank runs in ``setup("fit")``.

Rank ``r`` of ``W`` streams batches ``r, r+W, ...`` of the training loader; the accumulators
are all-reduced before finalizing (:func:`cuvis_graph.core.fitting.fit_statistics`), so every
rank ends with the buffers one process would have fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cuvis_graph.core.fitting import FitReport, fit_statistics
from cuvis_graph.core.plan import Plan
from cuvis_graph.errors import ConfigError
from cuvis_graph.train.distributed import shard_batches
from cuvis_graph.train.trainability import set_stage_modes

if TYPE_CHECKING:
    from cuvis_graph.train.lightning import GraphModule

__all__ = ["statistics_task", "check_batches_per_process", "loader_length"]


def statistics_task(plan: Plan, loader: Any, refit: bool | Sequence[str], progress: bool, fits: list[FitReport],
                    *, init: bool = False, after: Any = None, modes: frozenset[str] = frozenset()) -> Any:
    """Statistical init (``init``: unfitted nodes, plus ``refit``) or a stage's refit, run by
    every DDP rank in ``setup("fit")``: rank ``r`` of ``W`` streams batches ``r, r+W, ...``;
    the accumulators are all-reduced before finalizing, so all ranks end with the
    single-process buffers. ``modes``: nodes in eval mode (the stage's frozen ones);
    ``after``: called last (the stage's freeze / unfreeze)."""
    def task(module: GraphModule) -> None:
        trainer = module.trainer
        rank, world = trainer.global_rank, trainer.world_size
        check_batches_per_process(loader_length(loader()), world)
        device = trainer.strategy.root_device
        for s in plan.steps:
            s.node.to(device)
        set_stage_modes(plan, modes)
        report = fit_statistics(plan, shard_batches(loader, rank, world), device=device, refit=refit,
                                progress=progress and rank == 0)
        refitted = set(refit) if not isinstance(refit, bool) else set()
        for s in plan.steps:
            if init or s.name in refitted:
                s.node.prepare_for_train()
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

