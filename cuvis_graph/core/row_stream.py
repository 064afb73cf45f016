"""Accumulators that read the same rows, fed block by block: each block is read from memory once.

Inside ``with RowStream():`` a :class:`~cuvis_graph.core.statistics.RowAccumulator`'s
``update`` queues its rows instead of reading them. On exit the queued rows are grouped by the
memory they occupy (a normalizer and the RX node it is folded into read the same raw rows,
``[N, C]`` or flat ``[N C, 1]``) and each group is walked block by block: every accumulator of
the group reads a block while it is in cache, before the next block is loaded::

    for block in rows (cache-sized):        (one read from memory)
        for accumulator in group:
            accumulator._add_block(block viewed as [b, accumulator.dim])

A diagonal-moment accumulator whose rows a full-covariance one walks takes its sums from that
walk (:meth:`MomentAccumulator.follow`: the same sums, from the scatter GEMM) instead of
walking them. Without an open stream, ``feed`` walks the rows at once. Sums do not depend on how
rows are grouped into blocks beyond rounding.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch

from cuvis_graph.core.statistics import DEVICE_BLOCK_ROWS, RowAccumulator

__all__ = ["RowStream", "feed"]

_open: ContextVar[RowStream | None] = ContextVar("row_stream", default=None)


class RowStream:
    """Collect the rows given to row accumulators; walk them grouped on exit (see module doc)."""

    def __init__(self) -> None:
        self._queued: list[tuple[RowAccumulator, torch.Tensor]] = []
        self._token: Any = None

    def __enter__(self) -> RowStream:
        self._token = _open.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _open.reset(self._token)
        queued, self._queued = self._queued, []
        if exc_type is None:
            for group in _groups(queued):
                _walk(group)


def feed(accumulator: RowAccumulator, rows: torch.Tensor) -> None:
    """Give ``rows`` ``[N, C]`` (N > 0) to ``accumulator``: queued in the open stream, else walked now."""
    stream = _open.get()
    if stream is None:
        _walk([(accumulator, rows)])
    else:
        stream._queued.append((accumulator, rows))


def _memory(rows: torch.Tensor) -> tuple[Any, ...] | None:
    """What identifies the memory ``rows`` occupy (``None``: not shareable, i.e. not contiguous)."""
    if not rows.is_contiguous():
        return None
    return rows.device, rows.dtype, rows.data_ptr(), rows.numel()


def _groups(queued: list[tuple[RowAccumulator, torch.Tensor]]) -> list[list[tuple[RowAccumulator, torch.Tensor]]]:
    """Queued rows grouped by memory, in the order first queued; members whose channel count does
    not divide the group's largest walk alone."""
    groups: dict[Any, list[tuple[RowAccumulator, torch.Tensor]]] = {}
    for index, (accumulator, rows) in enumerate(queued):
        key = _memory(rows)
        if key is None or any(acc is accumulator for acc, _ in groups.get(key, ())):
            key = ("alone", index)  # (the same rows given twice to one accumulator: two walks)
        groups.setdefault(key, []).append((accumulator, rows))
    result = []
    for group in groups.values():
        widest = max(acc.dim for acc, _ in group)
        result.append([(acc, rows) for acc, rows in group if widest % acc.dim == 0])
        result.extend([(acc, rows)] for acc, rows in group if widest % acc.dim != 0)
    return result


def _walk(group: list[tuple[RowAccumulator, torch.Tensor]]) -> None:
    """Walk the rows of ``group`` (the same memory) once, block by block, for every accumulator."""
    rows = group[0][1]
    sources = {id(acc): _source(acc, group) for acc, _ in group}
    walkers = [(acc, its_rows) for acc, its_rows in group if sources[id(acc)] is None]
    widest = max(acc.dim for acc, _ in walkers)
    if rows.device.type == "cpu":
        block_values = widest * max(1, min(acc.block_values() for acc, _ in walkers) // widest)
    else:
        block_values = widest * DEVICE_BLOCK_ROWS
    for accumulator, its_rows in walkers:
        accumulator._begin(its_rows, block_values // accumulator.dim)
    flat = rows.reshape(-1)
    for start in range(0, flat.numel(), block_values):
        piece = flat[start:start + block_values]
        for accumulator, _ in walkers:
            accumulator._add_block(piece.view(-1, accumulator.dim))
    for accumulator, its_rows in group:  # before the sources' _end releases their walk
        if sources[id(accumulator)] is not None:
            accumulator.follow(sources[id(accumulator)], its_rows.shape[0])
    for accumulator, _ in walkers:
        accumulator._end()


def _source(accumulator: RowAccumulator, group: list[tuple[RowAccumulator, torch.Tensor]]) -> RowAccumulator | None:
    """The member of ``group`` whose walk ``accumulator`` can take its sums from, if any."""
    return next((other for other, _ in group if other is not accumulator and accumulator.can_follow(other)), None)
