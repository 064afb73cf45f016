"""Temperature of a soft channel selector across epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cuvis_graph.core.registry import register

from ._common import new_figure
from ._selector import EpochHistoryPlot, read_temperature

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cuvis_graph.core.node import Node

__all__ = ["SelectorTemperaturePlot"]

SCHEDULE_ATTRS = ("temperature_init", "temperature_decay", "temperature_min")


@register
class SelectorTemperaturePlot(EpochHistoryPlot):
    """The selector's softmax temperature ``T`` at every drawn epoch (markers and line).

    Each call records ``parent.temperature`` for the current epoch (see
    :class:`EpochHistoryPlot`). When the parent also exposes ``temperature_init``,
    ``temperature_decay`` and ``temperature_min``, the annealing schedule
    ``T(e) = max(T_min, T_init * decay^e)`` is drawn dashed for comparison, with ``T_min``
    as a dotted floor.

    Parent: a soft channel selector with attribute ``temperature`` (e.g.
    ``SoftChannelSelector``); its output is not read. Figures: ``{"temperature": Figure}``.

    Args:
        log_frequency: record and draw every this many epochs.
        figsize: figure size in inches.
    """

    required_parent_attributes = ("temperature",)
    figsize_default: tuple[float, float] = (7.0, 4.0)

    def __init__(self, log_frequency: int = 1, figsize: Sequence[float] | None = None, name: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name)
        self.figsize = tuple(figsize) if figsize is not None else self.figsize_default

    def visualize(self, output: Any, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        from matplotlib.ticker import MaxNLocator

        current = self.record(read_temperature(parent))
        epochs = np.array(list(self.history), dtype=float)
        temps = np.array(list(self.history.values()), dtype=float)
        fig = new_figure(self.figsize)
        ax = fig.subplots()
        ax.plot(epochs, temps, "o-", color="tab:blue", label="recorded T")
        schedule = _schedule(parent)
        if schedule is not None:
            t_init, decay, t_min = schedule
            grid = np.linspace(0, max(float(epochs.max()), 1.0), 200)
            ax.plot(grid, np.maximum(t_min, t_init * decay ** grid), "--", color="tab:gray",
                    label=f"schedule max({t_min:g}, {t_init:g}·{decay:g}^e)")
            ax.axhline(t_min, color="tab:gray", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("temperature T")
        ax.set_title(f"selector '{self._describe_parent(parent)}' temperature: T={temps[-1]:.4g} at epoch {current}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        if epochs.size == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        return {"temperature": fig}


def _schedule(parent: Node) -> tuple[float, float, float] | None:
    """``(T_init, decay, T_min)`` when the parent exposes all three as numbers, else ``None``."""
    values = []
    for attr in SCHEDULE_ATTRS:
        value = getattr(parent, attr, None)
        if value is None or isinstance(value, bool) or callable(value):
            return None
        try:
            values.append(float(torch.as_tensor(value).detach().cpu().double()))
        except (TypeError, ValueError, RuntimeError):
            return None
    return values[0], values[1], values[2]
