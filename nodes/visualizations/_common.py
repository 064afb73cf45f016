"""Helpers shared by the visualization leaves (Agg figures, score maps, labels, false colour).

Figures are created as :class:`matplotlib.figure.Figure` objects with an Agg canvas
attached, never through ``pyplot``: no global figure registry, no interactive backend, no
leak when a visualization raises half-way. The monitors save them (``savefig``) and the
compiled module closes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cuvis_graph.leaves import TARGET_KEY

__all__ = [
    "new_figure",
    "to_numpy",
    "score_maps",
    "labels_from_batch",
    "wavelengths_from_batch",
    "rgb_band_indices",
    "false_colour_rgb",
    "default_threshold",
    "as_index_set",
    "RGB_TARGET_NM",
]

#: Band centres (nm) of the false-colour composite: red, green, blue.
RGB_TARGET_NM = (640.0, 550.0, 460.0)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An Agg-backed figure with constrained layout (content fills the canvas)."""
    fig = Figure(figsize=tuple(float(s) for s in figsize), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """A detached CPU numpy copy of a tensor / array-like."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def score_maps(output: Any, where: str) -> np.ndarray:
    """Scores ``[B, H, W]`` (float64) from a parent output ``[B, H, W, 1]`` or ``[B, H, W]``."""
    scores = to_numpy(output)
    if scores.ndim == 4 and scores.shape[-1] == 1:
        scores = scores[..., 0]
    if scores.ndim != 3:
        raise ValueError(f"{where} needs parent scores [B,H,W,1] or [B,H,W], got shape {tuple(scores.shape)}")
    return scores


def labels_from_batch(batch: Mapping[str, Any]) -> np.ndarray | None:
    """Binary labels ``[B, H, W]`` (bool), or ``None`` when the batch carries none.

    The leaf's resolved labels (``batch["target"]``, present when the leaf was given a
    ``label_source``) win over the raw ``batch["mask"]``; a pixel is anomalous when its
    label is ``> 0``.
    """
    for key in (TARGET_KEY, "mask"):
        value = batch.get(key)
        if value is not None:
            labels = to_numpy(value)
            if labels.ndim == 4 and labels.shape[-1] == 1:
                labels = labels[..., 0]
            return labels > 0
    return None


def wavelengths_from_batch(batch: Mapping[str, Any], n_channels: int | None = None) -> np.ndarray | None:
    """Band centres ``[C]`` in nm from ``batch["wavelengths"]`` (``[C]`` or ``[B, C]``).

    ``None`` when absent or when their count differs from ``n_channels`` (e.g. after a
    PCA the channels are no longer bands).
    """
    value = batch.get("wavelengths")
    if value is None:
        return None
    wl = to_numpy(value)
    if wl.ndim == 2:
        wl = wl[0]
    if wl.ndim != 1 or (n_channels is not None and wl.shape[0] != n_channels):
        return None
    return wl


def rgb_band_indices(n_bands: int, wavelengths: np.ndarray | None = None,
                     rgb_bands: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Indices ``(r, g, b)`` of the bands of a false-colour composite.

    Priority: explicit ``rgb_bands``; else the bands nearest 640/550/460 nm when
    wavelengths are known; else last/middle/first band (bands ascend in wavelength, so
    the longest plays red).
    """
    if rgb_bands is not None:
        idx = tuple(int(i) for i in rgb_bands)
        if len(idx) != 3:
            raise ValueError(f"rgb_bands must name 3 band indices (r, g, b), got {list(rgb_bands)}")
        for i in idx:
            if not -n_bands <= i < n_bands:
                raise ValueError(f"rgb_bands index {i} is out of range for {n_bands} bands")
        return tuple(i % n_bands for i in idx)  # type: ignore[return-value]
    if wavelengths is not None and len(wavelengths) == n_bands:
        return tuple(int(np.argmin(np.abs(wavelengths - nm))) for nm in RGB_TARGET_NM)  # type: ignore[return-value]
    return n_bands - 1, n_bands // 2, 0


def false_colour_rgb(cube: np.ndarray, bands: tuple[int, int, int], low: float = 2.0,
                     high: float = 98.0) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1] from a cube ``[H, W, C]``: each band stretched between its
    ``low`` and ``high`` percentiles (robust to a few bright anomalies)."""
    rgb = cube[..., list(bands)].astype(np.float64)
    lo = np.nanpercentile(rgb, low, axis=(0, 1))
    hi = np.nanpercentile(rgb, high, axis=(0, 1))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.clip((rgb - lo) / span, 0.0, 1.0)


def default_threshold(scores: np.ndarray) -> float:
    """``mean + 3 * std`` of the finite scores (the classic 3-sigma rule on the score
    distribution); ``inf`` when no score is finite."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return float("inf")
    return float(finite.mean() + 3.0 * finite.std())


def as_index_set(selected: Any) -> frozenset[int]:
    """Selected channel indices from a selector's ``selected_channels()``: a tensor/list of
    indices, or a boolean mask ``[C]``."""
    arr = selected.detach().cpu().numpy() if isinstance(selected, torch.Tensor) else np.asarray(selected)
    arr = arr.reshape(-1)
    if arr.dtype == bool:
        return frozenset(int(i) for i in np.flatnonzero(arr))
    return frozenset(int(i) for i in arr)
