"""Scatter plot of pixels in the first 2 or 3 output channels of a projection (e.g. PCA)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.leaves import VisualizationNode
from cuvis_graph.core.registry import register

from ._common import labels_from_batch, new_figure, to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["PCAVisualization", "subsample_pixels"]

COLOR_BY = ("label", "score")


def subsample_pixels(n: int, max_points: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` pixels, the same on every call.

    Without labels: a uniform draw from ``numpy.random.default_rng(seed)``. With labels
    (``[n]`` bool): every anomalous pixel is kept up to half the budget (they are rare and
    what the plot is for), the rest of the budget is drawn uniformly from the normal ones.
    """
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, max_points, replace=False))
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if pos.size > max_points // 2:
        pos = rng.choice(pos, max_points // 2, replace=False)
    neg = rng.choice(neg, min(neg.size, max_points - pos.size), replace=False)
    return np.sort(np.concatenate([pos, neg]))


@register
class PCAVisualization(VisualizationNode):
    """Pixels of the first validation batch as points in the parent's first components.

    Plots channel 1 vs 2 (``n_components=2``) or 1, 2, 3 on 3-D axes (``n_components=3``)
    of the parent output, for at most ``max_points`` pixels chosen deterministically (see
    :func:`subsample_pixels`). ``n_components=None`` takes 3 when the parent outputs at
    least 3 channels, else 2. Axis labels read ``PC k (xx.x% var.)`` when the parent has
    ``explained_variance_ratio`` (``[K]``, fraction of the total variance), else
    ``component k``.

    Colours: ``color_by="label"``: normal vs anomalous pixels from ``batch["target"]``
    (``label_source``) or ``batch["mask"]`` (anomalous where ``> 0``); falls back to
    ``"score"`` when the batch has no labels. ``color_by="score"``: the squared distance
    of each pixel to the batch mean over *all* ``K`` output channels,
    ``||z - mean(z)||^2`` (for whitened components this is the RX score in component
    space).

    Parent output: ``[B, H, W, K]`` with ``K >= 2`` (e.g. ``TrainablePCA``).
    Figures: ``{"scatter": Figure}``.

    Args:
        log_frequency: draw every this many epochs.
        n_components: 2 or 3 axes; ``None``: from the parent's channel count.
        color_by: ``"label"`` or ``"score"``.
        max_points: most pixels drawn.
        figsize: figure size in inches.
    """

    parent_output_rank = 4
    figsize_default: tuple[float, float] = (7.0, 6.0)

    def __init__(self, log_frequency: int = 1, n_components: int | None = None, color_by: str = "label",
                 max_points: int = 5000, figsize: Sequence[float] | None = None, name: str | None = None,
                 label_source: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name, label_source=label_source)
        if n_components not in (None, 2, 3):
            raise ValueError(f"n_components must be 2, 3 or None (from the parent), got {n_components}")
        if color_by not in COLOR_BY:
            raise ValueError(f"color_by must be one of {COLOR_BY}, got {color_by!r}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.n_components, self.color_by, self.max_points = n_components, color_by, int(max_points)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default

    @computed_flag(default=False)
    def needs_labels(self) -> bool:
        """Labels are read (and required) only with a ``label_source``."""
        return self.label_source is not None

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        z = to_numpy(output)
        if z.ndim != 4 or z.shape[-1] < 2:
            raise ValueError(f"{type(self).__name__} '{self.name}' needs a parent output [B,H,W,K] with K >= 2, "
                             f"got shape {tuple(z.shape)}")
        k = self.n_components or (3 if z.shape[-1] >= 3 else 2)
        if z.shape[-1] < k:
            raise ValueError(f"{type(self).__name__} '{self.name}': n_components={k} but the parent outputs "
                             f"{z.shape[-1]} channels")
        points = z.reshape(-1, z.shape[-1])
        labels = labels_from_batch(batch)
        flat_labels = labels.reshape(-1) if labels is not None and labels.size == points.shape[0] else None
        keep = np.all(np.isfinite(points), axis=1)
        idx = np.flatnonzero(keep)
        sub = subsample_pixels(idx.size, self.max_points, None if flat_labels is None else flat_labels[idx])
        idx = idx[sub]

        fig = new_figure(self.figsize)
        ax = fig.add_subplot(projection="3d" if k == 3 else None)
        coords = [points[idx, j] for j in range(k)]
        by = self.color_by if (self.color_by == "score" or flat_labels is not None) else "score"
        if by == "label":
            lab = flat_labels[idx]
            for mask, label, colour, size in ((~lab, "normal", "tab:blue", 6), (lab, "anomalous", "tab:red", 14)):
                if mask.any():
                    ax.scatter(*[c[mask] for c in coords], s=size, c=colour, alpha=0.6, linewidths=0,
                               label=f"{label} ({int(mask.sum())})")
            ax.legend(fontsize="small", loc="best")
        else:
            centred = points[keep] - points[keep].mean(axis=0)
            score = np.einsum("ij,ij->i", centred, centred)[sub]
            order = np.argsort(score)  # high scores drawn last, on top
            sc = ax.scatter(*[c[order] for c in coords], s=6, c=score[order], cmap="viridis", alpha=0.8,
                            linewidths=0)
            fig.colorbar(sc, ax=ax, shrink=0.8, label="||z − mean||²")
        ratios = getattr(parent, "explained_variance_ratio", None)
        ratios = to_numpy(ratios).reshape(-1) if ratios is not None else None
        setters = (ax.set_xlabel, ax.set_ylabel) + ((ax.set_zlabel,) if k == 3 else ())
        for j, setter in enumerate(setters):
            if ratios is not None and j < ratios.size:
                setter(f"PC {j + 1} ({100 * ratios[j]:.1f}% var.)")
            else:
                setter(f"component {j + 1}")
        title = f"{idx.size} of {points.shape[0]} pixels, coloured by {by}"
        if ratios is not None and ratios.size >= k:
            title += f"\nfirst {k} components explain {100 * ratios[:k].sum():.1f}% of the variance"
        ax.set_title(title, fontsize="medium")
        return {"scatter": fig}
