"""Accumulators that read the same rows inside a RowStream: each block read once, results exact.

References are numpy float64 (moments) and numpy's own min/max (exact); the same accumulators
fed one by one outside a stream give the results too.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch

from cuvis_graph.core import statistics
from cuvis_graph.core.row_stream import RowStream
from cuvis_graph.core.statistics import MinMaxAccumulator, MomentAccumulator


def rel(a: torch.Tensor, b: np.ndarray) -> float:
    a = a.numpy()
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def cubes(seed: int = 0, parts: int = 3, rows: int = 5000, dim: int = 40) -> list[np.ndarray]:
    """Raw-sensor-like float32 rows (~1e4, std 100), in ``parts`` batches of ``[rows / 100, 100, C]``."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(5e3, 2e4, size=dim)
    return [(offsets + 100 * rng.standard_normal((rows // 100, 100, dim))).astype(np.float32) for _ in range(parts)]


def feed(parts: list[np.ndarray], accumulators_of: list, streamed: bool) -> None:
    """Give every batch to every accumulator (``(accumulator, reshape)`` pairs), in a stream or not."""
    for part in parts:
        x = torch.from_numpy(part)
        with RowStream() if streamed else contextlib.nullcontext():
            for acc, per_channel in accumulators_of:
                acc.update(x if per_channel else x.reshape(-1, 1))


@pytest.mark.parametrize("streamed", [True, False])
def test_a_normalizer_and_rx_reading_the_same_rows_get_exact_statistics(streamed: bool) -> None:
    """Per-channel min/max, one global min/max, full moments and diagonal moments (per channel and
    global) of the same rows, several batches: min/max equal numpy exactly, moments to 1e-12."""
    parts = cubes()
    dim = parts[0].shape[-1]
    minmax, flat_minmax = MinMaxAccumulator(dim), MinMaxAccumulator(1)
    full, diagonal, flat_diagonal = MomentAccumulator(dim), MomentAccumulator(dim, False), MomentAccumulator(1, False)
    members = [(minmax, True), (flat_minmax, False), (diagonal, True), (full, True), (flat_diagonal, False)]
    # blocks smaller than a batch: several blocks per walk, a shorter last one
    with mock.patch.object(statistics, "BLOCK_VALUES", 1536 * dim // 40), \
            mock.patch.object(statistics, "DIAGONAL_BLOCK_VALUES", 512):
        feed(parts, members, streamed)
    rows = np.concatenate([p.reshape(-1, dim) for p in parts]).astype(np.float64)
    np.testing.assert_array_equal(minmax.min.numpy(), rows.min(0))
    np.testing.assert_array_equal(minmax.max.numpy(), rows.max(0))
    np.testing.assert_array_equal(flat_minmax.min.numpy(), [rows.min()])
    np.testing.assert_array_equal(flat_minmax.max.numpy(), [rows.max()])
    assert rel(full.mean, rows.mean(0)) < 1e-12 and rel(full.covariance(), np.cov(rows, rowvar=False)) < 1e-12
    assert rel(diagonal.mean, rows.mean(0)) < 1e-12 and rel(diagonal.variance(), rows.var(0, ddof=1)) < 1e-12
    assert rel(flat_diagonal.variance(), np.array([rows.var(ddof=1)])) < 1e-12
    assert {acc.count for acc in (minmax, full, diagonal)} == {rows.shape[0]}
    assert {acc.count for acc in (flat_minmax, flat_diagonal)} == {rows.size}


def test_the_stream_reads_each_block_once_for_all_and_the_diagonal_follows_the_scatter() -> None:
    """In a stream, block k of the rows goes to every walking accumulator before block k + 1 (while
    it is in cache); the diagonal moments of the same rows never walk them."""
    x = torch.from_numpy(cubes(parts=1, rows=4000)[0])
    dim = x.shape[-1]
    minmax, full, diagonal = MinMaxAccumulator(dim), MomentAccumulator(dim), MomentAccumulator(dim, False)
    calls: list[tuple[str, int]] = []

    def recording(name, method):
        def add_block(block):
            calls.append((name, block.data_ptr()))
            return method(block)
        return add_block

    with mock.patch.object(statistics, "BLOCK_VALUES", 1000 * dim), \
            mock.patch.object(minmax, "_add_block", recording("minmax", minmax._add_block)), \
            mock.patch.object(full, "_add_block", recording("full", full._add_block)), \
            mock.patch.object(diagonal, "_add_block", recording("diagonal", diagonal._add_block)), RowStream():
        for acc in (minmax, diagonal, full):
            acc.update(x)
        assert calls == []  # queued until the stream closes
    starts = [x.data_ptr() + k * 1000 * dim * 4 for k in range(4)]
    assert calls == [(name, start) for start in starts for name in ("minmax", "full")]
    rows = x.reshape(-1, dim).double().numpy()
    assert rel(diagonal.variance(), rows.var(0, ddof=1)) < 1e-12 and diagonal.count == 4000


def test_rows_of_other_memory_walk_alone_and_an_error_inside_the_stream_adds_nothing() -> None:
    """Masked rows (a copy) and rows of another tensor are walked on their own, exactly; an
    exception raised inside the stream leaves every accumulator as it was."""
    a, b = (torch.from_numpy(c) for c in cubes(seed=1, parts=2, rows=3000))
    keep = torch.rand(a.shape[:-1], generator=torch.Generator().manual_seed(0)) > 0.3
    masked, other = MomentAccumulator(a.shape[-1]), MinMaxAccumulator(a.shape[-1])
    with RowStream():
        masked.update(a, keep)
        other.update(b)
    rows = a.reshape(-1, a.shape[-1])[keep.reshape(-1)].double().numpy()
    assert rel(masked.covariance(), np.cov(rows, rowvar=False)) < 1e-12 and masked.count == rows.shape[0]
    np.testing.assert_array_equal(other.max.numpy(), b.reshape(-1, b.shape[-1]).double().numpy().max(0))
    twice = MomentAccumulator(a.shape[-1])
    with RowStream():
        twice.update(a)
        twice.update(a)  # the same rows twice: counted twice, as outside a stream
    assert twice.count == 2 * a.shape[0] * a.shape[1]
    assert rel(twice.covariance(), np.cov(np.concatenate([a.reshape(-1, a.shape[-1]).double().numpy()] * 2),
                                          rowvar=False)) < 1e-12
    before = (masked.n, masked.sum.clone(), other.n, other.min.clone())
    with pytest.raises(RuntimeError, match="stop"), RowStream():
        masked.update(a)
        other.update(a)
        raise RuntimeError("stop")
    assert (masked.n, other.n) == (before[0], before[2])
    assert torch.equal(masked.sum, before[1]) and torch.equal(other.min, before[3])
