"""Histogram and kernel density estimate of anomaly scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import gaussian_kde

from cuvis_graph.leaves import VisualizationNode
from cuvis_graph.registry import register

from ._common import default_threshold, labels_from_batch, new_figure, score_maps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cuvis_graph.node import Node

__all__ = ["ScoreHistogram"]

#: Points the KDE is fitted on (a deterministic subsample; its cost grows with n * grid).
KDE_POINTS = 2000


@register
class ScoreHistogram(VisualizationNode):
    """Distribution of the parent's scores over all pixels of the first validation batch.

    Draws a density-normalised histogram (``bins`` bins over the finite scores) and a
    Gaussian kernel density estimate (``scipy.stats.gaussian_kde``, Scott's bandwidth,
    fitted on at most 2000 pixels drawn with a fixed seed), a vertical line at the
    threshold ``t`` (``threshold``, or ``mean + 3 std`` of the scores by default), and the
    summary statistics ``n, mean, std, median, p99`` in the title and the flagged fraction
    ``P(s > t)`` in the legend. When the batch carries labels (``batch["target"]`` from
    ``label_source``, else ``batch["mask"]``; anomalous where ``> 0``) normal and
    anomalous pixels get separate histograms and KDEs, each normalised to unit area, so
    the rare anomalies stay visible. ``log_scale=True`` puts the density axis on a log
    scale (heavy tails of RX-type scores).

    Parent output: scores ``[B, H, W, 1]`` or ``[B, H, W]``. Figures: ``{"histogram": Figure}``.

    Args:
        log_frequency: draw every this many epochs.
        threshold: decision threshold on the parent output; ``None``: ``mean + 3 std``.
        log_scale: logarithmic density axis.
        bins: number of histogram bins.
        figsize: figure size in inches.
    """

    figsize_default: tuple[float, float] = (8.0, 5.0)

    def __init__(self, log_frequency: int = 1, threshold: float | None = None, log_scale: bool = False,
                 bins: int = 100, figsize: Sequence[float] | None = None, name: str | None = None,
                 label_source: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name, label_source=label_source)
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.threshold = None if threshold is None else float(threshold)
        self.log_scale, self.bins = bool(log_scale), int(bins)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default
        self.needs_labels = label_source is not None

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        scores = score_maps(output, f"{type(self).__name__} '{self.name}'")
        labels = labels_from_batch(batch)
        flat = scores.reshape(-1)
        finite = np.isfinite(flat)
        fig = new_figure(self.figsize)
        ax = fig.subplots()
        ax.set_xlabel(f"score ({getattr(parent, 'name', None) or type(parent).__name__})")
        ax.set_ylabel("density" + (" (log)" if self.log_scale else ""))
        if not finite.any():
            ax.text(0.5, 0.5, "no finite scores in this batch", ha="center", va="center", transform=ax.transAxes)
            ax.set_title("score distribution")
            return {"histogram": fig}
        values = flat[finite]
        edges = np.histogram_bin_edges(values, bins=self.bins)
        if labels is not None and labels.shape == scores.shape:
            anomalous = labels.reshape(-1)[finite]
            groups = [("normal", values[~anomalous], "tab:blue"), ("anomalous", values[anomalous], "tab:red")]
        else:
            groups = [("all pixels", values, "tab:blue")]
        for label, group, colour in groups:
            if group.size == 0:
                continue
            ax.hist(group, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=colour,
                    label=f"{label} (n={group.size})")
            _kde(ax, group, edges, colour, label)
        threshold = self.threshold if self.threshold is not None else default_threshold(values)
        rule = "" if self.threshold is not None else " (mean+3σ)"
        ax.axvline(threshold, color="black", ls="--", lw=1.2,
                   label=f"threshold {threshold:.3g}{rule}: {100 * (values > threshold).mean():.2f}% above")
        if self.log_scale:
            ax.set_yscale("log")
        ax.set_title(f"scores: n={values.size}, mean={values.mean():.3g}, std={values.std():.3g}, "
                     f"median={np.median(values):.3g}, p99={np.percentile(values, 99):.3g}", fontsize="medium")
        ax.legend(fontsize="small")
        return {"histogram": fig}


def _kde(ax: Axes, values: np.ndarray, edges: np.ndarray, colour: str, label: str) -> None:
    """Gaussian KDE of ``values`` on a deterministic subsample; skipped when degenerate."""
    if values.size < 2 or np.ptp(values) == 0:
        return
    if values.size > KDE_POINTS:
        values = np.random.default_rng(0).choice(values, KDE_POINTS, replace=False)
    try:
        kde = gaussian_kde(values)
    except (np.linalg.LinAlgError, ValueError):
        return
    grid = np.linspace(edges[0], edges[-1], 400)
    ax.plot(grid, kde(grid), color=colour, lw=1.5, label=f"KDE {label}")
