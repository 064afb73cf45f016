"""Multi-process (DDP) helpers: which rank this process is, exact data shards, the strategy.

Lightning's ``ddp`` strategy starts ranks 1..N-1 of a node by running the user's script
again with ``LOCAL_RANK``/``NODE_RANK`` set. ``graph.train`` in such a worker process joins
the run of rank 0 (passed in ``CUVIS_GRAPH_DDP_RUN_DIR`` / ``CUVIS_GRAPH_DDP_RESUMING``) and
writes no run files; statistical init runs inside the Lightning fit on every rank, each rank
streaming its shard and the accumulators all-reduced (see :mod:`cuvis_graph.train.training`). A
resumed run passes its checkpoint in ``CUVIS_GRAPH_DDP_RESUME_CKPT`` so every rank restores
the same state.

Processes started by someone else (other nodes, ``torchrun``, SLURM's ``srun``) learn the run
directory the same way: every process is given ``CUVIS_GRAPH_DDP_RUN_DIR`` (one folder on
shared storage) and rank 0 trains into it (``graph.train(..., run_dir=...)``); see
``docs/distributed.md``.

Statistics-only graphs and stages whose every node is frozen have no parameter that
requires a gradient, which ``DistributedDataParallel`` refuses to wrap: the run's DDP
strategy (:func:`distributed_trainer_kwargs`) leaves such a module unwrapped.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["worker_rank", "ShardSampler", "shard_batches", "distributed_shape", "distributed_trainer_kwargs",
           "RUN_DIR_ENV", "RESUMING_ENV", "RESUME_CKPT_ENV"]

RUN_DIR_ENV = "CUVIS_GRAPH_DDP_RUN_DIR"
RESUMING_ENV = "CUVIS_GRAPH_DDP_RESUMING"
RESUME_CKPT_ENV = "CUVIS_GRAPH_DDP_RESUME_CKPT"


def worker_rank() -> int:
    """Global rank of this process as its launcher set it in the environment (0 if none).

    ``RANK`` (torchrun), else ``SLURM_PROCID`` when Lightning would use SLURM, else
    ``NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK`` (Lightning's launcher and a node started
    by hand with ``NODE_RANK``; without ``LOCAL_WORLD_SIZE`` the value is only known to be
    ``> 0`` for every process but global rank 0, which is all callers ask).
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if SLURMEnvironment.detect():
            return int(env["SLURM_PROCID"])
    per_node = int(env.get("LOCAL_WORLD_SIZE") or 1)
    return int(env.get("NODE_RANK") or 0) * per_node + int(env.get("LOCAL_RANK") or 0)


class ShardSampler(DistributedSampler):
    """Evaluation sampler: rank ``r`` of ``W`` reads items ``r, r+W, r+2W, ...``, no padding.

    Lightning's default ``DistributedSampler`` pads the dataset to a multiple of ``W`` by
    repeating items, which makes dataset-level validation metrics count some pixels twice;
    this sampler keeps every item exactly once across ranks (ranks may differ by one item).
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = max(0, math.ceil((len(dataset) - self.rank) / self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def distributed_shape() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(loader_factory: Callable[[], Iterable[Any]], rank: int, world_size: int) -> Callable[[], Iterable[Any]]:
    """A loader factory yielding batches ``rank, rank+W, ...`` of ``loader_factory()``'s batches."""
    if world_size <= 1:
        return loader_factory

    def sharded() -> Iterable[Any]:
        return itertools.islice(loader_factory(), rank, None, world_size)

    return sharded


def distributed_trainer_kwargs(trainer_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``(kwargs, world_size)`` for the run's Trainers: how many processes they train with
    (from a Trainer built with ``trainer_kwargs``; it starts nothing) and the options with a
    DDP strategy (by name, or the one ``"auto"`` picks) replaced by its twin that leaves a
    module without trainable parameters unwrapped (see :func:`_grad_free_ddp`)."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    probe = pl.Trainer(**{**trainer_kwargs, "enable_progress_bar": False}, logger=False,
                       enable_checkpointing=False, enable_model_summary=False)
    kwargs, world = dict(trainer_kwargs), probe.world_size
    name = kwargs.get("strategy", "auto")
    if name == "auto":
        name = {"popen": "ddp", "spawn": "ddp_spawn", "fork": "ddp_fork"}.get(getattr(probe.strategy, "_start_method", ""))
    if world > 1 and isinstance(name, str) and type(probe.strategy) is DDPStrategy:
        kwargs["strategy"] = _grad_free_ddp(name)
    return kwargs, world


@functools.cache
def _grad_free_ddp(name: str) -> str:
    """Register ``cuvis_graph_<name>``: Lightning's DDP strategy ``name`` (same options) that
    wraps the module in ``DistributedDataParallel`` only when a parameter requires a gradient.
    Otherwise (statistics only, every node frozen) it broadcasts the parameters and buffers
    from rank 0, as the wrapper does when it is built; there is no gradient to reduce."""
    from lightning.pytorch.overrides.distributed import _sync_module_states
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    class GradFreeDDPStrategy(DDPStrategy):
        def configure_ddp(self) -> None:
            if any(p.requires_grad for p in self.model.parameters()):
                super().configure_ddp()
            else:
                _sync_module_states(self.model)

    twin = f"cuvis_graph_{name}"
    StrategyRegistry.register(twin, GradFreeDDPStrategy, description=f"{name}, no wrapper without gradients",
                              override=True, **StrategyRegistry[name]["init_params"])
    return twin
