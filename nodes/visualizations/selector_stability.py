"""Stability of a channel selector's top-k set across epochs (Jaccard similarity)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.registry import register

from ._common import new_figure, wavelengths_from_batch
from ._selector import EpochHistoryPlot, jaccard, read_selection, read_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["SelectorStabilityPlot"]


@register
class SelectorStabilityPlot(EpochHistoryPlot):
    """How much the selected channel set changes between drawn epochs.

    Each call records ``S_e = parent.selected_channels()`` (the top-k set) for the
    current epoch (see :class:`EpochHistoryPlot`). Top panel: the Jaccard similarity
    ``J(S_prev, S_e) = |S_prev ∩ S_e| / |S_prev ∪ S_e|`` of consecutive recorded sets
    against the later epoch (1: unchanged selection). Bottom panel: which channels were
    selected at each recorded epoch (rows: epochs, columns: channels; wavelengths in nm
    on the tick labels when ``batch["wavelengths"]`` has ``C`` entries).

    Parent: a soft channel selector with ``selected_channels()`` and ``channel_weights()``
    (for the channel count ``C``); its output is not read. Figures: ``{"stability": Figure}``.

    Args:
        log_frequency: record and draw every this many epochs.
        figsize: figure size in inches.
    """

    required_parent_attributes = ("selected_channels", "channel_weights")
    figsize_default: tuple[float, float] = (8.0, 6.0)

    def __init__(self, log_frequency: int = 1, figsize: Sequence[float] | None = None, name: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default

    def jaccard_series(self) -> tuple[list[int], list[float]]:
        """``(epochs, J)``: similarity of each recorded set with the previous one."""
        epochs, sets = list(self.history), list(self.history.values())
        return epochs[1:], [jaccard(a, b) for a, b in zip(sets[:-1], sets[1:], strict=True)]

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        from matplotlib.ticker import MaxNLocator

        c = read_weights(parent).size
        current = self.record(read_selection(parent))
        fig = new_figure(self.figsize)
        ax_j, ax_s = fig.subplots(2, 1, height_ratios=(1, 1.3))
        epochs, values = self.jaccard_series()
        if epochs:
            ax_j.plot(epochs, values, "o-", color="tab:purple")
            ax_j.set_title(f"top-k stability: J={values[-1]:.2f} between the last two recorded epochs")
        else:
            ax_j.text(0.5, 0.5, f"one recorded epoch ({current}): similarity needs two", ha="center",
                      va="center", transform=ax_j.transAxes)
            ax_j.set_title("top-k stability")
        ax_j.set_ylim(-0.05, 1.05)
        ax_j.set_xlabel("epoch")
        ax_j.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_j.set_ylabel("Jaccard(prev, current)")
        ax_j.grid(alpha=0.3)

        rec_epochs = list(self.history)
        matrix = np.zeros((len(rec_epochs), c))
        for row, chosen in enumerate(self.history.values()):
            matrix[row, [i for i in chosen if 0 <= i < c]] = 1.0
        ax_s.imshow(matrix, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        rows = np.arange(len(rec_epochs))
        step = max(1, len(rows) // 10)
        ax_s.set_yticks(rows[::step], [str(e) for e in rec_epochs[::step]])
        ax_s.set_ylabel("epoch")
        wl = wavelengths_from_batch(batch, c)
        ticks = np.unique(np.linspace(0, c - 1, min(c, 8)).round().astype(int))
        if wl is not None:
            ax_s.set_xticks(ticks, [f"{wl[t]:.0f}" for t in ticks])
            ax_s.set_xlabel("wavelength (nm)")
        else:
            ax_s.set_xticks(ticks)
            ax_s.set_xlabel("channel")
        ax_s.set_title("selected channels (black) per recorded epoch", fontsize="medium")
        return {"stability": fig}
