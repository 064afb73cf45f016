"""Batch layout checks and the alternative key names of cuvis.ai (``x``, ``labels``).

Every batch is a dict; ``{"x": ..., "labels": ...}`` is read as ``{"cube": ..., "mask": ...}``
(when both names are present, the primary one wins). Loaders of datamodules written
outside this package are wrapped by :func:`canonical_loader`, so training, statistics and
validation all see the primary names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["BATCH_KEY_ALIASES", "BATCH_LAYOUT", "canonical_batch", "canonical_loader", "CanonicalBatches"]

#: alternative batch key -> primary batch key
BATCH_KEY_ALIASES = {"x": "cube", "labels": "mask"}

BATCH_LAYOUT = ("{'cube': [B,H,W,C] float (or 'x'), 'mask': [B,H,W] int, optional (or 'labels'), "
                "'wavelengths': [C], optional}")


def canonical_batch(batch: Any, where: str) -> dict[str, Any]:
    """``batch`` with primary key names; a batch that is not a dict raises ``TypeError``."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{where}: batches must be dicts {BATCH_LAYOUT}; got a {type(batch).__name__} "
                        "(e.g. a TensorDataset's tuple: give the dataset a __getitem__ returning such a dict)")
    if not any(k in batch for k in BATCH_KEY_ALIASES):
        return batch if isinstance(batch, dict) else dict(batch)
    out = {}
    for key, value in batch.items():
        primary = BATCH_KEY_ALIASES.get(key, key)
        if primary != key and primary in batch:
            continue
        out[primary] = value
    return out


class CanonicalBatches:
    """An iterable of batches (a list, a generator factory...) read through :func:`canonical_batch`."""

    def __init__(self, batches: Iterable[Any], where: str) -> None:
        self.batches, self.where = batches, where

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches:
            yield canonical_batch(batch, self.where)


class _CanonicalCollate:
    """A DataLoader's ``collate_fn`` followed by :func:`canonical_batch` (picklable for workers)."""

    def __init__(self, collate: Any, where: str) -> None:
        self.collate, self.where = collate, where

    def __call__(self, items: Any) -> dict[str, Any]:
        return canonical_batch(self.collate(items), self.where)


def canonical_loader(loader: Any, where: str) -> Any:
    """``loader`` yielding batches with primary key names (a ``DataLoader`` keeps its type)."""
    from torch.utils.data import DataLoader

    if loader is None or isinstance(loader, CanonicalBatches):
        return loader
    if isinstance(loader, DataLoader):
        if not isinstance(loader.collate_fn, _CanonicalCollate):
            loader.collate_fn = _CanonicalCollate(loader.collate_fn, where)
        return loader
    if isinstance(loader, list | tuple) and not loader:
        return loader
    return CanonicalBatches(loader, where)
