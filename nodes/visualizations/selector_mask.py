"""Soft channel weights and the hard top-k mask of a soft channel selector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.leaves import VisualizationNode
from cuvis_graph.core.registry import register

from ._common import new_figure, wavelengths_from_batch
from ._selector import read_selection, read_temperature, read_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["SelectorChannelMaskPlot"]


@register
class SelectorChannelMaskPlot(VisualizationNode):
    """Bars of the selector's soft weights per channel, and its hard top-k mask below.

    Top panel: ``w = parent.channel_weights()`` (``[C]``; for a softmax selector
    ``w = n_select * softmax(logits / T)``, summing to ``n_select``), the channels of
    ``parent.selected_channels()`` (the top ``n_select``) in orange, the others in grey,
    and the uniform level ``n_select / C`` dotted. Bottom panel: the hard mask (1 on the
    selected channels), what the selector applies at evaluation when ``hard=True``. The
    x-axis is the wavelength in nm when ``batch["wavelengths"]`` has ``C`` entries, else
    the channel index.

    Parent: a soft channel selector with ``channel_weights()``, ``selected_channels()``
    and ``n_select`` (e.g. ``SoftChannelSelector``); its output is not read.
    Figures: ``{"channels": Figure}``.

    Args:
        log_frequency: draw every this many epochs.
        figsize: figure size in inches.
    """

    required_parent_attributes = ("channel_weights", "selected_channels", "n_select")
    figsize_default: tuple[float, float] = (10.0, 5.0)

    def __init__(self, log_frequency: int = 1, figsize: Sequence[float] | None = None, name: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        from matplotlib.patches import Patch

        weights = read_weights(parent)
        c = weights.size
        selected = sorted(i for i in read_selection(parent) if 0 <= i < c)
        hard = np.zeros(c)
        hard[selected] = 1.0
        wl = wavelengths_from_batch(batch, c)
        if wl is not None:
            x, xlabel = wl, "wavelength (nm)"
            width = 0.8 * (float(np.min(np.diff(np.sort(wl)))) if c > 1 else 1.0)
        else:
            x, xlabel, width = np.arange(c), "channel", 0.8
        colours = np.where(hard > 0, "tab:orange", "tab:gray")

        fig = new_figure(self.figsize)
        ax_w, ax_m = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        ax_w.bar(x, weights, width=width, color=colours)
        n_select = int(getattr(parent, "n_select", len(selected)))
        uniform = ax_w.axhline(n_select / c, color="black", ls=":", lw=1,
                               label=f"uniform n_select/C = {n_select / c:.3g}")
        handles = [Patch(color="tab:orange", label=f"selected ({len(selected)})"),
                   Patch(color="tab:gray", label="not selected"), uniform]
        top = float(np.nanmax(weights)) if np.isfinite(weights).any() else 1.0
        ax_w.set_ylim(min(0.0, float(np.nanmin(weights))), 1.3 * max(top, n_select / c))  # room for the legend
        ax_w.set_ylabel("soft weight")
        ax_w.legend(handles=handles, fontsize="small", loc="upper center", ncols=3)
        title = f"selector '{getattr(parent, 'name', None) or type(parent).__name__}': soft weights"
        if hasattr(parent, "temperature"):
            title += f" (T={read_temperature(parent):.3g})"
        ax_w.set_title(title)
        ax_m.bar(x, hard, width=width, color="tab:orange")
        ax_m.set_ylim(0, 1.1)
        ax_m.set_yticks([0, 1])
        hard_mode = getattr(parent, "hard", None)
        ax_m.set_ylabel("top-k mask")
        ax_m.set_xlabel(xlabel)
        ax_m.set_title(f"hard top-{n_select} mask" + ("" if hard_mode is None else
                       f" ({'applied' if hard_mode else 'not applied'} at eval: hard={bool(hard_mode)})"),
                       fontsize="medium")
        return {"channels": fig}
