"""Histogram and kernel density estimate of anomaly scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.leaves import VisualizationNode
from cuvis_graph.core.registry import register

from ._common import default_threshold, labels_from_batch, new_figure, score_maps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["ScoreHistogram"]

#: Points the KDE is fitted on (a deterministic subsample; its cost grows with n * grid).
KDE_POINTS = 2000


@register
class ScoreHistogram(VisualizationNode):
    """Distribution of the parent's scores over all pixels of the first validation batch.

    Draws a density-normalised histogram (``bins`` bins) and a Gaussian kernel density
    estimate (``scipy.stats.gaussian_kde``, Scott's bandwidth, fitted on at most 2000
    pixels drawn with a fixed seed), a vertical line at the threshold ``t`` (``threshold``,
    or ``mean + 3 std`` of the scores by default), and the summary statistics
    ``n, mean, std, median, p99`` in the title and the flagged fraction ``P(s > t)`` in the
    legend. When the batch carries labels (``batch["target"]`` from ``label_source``, else
    ``batch["mask"]``; anomalous where ``> 0``) normal and anomalous pixels get separate
    histograms and KDEs, each normalised to unit area, so the rare anomalies stay visible.

    Readability: the legend sits below the axes, never over the bars. On a linear axis the
    x-range ends at the ``clip_quantile`` quantile of the scores, so a heavy right tail (RX)
    does not squash the bulk into one bar; the x label says where, how many scores lie
    beyond, and whether ``t`` is among them. ``log_scale=True`` shows the whole range on a log
    density axis whose limits come from the bars only: from half the smallest non-zero bar
    to twice the tallest (a KDE tail never stretches it).

    Parent output: scores ``[B, H, W, 1]`` or ``[B, H, W]``. Figures: ``{"histogram": Figure}``.

    Args:
        log_frequency: draw every this many epochs.
        threshold: decision threshold on the parent output; ``None``: ``mean + 3 std``.
        log_scale: logarithmic density axis (no x clipping).
        bins: number of histogram bins.
        clip_quantile: linear axis: the quantile the x-range ends at; ``None``: the maximum.
        figsize: figure size in inches.
    """

    figsize_default: tuple[float, float] = (8.0, 5.5)

    def __init__(self, log_frequency: int = 1, threshold: float | None = None, log_scale: bool = False,
                 bins: int = 100, clip_quantile: float | None = 0.995, figsize: Sequence[float] | None = None,
                 name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name, label_source=label_source)
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if clip_quantile is not None and not 0.5 <= clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in [0.5, 1] or None, got {clip_quantile}")
        self.threshold = None if threshold is None else float(threshold)
        self.log_scale, self.bins = bool(log_scale), int(bins)
        self.clip_quantile = None if clip_quantile is None else float(clip_quantile)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default

    @computed_flag(default=False)
    def needs_labels(self) -> bool:
        """Labels are read (and required) only with a ``label_source``."""
        return self.label_source is not None

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        scores = score_maps(output, f"{type(self).__name__} '{self.name}'")
        labels = labels_from_batch(batch)
        flat = scores.reshape(-1)
        finite = np.isfinite(flat)
        fig = new_figure(self.figsize)
        ax = fig.subplots()
        xlabel = f"score ({getattr(parent, 'name', None) or type(parent).__name__})"
        ax.set_ylabel("density" + (" (log)" if self.log_scale else ""))
        if not finite.any():
            ax.set_xlabel(xlabel)
            ax.text(0.5, 0.5, "no finite scores in this batch", ha="center", va="center", transform=ax.transAxes)
            ax.set_title("score distribution")
            return {"histogram": fig}
        values = flat[finite]
        threshold = self.threshold if self.threshold is not None else default_threshold(values)
        top, note = self._x_end(values, threshold)
        ax.set_xlabel(xlabel + (f"\n{note}" if note else ""))
        edges = np.histogram_bin_edges(values, bins=self.bins, range=(float(values.min()), top))
        if labels is not None and labels.shape == scores.shape:
            anomalous = labels.reshape(-1)[finite]
            groups = [("normal", values[~anomalous], "tab:blue"), ("anomalous", values[anomalous], "tab:red")]
        else:
            groups = [("all pixels", values, "tab:blue")]
        bars, curves = [], []
        for label, group, colour in groups:
            if group.size == 0:
                continue
            counts, _ = np.histogram(group, bins=edges)
            density = counts / (group.size * np.diff(edges))
            ax.stairs(density, edges, fill=True, alpha=0.35, color=colour, label=f"{label} (n={group.size})")
            bars.append(density)
            curves.append(_kde(ax, group, edges, colour, label))
        rule = "" if self.threshold is not None else " (mean+3σ)"
        ax.axvline(threshold, color="black", ls="--", lw=1.2,
                   label=f"threshold {threshold:.3g}{rule}: {100 * (values > threshold).mean():.2f}% above")
        heights = np.concatenate(bars)
        if self.log_scale:
            ax.set_yscale("log")
            ax.set_ylim(0.5 * heights[heights > 0].min(), 2.0 * heights.max())
        else:
            ax.set_ylim(0.0, 1.05 * max([heights.max(), *curves]))
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"scores: n={values.size}, mean={values.mean():.3g}, std={values.std():.3g}, "
                     f"median={np.median(values):.3g}, p99={np.percentile(values, 99):.3g}", fontsize="medium")
        fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
        return {"histogram": fig}

    def _x_end(self, values: np.ndarray, threshold: float) -> tuple[float, str]:
        """Right end of the x-range and the note saying what lies beyond it (``""``: nothing)."""
        end = float(values.max())
        if self.log_scale or self.clip_quantile is None:
            return end, ""
        cut = float(np.quantile(values, self.clip_quantile))
        beyond = int((values > cut).sum())
        if beyond == 0 or cut <= values.min():
            return end, ""
        note = f"x clipped at q{100 * self.clip_quantile:g} = {cut:.4g}; {beyond} of {values.size} scores beyond " \
               f"(max {end:.4g})"
        return cut, note + (f"; threshold {threshold:.3g} is off the axis" if threshold > cut else "")


def _kde(ax: Axes, values: np.ndarray, edges: np.ndarray, colour: str, label: str) -> float:
    """Draw the Gaussian KDE of ``values`` (deterministic subsample) over ``edges``' range;
    its highest value, 0 when skipped (degenerate values)."""
    from scipy.stats import gaussian_kde

    if values.size < 2 or np.ptp(values) == 0:
        return 0.0
    if values.size > KDE_POINTS:
        values = np.random.default_rng(0).choice(values, KDE_POINTS, replace=False)
    try:
        kde = gaussian_kde(values)
    except (np.linalg.LinAlgError, ValueError):
        return 0.0
    grid = np.linspace(edges[0], edges[-1], 400)
    density = kde(grid)
    ax.plot(grid, density, color=colour, lw=1.5, label=f"KDE {label}")
    return float(density.max())
