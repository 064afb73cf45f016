"""Anomaly score heatmap, overlay on a false-colour image, and thresholded detection mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.leaves import VisualizationNode
from cuvis_graph.core.registry import register
from cuvis_graph.io.render import false_colour, rgb_band_indices

from ._colormaps import check_colormap
from ._common import (
    default_threshold,
    labels_from_batch,
    new_figure,
    score_maps,
    to_numpy,
    wavelengths_from_batch,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["AnomalyHeatmap"]

GT_COLOUR = "cyan"


@register
class AnomalyHeatmap(VisualizationNode):
    """Three panels per image of the first validation batch, one figure per image.

    1. **scores**: the parent's score map ``s`` (colour scale min..max of the image, with a
       colorbar);
    2. **overlay**: ``s`` blended over a false-colour RGB of ``batch["cube"]`` with opacity
       growing from 0 at the median score to 0.75 at the maximum, so background stays
       visible. The RGB bands are ``rgb_bands`` (indices ``(r, g, b)``) when given, else
       the bands nearest 640/550/460 nm from ``batch["wavelengths"]``, else an AVIRIS-like
       default (:func:`cuvis_graph.io.render.rgb_band_indices`); each band is stretched
       between its 2nd and 98th percentile;
    3. **detections**: the mask ``s > t`` with ``t = threshold`` or, by default, the
       image's ``mean(s) + 3 std(s)`` (3-sigma rule), with the flagged fraction and, when
       labels exist, the IoU with them.

    When the batch carries labels (``batch["target"]`` from ``label_source``, else
    ``batch["mask"]``; anomalous where ``> 0``) their outline is drawn in cyan on every
    panel. Without ``label_source`` the leaf reads ``mask`` only if the batch has it; set
    ``label_source`` to a label node (e.g. a ``BinaryLabelMapper``) to outline mapped labels.

    Parent output: scores ``[B, H, W, 1]`` or ``[B, H, W]`` (e.g. ``RXGlobal``, a logit head).
    Figures: ``{"image_<i>": Figure}`` for the first ``max_images`` images.

    Args:
        log_frequency: draw every this many epochs.
        threshold: fixed detection threshold on the parent output; ``None``: per-image
            ``mean + 3 std``.
        rgb_bands: three band indices ``(r, g, b)`` for the false-colour image.
        max_images: number of images of the batch to draw.
        figsize: size of one figure in inches ``(width, height)``.
        cmap: matplotlib colormap of the score panel and the overlay (cuvis.ai: ``colormap``).
        vmin, vmax: ends of the score colour scale; ``None``: the image's min / max.
    """

    figsize_default: tuple[float, float] = (13.0, 4.2)

    def __init__(self, log_frequency: int = 1, threshold: float | None = None, rgb_bands: Sequence[int] | None = None,
                 max_images: int = 1, figsize: Sequence[float] | None = None, cmap: str = "inferno",
                 vmin: float | None = None, vmax: float | None = None, name: str | None = None,
                 label_source: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name, label_source=label_source)
        check_colormap(cmap, "cmap")  # builtin names are checked without importing matplotlib
        if vmin is not None and vmax is not None and not vmin < vmax:
            raise ValueError(f"need vmin < vmax, got vmin={vmin}, vmax={vmax}")
        self.cmap = cmap
        self.vmin, self.vmax = (None if v is None else float(v) for v in (vmin, vmax))
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if rgb_bands is not None and len(rgb_bands) != 3:
            raise ValueError(f"rgb_bands must name 3 band indices (r, g, b), got {list(rgb_bands)}")
        self.threshold = None if threshold is None else float(threshold)
        self.rgb_bands = None if rgb_bands is None else tuple(int(b) for b in rgb_bands)
        self.max_images = int(max_images)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default
        # an explicit label source makes the compiler resolve labels into batch["target"]

    @computed_flag(default=False)
    def needs_labels(self) -> bool:
        """Labels are read (and required) only with a ``label_source``."""
        return self.label_source is not None

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        scores = score_maps(output, f"{type(self).__name__} '{self.name}'")
        labels = labels_from_batch(batch)
        cube = batch.get("cube")
        cube = to_numpy(cube) if cube is not None else None
        figures = {}
        for i in range(min(self.max_images, scores.shape[0])):
            gt = labels[i] if labels is not None and labels[i].shape == scores[i].shape else None
            image = cube[i] if cube is not None and cube.shape[1:3] == scores.shape[1:3] else None
            figures[f"image_{i}"] = self._figure(scores[i], image, gt, batch, i)
        return figures

    def _figure(self, s: np.ndarray, cube: np.ndarray | None, gt: np.ndarray | None,
                batch: Mapping[str, Any], index: int) -> Figure:
        from matplotlib import colormaps
        from matplotlib.lines import Line2D

        fig = new_figure(self.figsize)
        ax_scores, ax_overlay, ax_mask = fig.subplots(1, 3)
        finite = np.isfinite(s)
        lo, hi = (float(s[finite].min()), float(s[finite].max())) if finite.any() else (0.0, 1.0)
        lo = lo if self.vmin is None else self.vmin
        hi = hi if self.vmax is None else self.vmax
        threshold = self.threshold if self.threshold is not None else default_threshold(s)
        rule = "fixed" if self.threshold is not None else "mean+3σ"

        im = ax_scores.imshow(s, cmap=self.cmap, vmin=lo, vmax=hi if hi > lo else lo + 1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax_scores, fraction=0.046, pad=0.04, label="score")
        ax_scores.set_title(f"scores (image {index})")

        if cube is not None:
            wl = wavelengths_from_batch(batch, cube.shape[-1])
            bands = rgb_band_indices(cube.shape[-1], wl, self.rgb_bands)
            rgb = false_colour(cube, bands=bands)
            band_text = (", ".join(f"{wl[b]:.0f}" for b in bands) + " nm") if wl is not None else \
                "bands " + ", ".join(str(b) for b in bands)
        else:
            rgb, band_text = np.zeros(s.shape + (3,)), "no cube in batch"
        median = float(np.median(s[finite])) if finite.any() else 0.0
        alpha = np.clip((np.nan_to_num(s, nan=median) - median) / max(hi - median, 1e-12), 0.0, 1.0) * 0.75
        heat = colormaps[self.cmap](np.clip((np.nan_to_num(s, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1))[..., :3]
        ax_overlay.imshow((1 - alpha[..., None]) * rgb + alpha[..., None] * heat, interpolation="nearest")
        ax_overlay.set_title(f"overlay on RGB ({band_text})")

        detected = s > threshold
        ax_mask.imshow(detected, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        title = f"score > {threshold:.3g} ({rule}): {100 * detected.mean():.1f}% px"
        if gt is not None:
            union = np.logical_or(detected, gt).sum()
            iou = np.logical_and(detected, gt).sum() / union if union else 1.0
            title += f"\nIoU with labels {iou:.2f}"
        ax_mask.set_title(title)

        for ax in (ax_scores, ax_overlay, ax_mask):
            ax.set_xticks([])
            ax.set_yticks([])
            if gt is not None:
                _outline(ax, gt)
        if gt is not None:
            ax_mask.legend(handles=[Line2D([], [], color=GT_COLOUR, lw=1.2, label="labelled anomaly")],
                           loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize="small", frameon=False)
        return fig


def _outline(ax: Axes, mask: np.ndarray) -> None:
    """Outline ``mask`` along pixel edges (contour of a nearest-upsampled copy)."""
    if not mask.any() or mask.all():
        return
    h, w = mask.shape
    k = int(np.clip(256 // max(h, w), 1, 8))
    up = np.kron(mask.astype(float), np.ones((k, k)))
    ys = (np.arange(h * k) + 0.5) / k - 0.5
    xs = (np.arange(w * k) + 0.5) / k - 0.5
    ax.contour(xs, ys, up, levels=[0.5], colors=GT_COLOUR, linewidths=1.2)
