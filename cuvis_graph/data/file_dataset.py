"""Scenes read lazily from cube files: one item per file, or any window of it."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cuvis_graph.data.checks import integer_range_problem, nonfinite_problem
from cuvis_graph.data.readers import HyperspectralCube, ReaderError, read_cube

__all__ = ["FileCubeDataset"]

log = logging.getLogger(__name__)


class FileCubeDataset(Dataset):
    """Scenes from cube files: items ``{"cube": [H,W,C] float32, "mask"?: [H,W] int64, "wavelengths"?: [C]}``.

    Opened cubes are cached: memory-mapped ones always (they hold no data), loaded ones
    (``.npz``, MATLAB v5) in a small LRU of ``max_loaded`` files. :meth:`read_region`
    reads just a window (used by :class:`~cuvis_graph.data.tiling.TiledDataset`).

    Args:
        files: the cube files.
        bands: channel indices kept from every file (``None``: all).
        with_mask: put the file's ground truth in the items as ``mask``.
        wavelengths: ``[C]`` (after ``bands``) put in every item, or ``None``.
        read_kwargs: ``key``/``mask_key`` for :func:`read_cube`.
    """

    def __init__(self, files: Sequence[Path], bands: Sequence[int] | None = None, with_mask: bool = False,
                 wavelengths: np.ndarray | None = None, max_loaded: int = 2, **read_kwargs: Any) -> None:
        self.files = [Path(f) for f in files]
        self.bands = None if bands is None else np.asarray(bands, dtype=np.int64)
        self.with_mask = with_mask
        self.wavelengths = None if wavelengths is None else torch.as_tensor(np.asarray(wavelengths),
                                                                            dtype=torch.float32)
        self.read_kwargs = read_kwargs
        self.max_loaded = max_loaded
        self._cache: OrderedDict[Path, HyperspectralCube] = OrderedDict()
        self._shapes: dict[int, tuple[int, int]] = {}
        self._range_checked: set[Path] = set()

    def __getstate__(self) -> dict[str, Any]:  # workers re-open files instead of pickling memmaps
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def open(self, index: int) -> HyperspectralCube:
        """The (cached) cube of file ``index``."""
        path = self.files[index]
        cube = self._cache.get(path)
        if cube is None:
            cube = read_cube(path, mmap=True, **self.read_kwargs)
            self._cache[path] = cube
            loaded = [p for p, c in self._cache.items() if not isinstance(c.data, np.memmap)]
            for stale in loaded[:-self.max_loaded] if self.max_loaded > 0 else loaded:
                del self._cache[stale]
        else:
            self._cache.move_to_end(path)
        return cube

    def __len__(self) -> int:
        return len(self.files)

    def scene_shape(self, index: int) -> tuple[int, int]:
        if index not in self._shapes:
            h, w = self.open(index).data.shape[:2]
            self._shapes[index] = (int(h), int(w))
        return self._shapes[index]

    def shapes(self) -> list[tuple[int, int]]:
        return [self.scene_shape(i) for i in range(len(self))]

    def read_region(self, index: int, rows: slice, cols: slice) -> dict[str, torch.Tensor]:
        """Item ``index`` cut to ``[rows, cols]`` (only that window is read from a memmap)."""
        cube = self.open(index)
        window = cube.data[rows, cols]
        window = window[..., self.bands] if self.bands is not None else window
        with np.errstate(over="ignore"):  # values beyond float32 become Inf, refused just below
            item = {"cube": torch.from_numpy(np.array(window, dtype=np.float32, order="C"))}
        self._check_values(index, cube, window, item["cube"])
        if self.with_mask:
            if cube.mask is None:
                raise ReaderError(self.files[index], "has no ground-truth mask, but the datamodule declares 'mask'")
            item["mask"] = torch.from_numpy(np.array(cube.mask[rows, cols], dtype=np.int64))
        if self.wavelengths is not None:
            item["wavelengths"] = self.wavelengths
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.read_region(index, slice(None), slice(None))

    def _check_values(self, index: int, cube: HyperspectralCube, window: np.ndarray, values: torch.Tensor) -> None:
        """Refuse non-finite values (naming the file); warn once per file about integers beyond 2^24."""
        path = self.files[index]
        problem = nonfinite_problem(values)
        if problem:
            raise ReaderError(path, problem + _byte_order_hint(cube, window))
        if path not in self._range_checked:
            self._range_checked.add(path)
            problem = integer_range_problem(np.asarray(window))
            if problem:
                log.warning("%s: %s", path, problem)


def _byte_order_hint(cube: HyperspectralCube, window: np.ndarray) -> str:
    """``"; ... byte order = 1 ..."`` when the file declares a byte order and the other one reads finite."""
    if cube.byte_order is None or np.dtype(window.dtype).kind != "f":
        return ""
    swapped = np.asarray(window).byteswap()  # the same bytes read in the other order
    if not np.isfinite(swapped).all():
        return ""
    return (f" (the header says 'byte order = {cube.byte_order}'; read as 'byte order = {1 - cube.byte_order}' "
            "every value is finite: the header's byte order is probably wrong)")
