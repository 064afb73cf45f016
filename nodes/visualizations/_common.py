"""Helpers shared by the visualization leaves (Agg figures, score maps, labels, thresholds).

The false-colour composite lives in :mod:`cuvis_graph.io.render` (shared with ``predict``).

Figures are created as :class:`matplotlib.figure.Figure` objects with an Agg canvas
attached, never through ``pyplot``: no global figure registry, no interactive backend, no
leak when a visualization raises half-way. The monitors save them (``savefig``) and the
compiled module closes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cuvis_graph.core.leaves import TARGET_KEY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "to_numpy",
    "score_maps",
    "labels_from_batch",
    "wavelengths_from_batch",
    "default_threshold",
    "as_index_set",
]

def new_figure(figsize: tuple[float, float]) -> Figure:
    """An Agg-backed figure with constrained layout (content fills the canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
