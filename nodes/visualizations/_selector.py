"""Shared parts of the channel-selector plots: reading the selector and per-epoch history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cuvis_graph.core.leaves import VisualizationNode

from ._common import as_index_set, to_numpy

if TYPE_CHECKING:
    from cuvis_graph.core.node import Node

__all__ = ["EpochHistoryPlot", "read_temperature", "read_weights", "read_selection", "jaccard"]

def read_temperature(parent: Node) -> float:
    """The selector's current temperature (a float, a 0-d tensor, or a method returning one)."""
    value = parent.temperature
    if callable(value):
        value = value()
    return float(torch.as_tensor(value).detach().cpu().double())


def read_weights(parent: Node) -> np.ndarray:
    """Soft channel weights ``[C]`` from ``parent.channel_weights()`` (no gradient)."""
    with torch.no_grad():
        return to_numpy(parent.channel_weights()).reshape(-1)


def read_selection(parent: Node) -> frozenset[int]:
    """Hard top-k channel indices from ``parent.selected_channels()``."""
    with torch.no_grad():
        return as_index_set(parent.selected_channels())


def jaccard(a: frozenset[int] | set[int], b: frozenset[int] | set[int]) -> float:
    """``|a ∩ b| / |a ∪ b|`` (1 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


class EpochHistoryPlot(VisualizationNode):
    """A visualization that records one value per drawn epoch and plots the history.

    The compiled module asks :meth:`should_run` with the current epoch just before calling
    :meth:`visualize`; the epoch is remembered there, so the history is keyed by true
    epoch numbers (``0, f, 2f, ...`` for ``log_frequency=f``). A second call at the same
    epoch (the validation before training, then the validation of epoch 0) replaces the
    earlier value. Called directly, without :meth:`should_run`, a call counts as the next
    drawn epoch. The history lives in memory for the run (it is not part of the state dict).
    """

    def __init__(self, log_frequency: int = 1, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name, label_source=label_source)
        self.history: dict[int, Any] = {}
        self._pending_epoch: int | None = None

    def should_run(self, epoch: int) -> bool:
        run = super().should_run(epoch)
        self._pending_epoch = int(epoch) if run else None
        return run

    def record(self, value: Any) -> int:
        """Store ``value`` for the current epoch; returns that epoch."""
        epoch = self._pending_epoch
        if epoch is None:
            epoch = max(self.history) + self.log_frequency if self.history else 0
        self._pending_epoch = None
        self.history[epoch] = value
        self.history = dict(sorted(self.history.items()))
        return epoch

    def reset_history(self) -> None:
        self.history.clear()
        self._pending_epoch = None

    def _describe_parent(self, parent: Any) -> str:
        return getattr(parent, "name", None) or type(parent).__name__
