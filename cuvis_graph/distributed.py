"""Multi-process (DDP) helpers: which rank this process is, exact data shards.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by running the user's script again with
``LOCAL_RANK``/``NODE_RANK`` set. ``graph.train`` in such a worker process joins the run of
rank 0 (passed in ``CUVIS_GRAPH_DDP_RUN_DIR`` / ``CUVIS_GRAPH_DDP_RESUMING``) and writes no
run files; statistical init runs inside the Lightning fit on every rank, each rank streaming
its shard and the accumulators all-reduced (see :mod:`cuvis_graph.training`). A resumed run
passes its checkpoint in ``CUVIS_GRAPH_DDP_RESUME_CKPT`` so every rank restores the same state.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["worker_rank", "ShardSampler", "shard_batches", "distributed_shape", "RUN_DIR_ENV", "RESUMING_ENV",
           "RESUME_CKPT_ENV"]

RUN_DIR_ENV = "CUVIS_GRAPH_DDP_RUN_DIR"
RESUMING_ENV = "CUVIS_GRAPH_DDP_RESUMING"
RESUME_CKPT_ENV = "CUVIS_GRAPH_DDP_RESUME_CKPT"


def worker_rank() -> int:
    """Global rank of this process as Lightning's launcher set it in the environment (0 if none)."""
    for key in ("RANK", "LOCAL_RANK"):
        if key in os.environ:
            local = int(os.environ[key])
            if key == "LOCAL_RANK":
                per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1)
                return int(os.environ.get("NODE_RANK", 0)) * per_node + local
            return local
    return 0


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
