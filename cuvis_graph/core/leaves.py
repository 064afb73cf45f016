"""Leaf contracts: losses, metrics, visualizations and monitors.

Leaves hang off one parent node and read named things only:

* ``output``: the parent's output tensor (its single output port, or the port named
  when attaching the leaf as ``parent=(node, "port")``);
* ``batch``: the batch dict, plus ``batch["target"]`` when the leaf ``needs_labels``:
  the labels from the leaf's *declared* label source. ``label_source=None`` resolves at
  compile time to the graph's label node (e.g. a ``BinaryLabelMapper``) if there is
  exactly one, else to the batch key ``"mask"``; it never silently falls back to raw
  class ids when a mapped label exists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cuvis_graph.core.hparams import RecordsInit

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torchmetrics import Metric, MetricCollection

    from cuvis_graph.core.node import Node

__all__ = ["LeafNode", "LossNode", "MetricNode", "VisualizationNode", "MonitoringNode", "TARGET_KEY"]

log = logging.getLogger(__name__)

#: Key under which a leaf finds its resolved labels in the batch it receives.
TARGET_KEY = "target"


class LeafNode(RecordsInit, nn.Module):
    """Base of every leaf.

    Class attributes checked by the compiler:
        compatible_parent_types: parent must be an instance of one of these (empty: any node).
        required_parent_attributes: attributes the parent must have (e.g. ``"temperature"``).
        needs_labels: the leaf reads ``batch["target"]``.
        parent_output_rank: rank the parent output must have (``None``: any).
    """

    compatible_parent_types: ClassVar[tuple[type, ...]] = ()
    required_parent_attributes: ClassVar[tuple[str, ...]] = ()
    needs_labels: ClassVar[bool] = False
    parent_output_rank: ClassVar[int | None] = None

    def __init__(self, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__()
        self.name: str | None = name
        self.label_source = label_source

    @property
    def required_batch_keys(self) -> set[str]:
        """Batch keys the leaf reads directly (besides the resolved target)."""
        return set()

    def validate_parent(self, parent: Node) -> list[str]:
        """Problems with ``parent`` as this leaf's parent (empty list when fine)."""
        problems = []
        types = self.compatible_parent_types
        if types and not isinstance(parent, types):
            names = ", ".join(t.__name__ for t in types)
            problems.append(
                f"parent '{parent.name}' is a {type(parent).__name__}; "
                f"{type(self).__name__} needs one of: {names}"
            )
        for attr in self.required_parent_attributes:
            if not hasattr(parent, attr):
                problems.append(
                    f"parent '{parent.name}' ({type(parent).__name__}) has no attribute '{attr}' "
                    f"that {type(self).__name__} needs"
                )
        return problems

    def bind_parent(self, parent: Node) -> None:
        """Receive the parent node itself, after a successful compile (for leaves that read
        the parent's attributes, e.g. its components). Default: the output is enough."""

    def hparams(self) -> dict[str, Any]:
        return dict(getattr(self, "_hparams", {}))


class LossNode(LeafNode):
    """A differentiable objective; the total loss is ``sum_i weight_i * loss_i``."""

    def __init__(self, weight: float = 1.0, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        self.weight = float(weight)

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Scalar loss (before ``weight``) from the parent output and the batch."""
        raise NotImplementedError


class MetricNode(LeafNode):
    """A dataset-level metric backed by torchmetrics states (synchronised across ranks).

    The compiled module keeps one fresh collection per stage (train/val/test) from
    :meth:`create_metrics`, feeds every batch through :meth:`update_metrics` and logs
    ``compute()`` at epoch end; nothing is averaged per batch.
    """

    def create_metrics(self) -> Metric | MetricCollection:
        raise NotImplementedError

    def update_metrics(
        self, metrics: Metric | MetricCollection, output: torch.Tensor, batch: Mapping[str, Any]
    ) -> None:
        raise NotImplementedError

    def compute_metrics(self, metrics: Metric | MetricCollection) -> dict[str, float]:
        """``{name: value}`` from a metric or collection (tensors of one element).

        A value that is undefined on this data (NaN, e.g. AUROC when the labels hold one
        class only) stays NaN, which the run record writes as ``null``; a warning names the
        leaf, the metric and why (the state's ``undefined`` reasons), once per leaf and metric.
        """
        values = metrics.compute()
        if not isinstance(values, Mapping):
            values = {"value": values}
        out = {k: float(v) for k, v in values.items()}
        warned = self.__dict__.setdefault("_warned_undefined", set())
        for key, value in out.items():
            if math.isnan(value) and key not in warned:
                warned.add(key)
                reason = getattr(metrics, "undefined", {}).get(key, "the data does not define it")
                log.warning("metric leaf '%s': '%s' is undefined (%s); recorded as null", self.name, key, reason)
        return out


class VisualizationNode(LeafNode):
    """Produces matplotlib figures every ``log_frequency`` epochs (rank 0, never in sanity check)."""

    def __init__(self, log_frequency: int = 1, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        if log_frequency < 1:
            raise ValueError(f"log_frequency must be >= 1, got {log_frequency}")
        self.log_frequency = int(log_frequency)

    def should_run(self, epoch: int) -> bool:
        return epoch % self.log_frequency == 0

    def visualize(self, output: torch.Tensor, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        """``{figure_name: Figure}`` for one (detached, CPU) batch."""
        raise NotImplementedError


class MonitoringNode(RecordsInit):
    """A sink for metrics and artifacts (files, TensorBoard, W&B). Registered on the graph.

    Stages are ``"train"``, ``"val"``, ``"test"`` (or a stage name). A monitor that raises
    is reported once and disabled; training goes on.
    """

    name: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        raise NotImplementedError

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release resources at the end of training."""

    def hparams(self) -> dict[str, Any]:
        return dict(getattr(self, "_hparams", {}))
