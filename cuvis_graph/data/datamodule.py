"""Datamodules yielding dict batches for graphs.

Batch layout::

    cube         [B, H, W, C] float32 (finite)
    mask         [B, H, W]    int64   (optional; 0 = background, >0 = anomaly/class id)
    wavelengths  [C]          float32 (optional, nm; finite, strictly increasing)

Masks are label maps, not probabilities: any non-negative integer is accepted (``255``
marks an anomaly as well as ``1``; label mappers read class ids), while negative,
fractional or non-finite mask values are refused naming the file or sample, as are
non-finite cube values (:mod:`cuvis_graph.data.checks`).

A datamodule *declares* its channel count, batch keys and wavelengths
(:meth:`GraphDataModule.data_spec`) so the compiler can check a graph before any data
is read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.data.batch_keys import canonical_batch, canonical_loader
from cuvis_graph.data.checks import (
    DataError,
    integer_range_problem,
    mask_problem,
    nonfinite_problem,
    wavelength_problem,
)
from cuvis_graph.train.distributed import ShardSampler, distributed_shape

__all__ = ["GraphDataModule", "ArrayDataModule", "CubeDataset", "collate_cubes", "statistics_loader",
           "spec_from_first_batch"]

log = logging.getLogger(__name__)


class CubeDataset(Dataset):
    """In-memory cubes ``[N, H, W, C]`` (or a list of ``[H, W, C]``) with optional masks.

    The data is checked once, here (see :mod:`cuvis_graph.data.checks`): non-finite cube
    values, masks with other than non-negative integers and non-finite, duplicated or
    decreasing wavelengths raise :class:`~cuvis_graph.data.checks.DataError` naming the
    sample (``source`` in front, e.g. the file the arrays came from); integer cubes beyond
    2^24 are warned about.
    """

    def __init__(self, cubes: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | None = None,
                 wavelengths: np.ndarray | None = None, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        for i, c in enumerate(cubes):
            problem = integer_range_problem(np.asarray(c))
            if problem:
                log.warning("%ssample %d: %s", where, i, problem)
        self.cubes = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in cubes]
        for i, m in enumerate(masks if masks is not None else []):
            problem = mask_problem(np.asarray(m))
            if problem:
                raise DataError(f"{where}sample {i}: {problem}")
        if wavelengths is not None and (problem := wavelength_problem(np.asarray(wavelengths))):
            raise DataError(f"{where}wavelengths: {problem}")
        self.masks = None if masks is None else [torch.as_tensor(np.asarray(m)).long() for m in masks]
        #: ``[N, H, W, C]`` when all cubes share a shape (``cubes`` are then views of it).
        self.stacked: torch.Tensor | None = None
        if self.cubes and all(c.shape == self.cubes[0].shape for c in self.cubes):
            self.stacked = torch.stack(self.cubes)
            self.cubes = list(self.stacked.unbind(0))
            if self.masks is not None and all(m.shape == self.masks[0].shape for m in self.masks):
                self.stacked_masks = torch.stack(self.masks)
                self.masks = list(self.stacked_masks.unbind(0))
        self.wavelengths = None if wavelengths is None else torch.as_tensor(np.asarray(wavelengths), dtype=torch.float32)
        for i, c in enumerate(self.cubes):
            if c.ndim != 3:
                raise ValueError(f"cube {i} has shape {tuple(c.shape)}; expected [H, W, C]")
            if self.masks is not None and self.masks[i].shape != c.shape[:2]:
                raise ValueError(f"mask {i} has shape {tuple(self.masks[i].shape)}; expected {tuple(c.shape[:2])}")
            problem = nonfinite_problem(c)
            if problem:
                raise DataError(f"{where}sample {i}: {problem}")

    def __len__(self) -> int:
        return len(self.cubes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"cube": self.cubes[index]}
        if self.masks is not None:
            item["mask"] = self.masks[index]
        if self.wavelengths is not None:
            item["wavelengths"] = self.wavelengths
        return item


class InMemoryBatches:
    """Batches as zero-copy slices of a stacked :class:`CubeDataset` (statistics passes)."""

    def __init__(self, dataset: CubeDataset, start: int, stop: int, batch_size: int) -> None:
        self.dataset, self.start, self.stop, self.batch_size = dataset, start, stop, batch_size

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self):
        ds = self.dataset
        for i in range(self.start, self.stop, self.batch_size):
            j = min(i + self.batch_size, self.stop)
            batch = {"cube": ds.stacked[i:j]}
            if ds.masks is not None:
                batch["mask"] = ds.stacked_masks[i:j] if hasattr(ds, "stacked_masks") else torch.stack(ds.masks[i:j])
            if ds.wavelengths is not None:
                batch["wavelengths"] = ds.wavelengths
            yield batch


def _contiguous_range(dataset: Dataset) -> tuple[CubeDataset, int, int] | None:
    """``(base, start, stop)`` when ``dataset`` is a stacked CubeDataset or a contiguous Subset of one."""
    if isinstance(dataset, CubeDataset) and dataset.stacked is not None:
        return dataset, 0, len(dataset)
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, CubeDataset):
        idx = list(dataset.indices)
        if dataset.dataset.stacked is not None and idx and idx == list(range(idx[0], idx[0] + len(idx))):
            return dataset.dataset, idx[0], idx[0] + len(idx)
    return None


def collate_cubes(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``cube``/``mask`` to a batch; ``wavelengths`` stays ``[C]`` (items are dicts;
    ``x`` / ``labels`` are read as ``cube`` / ``mask``)."""
    items = [canonical_batch(it, "dataset item") for it in items]
    batch: dict[str, Any] = {}
    for key in items[0]:
        if key == "wavelengths":
            batch[key] = items[0][key]
        else:
            batch[key] = torch.stack([it[key] for it in items])
    return batch


class GraphDataModule:
    """Base datamodule: subclasses fill ``train_set``/``val_set``/``test_set`` in ``setup``.

    It declares its data (:meth:`data_spec`) and serves loaders with the hooks of a
    LightningDataModule (``prepare_data``, ``setup``, ``*_dataloader``, ``teardown``) without
    importing Lightning, so a pipeline validates without it; training hands Lightning
    :meth:`to_lightning`, a ``LightningDataModule`` that forwards to this object.

    Attributes:
        n_channels: declared channel count C (``None`` if unknown before reading).
        batch_keys: keys every batch carries.
        wavelengths: ``[C]`` band centres in nm, or ``None``.

    Written the cuvis.ai way, a subclass may assign ``self.train_dataset`` /
    ``self.val_dataset`` (the same attributes as ``train_set`` / ``val_set``) and override
    ``train_dataloader()`` / ``val_dataloader()``: statistics are then fitted from the
    overridden training loader, batch keys ``x`` / ``labels`` are read as ``cube`` / ``mask``,
    a batch that is not a dict raises one error naming the keys, and when ``n_channels`` is
    not declared the channel count and batch keys come from the first training batch.
    """

    _LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
                "statistics_dataloader")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("cuvis_graph."):
            return  # the built-in datamodules yield the primary keys
        for method in cls._LOADERS:
            if method in cls.__dict__:
                setattr(cls, method, _canonical_method(cls.__dict__[method], f"{cls.__name__}.{method}()"))

    train_dataset = property(lambda self: self.train_set, lambda self, value: setattr(self, "train_set", value),
                             doc="cuvis.ai name of ``train_set``.")
    val_dataset = property(lambda self: self.val_set, lambda self, value: setattr(self, "val_set", value),
                           doc="cuvis.ai name of ``val_set``.")
    test_dataset = property(lambda self: self.test_set, lambda self, value: setattr(self, "test_set", value),
                            doc="cuvis.ai name of ``test_set``.")

    def __init__(self, batch_size: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.n_channels: int | None = None
        self.batch_keys: frozenset[str] = frozenset({"cube"})
        self.wavelengths: np.ndarray | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download or write once per node (nothing by default)."""

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``)."""

    def teardown(self, stage: str | None = None) -> None:
        """Release what ``setup`` created (nothing by default)."""

    def to_lightning(self) -> Any:
        """This datamodule as a ``lightning.pytorch.LightningDataModule`` (imports Lightning)."""
        from cuvis_graph.train.lightning_data import as_lightning_datamodule

        return as_lightning_datamodule(self)

    def data_spec(self) -> DataSpec:
        if self.n_channels is None:
            self._declare_from_first_batch()
        wl = None if self.wavelengths is None else tuple(float(w) for w in self.wavelengths)
        return DataSpec(n_channels=self.n_channels, batch_keys=frozenset(self.batch_keys), wavelengths=wl)

    def _loader(self, dataset: Dataset | None, shuffle: bool, shard: bool = True) -> DataLoader | list:
        if dataset is None or len(dataset) == 0:
            return []
        rank, world = distributed_shape()
        if world > 1 and shard and not shuffle:  # evaluation under DDP: every item exactly once across ranks
            return DataLoader(dataset, batch_size=self.batch_size, sampler=ShardSampler(dataset, world, rank),
                              num_workers=self.num_workers, collate_fn=collate_cubes,
                              persistent_workers=self.num_workers > 0)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_cubes, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def _declare_from_first_batch(self) -> None:
        """``n_channels``, ``batch_keys`` (and ``wavelengths``) from the first training batch,
        for subclasses that declare none (one batch is read)."""
        if self.train_set is None and type(self).train_dataloader is GraphDataModule.train_dataloader:
            return
        batch = next(iter(statistics_loader(self)()), None)
        if batch is None or not hasattr(batch.get("cube"), "shape"):
            return
        self.n_channels = int(batch["cube"].shape[-1])
        self.batch_keys = frozenset(self.batch_keys) | frozenset(batch)
        if self.wavelengths is None and batch.get("wavelengths") is not None:
            self.wavelengths = np.asarray(batch["wavelengths"], dtype=np.float32).reshape(-1)

    def statistics_dataloader(self) -> DataLoader | InMemoryBatches:
        """Training data in a fixed order, for statistical initialization (zero-copy when in memory)."""
        span = _contiguous_range(self.train_set) if self.train_set is not None else None
        if span is not None:
            return InMemoryBatches(*span, batch_size=self.batch_size)
        return self._loader(self.train_set, shuffle=False, shard=False)  # sharded by batch in training

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set or self.val_set, shuffle=False)

    @classmethod
    def from_arrays(cls, cubes: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | None = None,
                    wavelengths: np.ndarray | None = None, batch_size: int = 4, val_fraction: float = 0.0,
                    val_on_train: bool = False, seed: int = 0) -> ArrayDataModule:
        """A datamodule over in-memory cubes ``[N, H, W, C]`` (or one ``[H, W, C]`` cube)."""
        return ArrayDataModule(cubes, masks, wavelengths, batch_size=batch_size, val_fraction=val_fraction,
                               val_on_train=val_on_train, seed=seed)


def _canonical_method(method: Any, where: str) -> Any:
    @functools.wraps(method)
    def loader(self: Any, *args: Any, **kwargs: Any) -> Any:
        return canonical_loader(method(self, *args, **kwargs), where)

    return loader


def _defining_class(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in klass.__dict__), None)


def statistics_loader(datamodule: Any) -> Any:
    """The zero-argument callable giving the loader statistics are fitted from.

    ``statistics_dataloader`` (the training data in a fixed order, exact under DDP) when the
    datamodule has one and its ``train_dataloader`` is not overridden below it; otherwise
    ``train_dataloader``: statistics then read exactly what training reads.
    """
    inner = getattr(datamodule, "data", None)  # a Lightning view of a GraphDataModule
    datamodule = inner if isinstance(inner, GraphDataModule) else datamodule
    exact = getattr(datamodule, "statistics_dataloader", None)
    if exact is None:
        return datamodule.train_dataloader
    train_owner = _defining_class(type(datamodule), "train_dataloader")
    stats_owner = _defining_class(type(datamodule), "statistics_dataloader")
    if train_owner is not None and stats_owner is not None and train_owner is not stats_owner \
            and issubclass(train_owner, stats_owner):
        return datamodule.train_dataloader
    return exact


class ArrayDataModule(GraphDataModule):
    """In-memory cubes split into train/val by ``val_fraction`` (seeded permutation).

    ``val_on_train=True`` validates on the training cubes (single-scene anomaly detection,
    where the scene is both what statistics are fitted on and what is scored).
    """

    def __init__(self, cubes, masks=None, wavelengths=None, batch_size: int = 4, val_fraction: float = 0.0,
                 val_on_train: bool = False, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size)
        cubes = np.asarray(cubes) if not isinstance(cubes, list) else cubes
        if isinstance(cubes, np.ndarray) and cubes.ndim == 3:
            cubes = cubes[None]
            masks = None if masks is None else np.asarray(masks)[None]
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(cubes)
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        dataset = CubeDataset(cubes, masks, wavelengths)
        self.train_set = torch.utils.data.Subset(dataset, train_idx)
        self.val_set = dataset if val_on_train else (torch.utils.data.Subset(dataset, val_idx) if n_val else None)
        self.test_set = self.val_set
        self.n_channels = int(dataset.cubes[0].shape[-1])
        self.batch_keys = frozenset({"cube"} | ({"mask"} if masks is not None else set())
                                    | ({"wavelengths"} if wavelengths is not None else set()))
        self.wavelengths = None if wavelengths is None else np.asarray(wavelengths, dtype=np.float32)


def spec_from_first_batch(datamodule: Any) -> DataSpec:
    """The :class:`DataSpec` of a datamodule that declares none (e.g. a plain Lightning
    ``LightningDataModule``): channels ``C`` of the first training batch's ``cube [B, H, W, C]``,
    its keys as they are (``x``/``labels`` are read as ``cube``/``mask`` by ``GraphDataModule``
    only), and its ``wavelengths`` when present. Reads one batch."""
    name = type(datamodule).__name__
    where = f"{name}.train_dataloader()"
    try:
        batch = next(iter(datamodule.train_dataloader()), None)
    except Exception as exc:  # a loader that needs setup(), a missing file...
        raise DataError(f"{where}: could not read the first training batch to learn the channel count "
                        f"({type(exc).__name__}: {exc}); call setup('fit') first, or use a GraphDataModule "
                        "that declares n_channels") from exc
    if batch is None:
        raise DataError(f"{where}: the training loader is empty, so the channel count cannot be learnt from it")
    canonical_batch(batch, where)  # a batch that is not a dict: one clear error
    if "cube" not in batch and "x" in batch and not isinstance(datamodule, GraphDataModule):
        raise DataError(f"{where}: batches of a {name} need the key 'cube' (and 'mask' for labels); the names "
                        "'x'/'labels' are read as those by GraphDataModule subclasses only")
    cube = batch.get("cube")
    if not hasattr(cube, "shape") or len(cube.shape) < 1:
        raise DataError(f"{where}: the first batch has no 'cube' tensor [B, H, W, C] (keys: {sorted(batch)})")
    wavelengths = batch.get("wavelengths")
    wl = None if wavelengths is None else tuple(float(w) for w in np.asarray(wavelengths).reshape(-1))
    return DataSpec(n_channels=int(cube.shape[-1]), batch_keys=frozenset(batch), wavelengths=wl)
