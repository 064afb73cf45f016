"""Mergeable streaming accumulators for statistical initialization.

Every accumulator holds *sufficient statistics* in float64, so that

* batches can arrive in any split and give the same result (up to rounding),
* two accumulators merge exactly (``a.merge(b)``), and
* under DDP the per-rank states are summed with one all-reduce (:meth:`all_reduce`).

No accumulator keeps samples: memory is O(C^2) whatever the dataset size.

Moments use a *shift* ``s`` (the first batch's mean) for numerical stability on raw
sensor values (~1e4)::

    n,   S = sum_i (x_i - s),   M = sum_i (x_i - s)(x_i - s)^T
    mean = s + S / n
    scatter = M - S S^T / n            (= sum_i (x_i - mean)(x_i - mean)^T)
    cov = scatter / (n - ddof)

Changing the shift from ``s`` to ``s'`` with ``d = s - s'`` is exact::

    S' = S + n d,   M' = M + d S^T + S d^T + n d d^T
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.distributed as dist

from cuvis_graph.errors import CuvisGraphError

__all__ = [
    "StatisticsError",
    "Accumulator",
    "RowAccumulator",
    "MomentAccumulator",
    "MinMaxAccumulator",
    "distributed_ready",
]

F64 = torch.float64


class StatisticsError(CuvisGraphError, RuntimeError):
    """Statistics that cannot be right (too few samples, non-finite or singular); the fitting
    pass puts the node's name in front of the message."""


def distributed_ready() -> bool:
    """True when a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


#: Values per block on CPU (scatter update, diagonal moments): ``BLOCK_VALUES // C`` rows, e.g.
#: 2048 rows at C = 100, a 1.6 MB float64 block that stays in a 2 MiB L2 cache while the
#: float32->float64 copy, the shift subtraction, the sum and the GEMM read it in turn (8192 rows,
#: 6.5 MB, spilled to L3 and were ~15 % slower; see benchmarks/README.md, P1).
BLOCK_VALUES = 2048 * 100
#: Values per block of the diagonal moments on CPU (element-wise work only: half a scatter block
#: was ~10 % faster).
DIAGONAL_BLOCK_VALUES = BLOCK_VALUES // 2
#: Rows per block on accelerators: fewer, larger kernels.
DEVICE_BLOCK_ROWS = 16384
#: Rows of the first batch whose mean is the shift (independent of the block size). Any shift is
#: exact algebra; one near the mean only keeps ``M - S S^T / n`` free of cancellation, and the
#: mean of 2048 rows is that (16384 took 1.5 ms of float64 conversion per fit).
SHIFT_ROWS = 2048


def _as_rows(x: torch.Tensor, dim: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Flatten ``[..., C]`` to ``[N, C]`` rows in their own dtype (C = ``dim``), 0/1 ``weights`` applied."""
    if x.shape[-1] != dim:
        raise ValueError(f"expected last dimension {dim}, got shape {tuple(x.shape)}")
    rows = x.detach().reshape(-1, dim)
    if weights is not None:
        rows = rows[weights.detach().reshape(-1).to(rows.device) > 0]
    return rows


#: Scatter GEMMs on CPU for ``C >= SPLIT_SCATTER_MIN_DIM`` columns: ``[G11 G12; . G22]`` on the
#: two column halves (3/4 of the multiply-adds of one ``C x C`` GEMM; ~12 % faster at C = 100).
SPLIT_SCATTER_MIN_DIM = 32


def _scatter_blocks(dim: int, device: torch.device) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` slices of the scatter blocks a GEMM updates: the whole ``[C, C]`` matrix, or
    on CPU (``C >= SPLIT_SCATTER_MIN_DIM``) the blocks ``11``, ``12``, ``22`` of the halves (``21 = 12^T``)."""
    if device.type != "cpu" or dim < SPLIT_SCATTER_MIN_DIM:
        return [(slice(None), slice(None))]
    a, b = slice(0, dim // 2), slice(dim // 2, dim)
    return [(a, a), (a, b), (b, b)]


class Accumulator(ABC):
    """Streaming statistic: ``update`` with batches, ``merge`` exactly, ``all_reduce`` over ranks."""

    @abstractmethod
    def update(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add the rows of ``x`` (``[..., C]``); ``weights`` (``[...]``, 0/1) selects rows."""

    @abstractmethod
    def merge(self, other: Accumulator) -> None:
        """Fold another accumulator of the same kind into this one (exact)."""

    def affine_(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Become the statistic of ``a * x + b`` (per channel) instead of ``x``, where supported."""
        raise TypeError(f"{type(self).__name__} cannot fold an affine map of its input")

    @abstractmethod
    def all_reduce(self) -> None:
        """Combine the states of all DDP ranks in place; a no-op in a single process."""

    @property
    @abstractmethod
    def count(self) -> int:
        """Number of rows seen."""


class RowAccumulator(Accumulator):
    """An accumulator of ``[N, C]`` rows (C = ``dim``) that reads them block by block.

    ``update`` hands the rows to :func:`cuvis_graph.core.row_stream.feed`, which walks them
    (``_begin``, ``_add_block`` per block of ``block_values`` values, ``_end``) either at once
    or, inside a :class:`~cuvis_graph.core.row_stream.RowStream`, block-interleaved with the
    other accumulators that read the same rows, so each block is read from memory once.
    """

    dim: int
    n: int

    def update(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        from cuvis_graph.core.row_stream import feed

        rows = _as_rows(x, self.dim, weights)
        if rows.shape[0] > 0:
            feed(self, rows)

    def block_values(self) -> int:
        """Values per CPU block this accumulator works best with (a cache-sized block)."""
        return BLOCK_VALUES

    @abstractmethod
    def _begin(self, rows: torch.Tensor, block_rows: int) -> None:
        """Start a walk over ``rows`` ``[N, C]`` in blocks of at most ``block_rows`` rows."""

    @abstractmethod
    def _add_block(self, block: torch.Tensor) -> None:
        """Add one block ``[b, C]`` of the rows given to ``_begin``."""

    @abstractmethod
    def _end(self) -> None:
        """Finish the walk: fold what the blocks gave into the state."""

    def can_follow(self, source: RowAccumulator) -> bool:
        """Whether this accumulator can take its sums from ``source``'s walk over the same rows
        instead of walking them (see :meth:`follow`)."""
        return False

    def follow(self, source: RowAccumulator, rows: int) -> None:
        """Add the ``rows`` rows ``source`` just walked, from ``source``'s walk."""
        raise TypeError(f"{type(self).__name__} walks its rows itself")


class MomentAccumulator(RowAccumulator):
    """Count, mean and (co)variance of ``C``-dimensional rows, in float64 with a shift.

    Args:
        dim: number of channels C.
        full_covariance: keep the ``[C, C]`` scatter matrix; otherwise only its diagonal.
    """

    def __init__(self, dim: int, full_covariance: bool = True) -> None:
        self.dim = int(dim)
        self.full_covariance = full_covariance
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sum = torch.zeros(self.dim, dtype=F64)
        shape = (self.dim, self.dim) if full_covariance else (self.dim,)
        self.second = torch.zeros(shape, dtype=F64)

    # -- streaming (blocks: see RowAccumulator) -------------------------------------------
    def block_values(self) -> int:
        return BLOCK_VALUES if self.full_covariance else DIAGONAL_BLOCK_VALUES

    def _begin(self, rows: torch.Tensor, block_rows: int) -> None:
        """Set the shift (first rows' mean) once; allocate the float64 block buffer ``[b, C + 1]``
        (full: its last column is constant 1, see :meth:`_add_block`) and this walk's sums."""
        self._to(rows.device)
        if self.shift is None:
            self.shift = rows[:SHIFT_ROWS].mean(dim=0, dtype=F64)
        self.n += rows.shape[0]
        c, device = self.dim, rows.device
        buffer = torch.empty(min(block_rows, rows.shape[0]), c + 1, dtype=F64, device=device)
        buffer[:, c] = 1.0
        self._buffer = buffer
        if self.full_covariance:
            self._gram = torch.zeros(c + 1, c + 1, dtype=F64, device=device)
            self._pairs = _scatter_blocks(c + 1, device)
            self._products = self._gemm_operands(buffer)  # views made once, for every full-size block
        else:
            self._gram = torch.zeros(2, c, dtype=F64, device=device)  # rows: sum, sum of squares

    def _add_block(self, block: torch.Tensor) -> None:
        """Full: ``[[M, S], [S^T, n]] += [x - s | 1]^T [x - s | 1]`` (the GEMMs give the sum with the
        scatter; only the upper blocks of the column halves on CPU, see ``_scatter_blocks``).
        Diagonal: ``S += sum (x - s)``, ``M += sum (x - s)^2``. The block is copied into the float64
        buffer and shifted there, in cache (a fused mixed-dtype ``torch.sub(..., out=)`` is slower)."""
        c, m = self.dim, block.shape[0]
        augmented = self._buffer[:m]
        centred = augmented[:, :c]
        centred.copy_(block)
        centred.sub_(self.shift)
        if not self.full_covariance:
            ones = augmented[:, c]
            self._gram[0].addmv_(centred.T, ones)
            self._gram[1].addmv_(centred.mul_(centred).T, ones)  # squares in place
            return
        products = self._products if m == self._buffer.shape[0] else self._gemm_operands(augmented)
        for out, left, right in products:
            out.addmm_(left, right)

    def _gemm_operands(self, augmented: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(out, left, right)`` views of the scatter blocks' GEMMs ``out += left @ right`` on ``augmented``."""
        return [(self._gram[i, j], augmented[:, i].T, augmented[:, j]) for i, j in self._pairs]

    def _end(self) -> None:
        c, gram = self.dim, self._gram
        if not self.full_covariance:
            self.sum += gram[0]
            self.second += gram[1]
        else:
            if len(self._pairs) > 1:  # the lower block mirrors the upper one
                upper_rows, upper_cols = self._pairs[1]
                gram[upper_cols, upper_rows] = gram[upper_rows, upper_cols].T
            self.sum += gram[:c, c]
            self.second += gram[:c, :c]
        self._buffer = self._products = None

    def can_follow(self, source: RowAccumulator) -> bool:
        """Diagonal moments follow a full-covariance accumulator of the same rows and shift."""
        return (not self.full_covariance and isinstance(source, MomentAccumulator) and source.full_covariance
                and source.dim == self.dim and (self.shift is None or (
                    source.shift is not None and torch.equal(self.shift, source.shift.to(self.shift.device)))))

    def follow(self, source: RowAccumulator, rows: int) -> None:
        """Add the ``rows`` rows ``source`` just walked: ``S`` and the diagonal of ``M`` of its walk
        (exact: the same sums, each from the scatter GEMM)."""
        assert isinstance(source, MomentAccumulator)
        self._to(source.sum.device)
        if self.shift is None:
            self.shift = source.shift.clone()
        c = self.dim
        self.n += rows
        self.sum += source._gram[:c, c]
        self.second += torch.diagonal(source._gram[:c, :c])

    def _to(self, device: torch.device) -> None:
        if self.sum.device != device:
            self.sum = self.sum.to(device)
            self.second = self.second.to(device)
            if self.shift is not None:
                self.shift = self.shift.to(device)

    def rebase(self, new_shift: torch.Tensor) -> None:
        """Express the state relative to ``new_shift`` (exact algebra, see module doc)."""
        new_shift = new_shift.to(device=self.sum.device, dtype=F64)
        if self.shift is None:
            self.shift = new_shift.clone()
            return
        d = self.shift - new_shift
        if self.full_covariance:
            self.second += torch.outer(d, self.sum) + torch.outer(self.sum, d)
            self.second += self.n * torch.outer(d, d)
        else:
            self.second += 2 * d * self.sum + self.n * d * d
        self.sum += self.n * d
        self.shift = new_shift.clone()

    def affine_(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Become the moments of ``y = a * x + b`` (per channel, ``[C]`` or ``[1]``), exactly::

            s' = a s + b,   S' = a S,   M' = diag(a) M diag(a)

        since ``y - s' = a (x - s)``; hence ``mean' = a mean + b``, ``Sigma' = diag(a) Sigma diag(a)``.
        """
        if self.shift is None:
            return
        a = scale.to(device=self.sum.device, dtype=F64).expand(self.dim)
        b = offset.to(device=self.sum.device, dtype=F64).expand(self.dim)
        self.shift = a * self.shift + b
        self.sum = a * self.sum
        self.second = a[:, None] * self.second * a[None, :] if self.full_covariance else a * a * self.second

    def merge(self, other: Accumulator) -> None:
        if not isinstance(other, MomentAccumulator) or other.dim != self.dim:
            raise TypeError("can only merge a MomentAccumulator of the same dimension")
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.shift = other.n, other.shift.clone()
            self.sum, self.second = other.sum.clone(), other.second.clone()
            return
        other_copy = MomentAccumulator(self.dim, self.full_covariance)
        other_copy.n, other_copy.shift = other.n, other.shift.clone()
        other_copy.sum, other_copy.second = other.sum.clone(), other.second.clone()
        other_copy.rebase(self.shift)
        self.n += other_copy.n
        self.sum += other_copy.sum
        self.second += other_copy.second

    def all_reduce(self) -> None:
        if not distributed_ready():
            return
        # A common shift first (the count-weighted mean of the ranks' means), then sums.
        count = torch.tensor([float(self.n)], dtype=F64, device=self.sum.device)
        local_mean = self.mean if self.n > 0 else torch.zeros(self.dim, dtype=F64)
        weighted = local_mean.to(self.sum.device) * count
        dist.all_reduce(count)
        dist.all_reduce(weighted)
        common = weighted / count.clamp_min(1.0)
        self.rebase(common)
        n = torch.tensor([float(self.n)], dtype=F64, device=self.sum.device)
        for t in (n, self.sum, self.second):
            dist.all_reduce(t)
        self.n = int(round(n.item()))

    # -- results ---------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self.n

    def _require_data(self) -> None:
        if self.n == 0:
            raise StatisticsError("no data was accumulated")

    @property
    def mean(self) -> torch.Tensor:
        """``[C]`` float64 mean."""
        self._require_data()
        return self.shift + self.sum / self.n

    @property
    def scatter(self) -> torch.Tensor:
        """``[C, C]`` (or ``[C]`` diagonal) float64 sum of centred outer products."""
        self._require_data()
        if self.full_covariance:
            return self.second - torch.outer(self.sum, self.sum) / self.n
        return self.second - self.sum * self.sum / self.n

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """Covariance ``scatter / (n - ddof)``; ``[C, C]`` or its diagonal ``[C]``."""
        if self.n - ddof <= 0:
            raise StatisticsError(f"need more than {ddof} samples for a covariance, got {self.n}")
        return self.scatter / (self.n - ddof)

    def require_rank(self, rank: int, what: str) -> None:
        """Refuse fewer than ``rank + 1`` samples: the centred scatter of ``n`` rows has rank
        ``<= n - 1``, so ``what`` (e.g. a full-rank ``C x C`` covariance) needs ``n >= rank + 1``."""
        if self.n < rank + 1:
            raise StatisticsError(f"{what} needs at least {rank + 1} samples (pixels), got n={self.n} for "
                                  f"C={self.dim} channels: the covariance would be singular; use more or larger "
                                  "training scenes (or fewer channels)")

    def variance(self, ddof: int = 1) -> torch.Tensor:
        """Per-channel variance ``[C]``."""
        cov = self.covariance(ddof)
        return torch.diagonal(cov) if self.full_covariance else cov


class MinMaxAccumulator(RowAccumulator):
    """Per-channel minimum and maximum of ``C``-dimensional rows (exact under merge)."""

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.n = 0
        self.min = torch.full((self.dim,), float("inf"), dtype=F64)
        self.max = torch.full((self.dim,), float("-inf"), dtype=F64)

    def _begin(self, rows: torch.Tensor, block_rows: int) -> None:
        if self.min.device != rows.device:
            self.min, self.max = self.min.to(rows.device), self.max.to(rows.device)
        self.n += rows.shape[0]
        self._lo = self._hi = None

    def _add_block(self, block: torch.Tensor) -> None:
        """CPU: fold the block element-wise into two tiles of its shape (``lo = minimum(lo, block)``,
        vectorised, in cache; a shorter last block folds into the first rows); reduced over rows
        in ``_end``. Elsewhere: one ``aminmax(dim=0)`` per block."""
        if block.device.type != "cpu":
            lo, hi = torch.aminmax(block, dim=0)
            self._fold(lo, hi)
        elif self._lo is None:
            self._lo, self._hi = block.clone(), block.clone()
        else:
            m = block.shape[0]
            torch.minimum(self._lo[:m], block, out=self._lo[:m])
            torch.maximum(self._hi[:m], block, out=self._hi[:m])

    def _end(self) -> None:
        if self._lo is not None:
            self._fold(self._lo.amin(dim=0), self._hi.amax(dim=0))
        self._lo = self._hi = None

    def _fold(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min = torch.minimum(self.min, lo.to(F64))
        self.max = torch.maximum(self.max, hi.to(F64))

    def affine_(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Become the min/max of ``y = a * x + b`` (per channel): ``a min + b`` and ``a max + b``,
        swapped where ``a < 0``."""
        a = scale.to(device=self.min.device, dtype=F64).expand(self.dim)
        b = offset.to(device=self.min.device, dtype=F64).expand(self.dim)
        lo, hi = a * self.min + b, a * self.max + b
        self.min, self.max = torch.where(a < 0, hi, lo), torch.where(a < 0, lo, hi)

    def merge(self, other: Accumulator) -> None:
        if not isinstance(other, MinMaxAccumulator) or other.dim != self.dim:
            raise TypeError("can only merge a MinMaxAccumulator of the same dimension")
        self.n += other.n
        self.min = torch.minimum(self.min, other.min.to(self.min.device))
        self.max = torch.maximum(self.max, other.max.to(self.max.device))

    def all_reduce(self) -> None:
        if not distributed_ready():
            return
        n = torch.tensor([float(self.n)], dtype=F64, device=self.min.device)
        dist.all_reduce(n)
        dist.all_reduce(self.min, op=dist.ReduceOp.MIN)
        dist.all_reduce(self.max, op=dist.ReduceOp.MAX)
        self.n = int(round(n.item()))

    @property
    def count(self) -> int:
        return self.n
