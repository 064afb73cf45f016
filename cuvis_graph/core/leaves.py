"""Leaf contracts: losses, metrics, visualizations and monitors.

Leaves hang off one parent node and read named things only:

* ``output``: the parent's output tensor (its single output port, or the port named
  when attaching the leaf as ``parent=(node, "port")``);
* ``batch``: the batch dict, plus ``batch["target"]`` when the leaf ``needs_labels``:
  the labels from the leaf's *declared* label source. ``label_source=None`` resolves at
  compile time to the graph's label node (e.g. a ``BinaryLabelMapper``) if there is
  exactly one, else to the batch key ``"mask"``; it never silently falls back to raw
  class ids when a mapped label exists.

Each method also accepts the cuvis.ai call style (``compute_loss(parent_output,
labels=..., metadata=...)``, ``compute_metric(parent_output, batch)``, ``visualize(
parent_output, batch, step, stage)``) and a subclass may implement either style; see
:mod:`cuvis_graph.core.leaf_protocols`. Constructors accept the alternative argument
names of :mod:`cuvis_graph.core.aliases`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cuvis_graph.core.aliases import install_argument_aliases
from cuvis_graph.core.hparams import RecordsInit
from cuvis_graph.core.leaf_protocols import figures_only, labels_style, leaf_call, unpack_result

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

    A subclass sets them in its class body; one that depends on the constructor arguments
    (e.g. ``needs_labels`` of a figure coloured by labels only when it has a
    ``label_source``) is a :class:`~cuvis_graph.core.flags.computed_flag`, never an
    assignment on the instance.
    """

    compatible_parent_types: ClassVar[tuple[type, ...]] = ()
    required_parent_attributes: ClassVar[tuple[str, ...]] = ()
    needs_labels: ClassVar[bool] = False
    parent_output_rank: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_argument_aliases(cls)

    def __init__(self, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__()
        self.name: str | None = name
        self.label_source = label_source

    def _call_inputs(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[Any, dict[str, Any], list[Any], dict[str, Any]]:
        """:func:`leaf_call`, then the labels from the leaf's label source (default ``mask``)
        when the call gave none."""
        output, batch, rest, extras = leaf_call(args, kwargs, where=f"{type(self).__name__}.{method}")
        source = self.label_source or "mask"
        if TARGET_KEY not in batch and isinstance(source, str) and source in batch:
            batch[TARGET_KEY] = batch[source]
        return output, batch, rest, extras

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
    """A differentiable objective; the total loss is ``sum_i weight_i * loss_i``.

    Protocol: ``compute_loss(output, batch) -> Tensor`` (the scalar before ``weight``).
    Also callable as ``compute_loss(parent_output, labels=..., metadata=...)``; a subclass
    may implement that signature instead, returning a tensor or ``(loss, info)`` (``info``
    is kept in ``last_info``).

    A loss made of named parts reports them through :meth:`components` (the parts of the
    last computed loss); the compiled module logs each as ``<stage>/loss/<leaf>/<part>``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "compute_loss" in cls.__dict__:
            cls.compute_loss = _loss_entry(cls.__dict__["compute_loss"])

    def __init__(self, weight: float = 1.0, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        self.weight = float(weight)

    def components(self) -> dict[str, torch.Tensor]:
        """``{part: value}`` of the last :meth:`compute_loss` call (detached scalars), for a
        loss made of named parts; default: none."""
        return {}

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Scalar loss (before ``weight``) from the parent output and the batch."""
        raise TypeError(f"{type(self).__name__} implements no loss: define compute_loss(self, output, batch) "
                        "-> scalar tensor (or the cuvis.ai form compute_loss(self, parent_output, labels=None, "
                        "metadata=None))")


def _loss_entry(impl: Any) -> Any:
    cuvis_style = labels_style(impl)

    @functools.wraps(impl)
    def compute_loss(self: LossNode, *args: Any, **kwargs: Any) -> torch.Tensor:
        output, batch, _, _ = self._call_inputs("compute_loss", args, kwargs)
        if self.needs_labels and TARGET_KEY not in batch and not cuvis_style:
            raise ValueError(f"{type(self).__name__} '{self.name}': labels are required; pass labels=... or a "
                             f"batch with '{self.label_source or 'mask'}'")
        if cuvis_style:
            result = impl(self, output, labels=batch.get(TARGET_KEY), metadata=batch)
        else:
            result = impl(self, output, batch)
        loss, info = unpack_result(result)
        self.__dict__["last_info"] = info
        return loss

    return compute_loss


class MetricNode(LeafNode):
    """A metric leaf, in one of two protocols:

    * dataset-level (recommended): :meth:`create_metrics` gives torchmetrics states
      (synchronised across ranks); the compiled module keeps one fresh collection per stage
      (train/val/test), feeds every batch through :meth:`update_metrics` and logs
      ``compute()`` at epoch end: F1, IoU or AUROC of the whole set, never per-batch means;
    * batch-averaged (cuvis.ai): ``compute_metric(parent_output, batch) -> {name: float}``
      for one batch; the logged value is the mean over the batches of the epoch, each
      batch weighing the same (see :class:`~cuvis_graph.core.batch_mean.BatchMeanState`).

    :meth:`compute_metric` works on every metric leaf: for dataset-level ones it gives the
    metric of that one batch.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "compute_metric" in cls.__dict__:
            cls.compute_metric = _metric_entry(cls.__dict__["compute_metric"])

    def _protocol(self) -> str:
        kind = type(self)
        if kind.create_metrics is not MetricNode.create_metrics:
            return "dataset"
        if kind.compute_metric is not MetricNode.compute_metric:
            return "batch"
        raise TypeError(f"{kind.__name__} implements no metric protocol: define create_metrics() and "
                        "update_metrics(metrics, output, batch) (dataset-level torchmetrics states, recommended), "
                        "or compute_metric(parent_output, batch) -> dict[str, float] (batch-averaged)")

    def create_metrics(self) -> Metric | MetricCollection:
        self._protocol()
        from cuvis_graph.core.batch_mean import BatchMeanState

        return BatchMeanState()

    def update_metrics(
        self, metrics: Metric | MetricCollection, output: torch.Tensor, batch: Mapping[str, Any]
    ) -> None:
        if self._protocol() == "dataset":
            raise TypeError(f"{type(self).__name__} defines create_metrics but not update_metrics(metrics, "
                            "output, batch)")
        metrics.update(self.compute_metric(output, batch))

    def compute_metric(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``{name: value}`` of this one batch: ``compute_metric(parent_output, batch)`` or
        ``compute_metric(parent_output, labels=..., metadata=...)``."""
        self._protocol()
        output, batch, _, _ = self._call_inputs("compute_metric", args, kwargs)
        if self.needs_labels and TARGET_KEY not in batch:
            raise ValueError(f"{type(self).__name__} '{self.name}': labels are required; pass labels=... or a "
                             f"batch with '{self.label_source or 'mask'}'")
        state = self.create_metrics()
        self.update_metrics(state, output, batch)
        return self.compute_metrics(state)

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




def _metric_entry(impl: Any) -> Any:
    cuvis_style = labels_style(impl)

    @functools.wraps(impl)
    def compute_metric(self: MetricNode, *args: Any, **kwargs: Any) -> dict[str, float]:
        output, batch, _, _ = self._call_inputs("compute_metric", args, kwargs)
        if cuvis_style:
            return impl(self, output, labels=batch.get(TARGET_KEY), metadata=batch)
        return impl(self, output, batch)

    return compute_metric


class VisualizationNode(LeafNode):
    """Produces matplotlib figures every ``log_frequency`` epochs (rank 0, never in sanity check).

    Protocol: ``visualize(output, batch, parent) -> {figure_name: Figure}``. Also callable
    as ``visualize(parent_output, batch, step, stage)`` and by keyword (``parent_output=``,
    ``batch=``, ``step=`` / ``current_epoch=``, ``stage=``, ``logger=`` ignored); a subclass
    may implement that signature instead and return ``{name: Figure}`` or cuvis.ai's
    ``{"figure": fig, "type": name, ...}`` (figures are kept, other entries left out).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "visualize" in cls.__dict__:
            cls.visualize = _visualize_entry(cls.__dict__["visualize"])

    def __init__(self, log_frequency: int = 1, name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(name=name, label_source=label_source)
        if log_frequency < 1:
            raise ValueError(f"log_frequency must be >= 1, got {log_frequency}")
        self.log_frequency = int(log_frequency)

    @property
    def log_every_n_epochs(self) -> int:
        """cuvis.ai name of :attr:`log_frequency`."""
        return self.log_frequency

    def should_run(self, epoch: int) -> bool:
        self.__dict__["_current_epoch"] = int(epoch)
        return epoch % self.log_frequency == 0

    def should_log(self, epoch: int) -> bool:
        """cuvis.ai name of :meth:`should_run`."""
        return self.should_run(epoch)

    def visualize(self, output: torch.Tensor, batch: Mapping[str, Any], parent: Node) -> dict[str, Figure]:
        """``{figure_name: Figure}`` for one (detached, CPU) batch."""
        raise TypeError(f"{type(self).__name__} implements no visualization: define visualize(self, output, batch, "
                        "parent) -> {name: Figure} (or the cuvis.ai form visualize(self, parent_output, batch, "
                        "step, stage))")


_STEP_NAMES = ("step", "current_epoch", "epoch", "batch_idx")


def _visualize_entry(impl: Any) -> Any:
    params = list(inspect.signature(impl).parameters)[3:]  # after self, output, batch
    cuvis_style = "parent" not in params

    @functools.wraps(impl)
    def visualize(self: VisualizationNode, *args: Any, **kwargs: Any) -> dict[str, Any]:
        output, batch, rest, extras = self._call_inputs("visualize", args, kwargs)
        parent = extras.pop("parent", None)
        if rest and (rest[0] is None or isinstance(rest[0], nn.Module)):
            parent = rest.pop(0)
        step = next((extras[k] for k in _STEP_NAMES if k in extras), None)
        stage = extras.get("stage")
        if rest:
            step = rest.pop(0)
        if rest:
            stage = rest.pop(0)
        if parent is None:
            box = getattr(self, "_parent_box", ())
            parent = box[0] if box else None
        step = self.__dict__.get("_current_epoch", 0) if step is None else step
        if not cuvis_style:
            return figures_only(impl(self, output, batch, parent))
        values = {**dict.fromkeys(_STEP_NAMES, step), "stage": stage or "val", "logger": None, "parent": parent}
        return figures_only(impl(self, output, batch, **{k: values.get(k) for k in params if k in values}))

    return visualize


class MonitoringNode(RecordsInit):
    """A sink for metrics and artifacts (files, TensorBoard, W&B). Registered on the graph.

    Stages are ``"train"``, ``"val"``, ``"test"`` (or a stage name). A monitor that raises
    is reported once and disabled; training goes on. The cuvis.ai methods
    :meth:`log_artifacts`, :meth:`setup` and :meth:`teardown` are accepted too.
    """

    name: str | None = None
    compatible_parent_types: ClassVar[tuple[type, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_argument_aliases(cls)

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        raise NotImplementedError

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        raise NotImplementedError

    def log_artifacts(self, artifacts: Mapping[str, Any], step: int, stage: str) -> None:
        """Several artifacts: ``{name: Figure}`` or cuvis.ai's ``{name: {"figure": fig, ...}}``.

        Figures go to :meth:`log_artifact`; the other entries of a cuvis.ai dict (``type``,
        ``statistics``, ``data``...) go to ``log_artifact_data`` when the monitor has it (the
        file monitor writes them as JSON), else they are left out. Nothing is pickled.
        """
        for name, artifact in artifacts.items():
            figure, data = artifact, None
            if isinstance(artifact, Mapping):
                figure = artifact.get("figure")
                data = {k: v for k, v in artifact.items() if k != "figure"}
            if figure is not None:
                self.log_artifact(figure, name, step, stage)
            if data and hasattr(self, "log_artifact_data"):
                self.log_artifact_data(data, name, step, stage)

    def setup(self, trainer: Any = None) -> None:
        """Called before training (cuvis.ai); nothing to do by default."""

    def teardown(self) -> None:
        """cuvis.ai name of :meth:`close`."""
        self.close()

    def close(self) -> None:
        """Flush and release resources at the end of training."""

    def hparams(self) -> dict[str, Any]:
        return dict(getattr(self, "_hparams", {}))
