"""What data must satisfy before statistics or training see it (principle 13: nothing is silently wrong).

Every check returns ``None`` when the data is fine, or a short description of what is wrong
with the numbers; the caller raises with the place in front (a file's
:class:`~cuvis_graph.data.ReaderError`, or :class:`DataError` naming an in-memory sample).
The data sources call them where data enters:

* files: :func:`~cuvis_graph.data.read_cube` (wavelengths, mask values) and
  :meth:`FileCubeDataset.read_region <cuvis_graph.data.file_dataset.FileCubeDataset.read_region>`
  (non-finite values, integer range; one ``torch.isfinite(x).all()`` per item read);
* in-memory arrays: :class:`~cuvis_graph.data.datamodule.CubeDataset` (once, on construction).

Rules:

* cube values are finite (no NaN, no +-Inf);
* integer cubes stay within float32's exact range ``|x| <= 2^24`` (else a warning: the
  batch is float32 and larger integers are rounded);
* masks hold non-negative integers: ``0`` = background, ``> 0`` = anomaly (or a class id
  for a label mapper); negative, fractional or non-finite values are refused;
* wavelengths are finite and strictly increasing (no duplicated band centre).
"""

from __future__ import annotations

import numpy as np
import torch

from cuvis_graph.errors import CuvisGraphError

__all__ = ["DataError", "FLOAT32_EXACT", "nonfinite_problem", "mask_problem", "wavelength_problem",
           "integer_range_problem"]

#: Largest integer magnitude float32 represents exactly (2^24).
FLOAT32_EXACT = 2 ** 24


class DataError(CuvisGraphError, ValueError):
    """In-memory data that cannot be right; the message starts with the sample or field."""


def nonfinite_problem(x: torch.Tensor) -> str | None:
    """``"N non-finite values ..."`` for a ``[..., C]`` tensor with NaN/Inf, else ``None``.

    Cost on clean data: one ``torch.isfinite(x).all()``.
    """
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return None
    bad = ~finite
    n_nan = int(torch.isnan(x).sum())
    first = tuple(int(i) for i in torch.nonzero(bad)[0])
    return (f"{int(bad.sum())} non-finite values of {x.numel()} ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf), "
            f"the first at index {list(first)}; replace or mask them before training")


def integer_range_problem(x: np.ndarray) -> str | None:
    """A description when an integer array holds ``|values| > 2^24`` (rounded in float32), else ``None``."""
    if not np.issubdtype(x.dtype, np.integer) or x.size == 0:
        return None
    top = max(abs(int(x.max())), abs(int(x.min())))
    if top <= FLOAT32_EXACT:
        return None
    return (f"integer values up to {top} exceed float32's exact range 2^24 = {FLOAT32_EXACT}; they are rounded "
            "in the float32 batch (scale the data, e.g. to reflectance, if the low digits matter)")


def mask_problem(mask: np.ndarray) -> str | None:
    """A description when ``mask`` holds anything but non-negative integers, else ``None``."""
    values = np.asarray(mask)
    if values.dtype == bool or np.issubdtype(values.dtype, np.unsignedinteger):
        return None
    if values.dtype.kind not in "iuf":
        return f"mask has dtype {values.dtype}; expected integers (0 = background, > 0 = anomaly or class id)"
    bad = (values < 0) if values.dtype.kind in "iu" else ~(np.isfinite(values) & (values >= 0) & (values % 1 == 0))
    if not bad.any():
        return None
    wrong = np.unique(values[bad])
    shown = ", ".join(f"{v:g}" for v in wrong[:5]) + (", ..." if wrong.size > 5 else "")
    return (f"mask holds {int(bad.sum())} pixels with values other than non-negative integers ({shown}); "
            "expected 0 = background, > 0 = anomaly (or class id)")


def wavelength_problem(wavelengths: np.ndarray) -> str | None:
    """A description when band centres are non-finite, duplicated or not increasing, else ``None``."""
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1)
    nonfinite = np.flatnonzero(~np.isfinite(wl))
    if nonfinite.size:
        return f"wavelength at index {int(nonfinite[0])} is {wl[nonfinite[0]]}; every band needs a finite centre"
    steps = np.diff(wl)
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0]) + 1
        return f"wavelength at index {i} ({wl[i]:g} nm) duplicates index {i - 1}; band centres must be distinct"
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        return (f"wavelengths are not increasing: index {i} ({wl[i]:g} nm) follows index {i - 1} ({wl[i - 1]:g} nm); "
                "sort the bands (and the cube's channels) by wavelength")
    return None
