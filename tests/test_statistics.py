"""Streaming accumulators against numpy float64 two-pass references."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_graph.core import statistics
from cuvis_graph.core.statistics import MinMaxAccumulator, MomentAccumulator

OFFSET = 1e4


def rel_err(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def sample(n: int, c: int, seed: int, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    """``[n, c]`` rows ``1e4 + scale * z @ A`` with correlated channels."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + np.eye(c)
    return (OFFSET + scale * rng.normal(size=(n, c)) @ mixing).astype(dtype)


def np_cov(x: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(x.astype(np.float64), rowvar=False, ddof=1))


def stream(x: np.ndarray, cuts: list[int], full_covariance: bool = True) -> MomentAccumulator:
    acc = MomentAccumulator(x.shape[1], full_covariance=full_covariance)
    bounds = [0, *cuts, x.shape[0]]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.update(torch.from_numpy(x[lo:hi]))
    return acc


@st.composite
def data_and_splits(draw):
    n = draw(st.integers(2, 300))
    c = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.01, 1.0, 100.0]))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 20)))) if n > 1 else []
    return sample(n, c, seed, scale), cuts


@settings(max_examples=150, deadline=None)
@given(data_and_splits(), st.sampled_from([3, 64, 16384]))
def test_streaming_moments_match_numpy_for_any_split(case, block_rows):
    x, cuts = case
    # small blocks exercise the blocked scatter update inside one batch, too
    with mock.patch.multiple(statistics, BLOCK_VALUES=block_rows * x.shape[1], DIAGONAL_BLOCK_VALUES=block_rows * x.shape[1]):
        acc = stream(x, cuts)
    assert acc.count == x.shape[0]
    assert rel_err(acc.mean, x.mean(axis=0)) <= 1e-10
    assert rel_err(acc.covariance(ddof=1), np_cov(x)) <= 1e-10
    assert rel_err(acc.variance(ddof=1), x.var(axis=0, ddof=1)) <= 1e-10
    assert acc.mean.dtype == torch.float64


@pytest.mark.parametrize("dim", [31, 32, 33, 100])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scatter_of_column_halves_matches_numpy(dim: int, dtype) -> None:
    """From C = SPLIT_SCATTER_MIN_DIM on, CPU blocks update the scatter's upper blocks of the column
    halves of ``[x - s | 1]`` (sum included) and mirror the lower one: mean, covariance and the
    per-channel variance over several blocks (a shorter last one, two updates) equal numpy float64,
    and the covariance is exactly symmetric."""
    assert statistics.SPLIT_SCATTER_MIN_DIM == 32  # dims 31 / 32 straddle the switch
    rows = 2 * (statistics.BLOCK_VALUES // dim) + 37
    x = sample(rows, dim, seed=dim, scale=30.0, dtype=dtype)
    acc = stream(x, cuts=[rows // 3])
    reference = x.astype(np.float64)
    assert rel_err(acc.mean, reference.mean(axis=0)) <= 1e-13
    assert rel_err(acc.covariance(), np_cov(reference)) <= 1e-12
    assert torch.equal(acc.covariance(), acc.covariance().T)
    diagonal = stream(x, cuts=[rows // 3], full_covariance=False)
    assert rel_err(diagonal.variance(), reference.var(axis=0, ddof=1)) <= 1e-12


@settings(max_examples=60, deadline=None)
@given(data_and_splits(), st.integers(0, 2**32 - 1))
def test_merge_equals_one_accumulator_over_all_rows(case, split_seed):
    x, cuts = case
    k = np.random.default_rng(split_seed).integers(1, x.shape[0]) if x.shape[0] > 1 else 1
    left, right = stream(x[:k], cuts=[]), stream(x[k:] * 1.0 + 0.0, cuts=[])
    left.merge(right)
    assert left.count == x.shape[0]
    assert rel_err(left.mean, x.mean(axis=0)) <= 1e-10
    assert rel_err(left.covariance(), np_cov(x)) <= 1e-10


def test_merge_with_empty_and_shifted_states():
    x = sample(80, 5, seed=1, scale=3.0)
    a = stream(x[:30], cuts=[7])
    b = stream(x[30:], cuts=[25])
    # a shift far from a's (but near the data: a shift of 0 at 1e4 loses digits by design)
    b.rebase(torch.full((5,), OFFSET + 40.0, dtype=torch.float64))
    empty = MomentAccumulator(5)
    empty.merge(a)  # empty <- a copies
    empty.merge(b)
    empty.merge(MomentAccumulator(5))  # merging an empty one is a no-op
    assert empty.count == 80
    assert rel_err(empty.mean, x.mean(axis=0)) <= 1e-10
    assert rel_err(empty.covariance(), np_cov(x)) <= 1e-10
    # merging did not alias a's state
    assert a.count == 30
    assert rel_err(a.covariance(), np_cov(x[:30])) <= 1e-10


def test_merge_rejects_other_kinds():
    with pytest.raises(TypeError):
        MomentAccumulator(3).merge(MomentAccumulator(4))
    with pytest.raises(TypeError):
        MomentAccumulator(3).merge(MinMaxAccumulator(3))
    with pytest.raises(TypeError):
        MinMaxAccumulator(3).merge(MinMaxAccumulator(2))


@pytest.mark.parametrize("full_covariance", [True, False])
def test_rebase_is_exact(full_covariance):
    x = sample(50, 4, seed=2, scale=5.0)
    acc = stream(x, cuts=[10, 33], full_covariance=full_covariance)
    new_shift = np.array([0.0, 1e4 + 3.0, -7.5, 2e4])
    acc.rebase(torch.from_numpy(new_shift))
    centred = x - new_shift
    # the state equals sums taken directly around the new shift
    assert rel_err(acc.sum, centred.sum(axis=0)) <= 1e-12
    second = centred.T @ centred if full_covariance else (centred**2).sum(axis=0)
    assert rel_err(acc.second, second) <= 1e-12
    assert np.array_equal(acc.shift.numpy(), new_shift)
    # and the statistics are unchanged (up to the cancellation a far shift like 0 brings
    # at a 1e4 offset: ~1e-16 * (1e4 / 5)^2)
    assert rel_err(acc.mean, x.mean(axis=0)) <= 1e-12
    expected = np_cov(x) if full_covariance else x.var(axis=0, ddof=1)
    assert rel_err(acc.covariance(), expected) <= 1e-9


def test_diagonal_mode_gives_the_variances():
    x = sample(120, 6, seed=3, scale=2.0)
    acc = stream(x, cuts=[1, 50, 51], full_covariance=False)
    cov = acc.covariance(ddof=1)
    assert cov.shape == (6,)
    assert rel_err(cov, np.diag(np_cov(x))) <= 1e-10
    assert rel_err(acc.variance(ddof=0), x.var(axis=0, ddof=0)) <= 1e-10
    assert rel_err(acc.scatter, ((x - x.mean(axis=0)) ** 2).sum(axis=0)) <= 1e-10


def test_weights_select_rows():
    rng = np.random.default_rng(4)
    cube = OFFSET + rng.normal(size=(3, 5, 6, 4)) * 10.0  # [B, H, W, C]
    mask = rng.random(size=(3, 5, 6)) < 0.3
    mask[0, 0, :2] = True  # at least two rows
    acc = MomentAccumulator(4)
    mm = MinMaxAccumulator(4)
    for b in range(3):  # one image per update, weights shaped [1, H, W]
        w = torch.from_numpy(mask[b : b + 1].astype(np.int64))
        acc.update(torch.from_numpy(cube[b : b + 1]), w)
        mm.update(torch.from_numpy(cube[b : b + 1]), w)
    rows = cube[mask]
    assert acc.count == mm.count == int(mask.sum())
    assert rel_err(acc.mean, rows.mean(axis=0)) <= 1e-10
    assert rel_err(acc.covariance(), np_cov(rows)) <= 1e-10
    np.testing.assert_array_equal(mm.min.numpy(), rows.min(axis=0))
    np.testing.assert_array_equal(mm.max.numpy(), rows.max(axis=0))


def test_all_zero_weights_add_nothing():
    acc = MomentAccumulator(2)
    acc.update(torch.ones(4, 2), torch.zeros(4))
    assert acc.count == 0
    with pytest.raises(RuntimeError, match="no data"):
        _ = acc.mean


def test_float32_input_with_offset_is_float64_accurate():
    x32 = sample(5000, 8, seed=5, scale=0.5, dtype=np.float32)
    x64 = x32.astype(np.float64)  # exactly the values the accumulator sees
    acc = MomentAccumulator(8)
    for chunk in np.array_split(x32, 7):
        acc.update(torch.from_numpy(chunk))
    assert rel_err(acc.mean, x64.mean(axis=0)) <= 1e-12
    assert rel_err(acc.covariance(), np_cov(x64)) <= 1e-10
    # the reference is not trivially matched: float32 arithmetic is far off at this offset
    naive = torch.from_numpy(x32)
    naive_cov = (naive.T @ naive - naive.shape[0] * torch.outer(naive.mean(0), naive.mean(0))) / (naive.shape[0] - 1)
    assert rel_err(naive_cov.double(), np_cov(x64)) > 1e-3


def test_minmax_matches_numpy_and_merges():
    rng = np.random.default_rng(6)
    x = (OFFSET + rng.normal(size=(2, 9, 4, 5)) * 100.0).astype(np.float32)
    a, b = MinMaxAccumulator(5), MinMaxAccumulator(5)
    a.update(torch.from_numpy(x[0]))
    b.update(torch.from_numpy(x[1]))
    a.merge(b)
    flat = x.reshape(-1, 5).astype(np.float64)
    assert a.count == flat.shape[0]
    assert a.min.dtype == torch.float64
    np.testing.assert_array_equal(a.min.numpy(), flat.min(axis=0))
    np.testing.assert_array_equal(a.max.numpy(), flat.max(axis=0))


def test_errors_on_empty_and_wrong_shapes():
    acc = MomentAccumulator(3)
    with pytest.raises(RuntimeError, match="no data"):
        _ = acc.mean
    with pytest.raises(RuntimeError, match="got 0"):
        acc.covariance()
    acc.update(torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="more than 1 samples"):
        acc.covariance(ddof=1)
    assert torch.equal(acc.covariance(ddof=0), torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="last dimension 3"):
        acc.update(torch.ones(4, 2))
    with pytest.raises(ValueError, match="last dimension 3"):
        MinMaxAccumulator(3).update(torch.ones(2, 5))
