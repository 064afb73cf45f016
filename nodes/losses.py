"""Loss leaves: the total loss is ``sum_i weight_i * L_i`` over the graph's loss leaves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.leaves import TARGET_KEY, LossNode
from cuvis_graph.core.node import snake_case
from cuvis_graph.core.registry import get_class, register

from ._parent import ParentBound

__all__ = [
    "AnomalyBCEWithLogits",
    "OrthogonalityLoss",
    "MSEReconstructionLoss",
    "SelectorEntropyRegularizer",
    "SelectorDiversityRegularizer",
    "WeightedMultiLoss",
]


@register
class AnomalyBCEWithLogits(LossNode):
    """Binary cross-entropy on per-pixel anomaly logits.

    ``L = -mean_p [ w_pos * y_p * log s(z_p) + (1 - y_p) * log(1 - s(z_p)) ]`` with
    ``s`` the sigmoid, ``z`` the parent's logits ``[B,H,W]`` or ``[B,H,W,1]`` and
    ``y = (target > 0)`` from the leaf's label source (batch ``mask`` or a label node).

    Args:
        weight: factor in the total loss.
        pos_weight: weight of anomalous pixels (``w_pos >= 0``; counters class imbalance).
        reduction: ``"mean"`` or ``"sum"`` over pixels.
    """

    needs_labels = True

    def __init__(self, weight: float = 1.0, pos_weight: float | None = None, reduction: str = "mean",
                 name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(weight=weight, name=name, label_source=label_source)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if pos_weight is not None and pos_weight < 0:
            raise ValueError(f"pos_weight: must be >= 0 (the weight of anomalous pixels), got {pos_weight}; "
                             "a negative weight rewards missing anomalies")
        self.pos_weight, self.reduction = pos_weight, reduction

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = output.squeeze(-1) if output.ndim == 4 else output
        target = (batch[TARGET_KEY] > 0).to(logits.dtype)
        if target.shape != logits.shape:
            raise ValueError(f"leaf '{self.name}': logits {tuple(logits.shape)} and labels {tuple(target.shape)} differ")
        pos_weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device,
                                                                       dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction=self.reduction)


@register
class OrthogonalityLoss(ParentBound, LossNode):
    """Orthonormality of learned components: ``L = ||W W^T - I_K||_F^2``.

    ``W`` (``[K, C]``) is the parent's ``components`` (e.g. ``TrainablePCA(trainable=True)``);
    the parent output is not read. The total loss adds ``weight * L``. Zero exactly when
    the rows of ``W`` are orthonormal.

    Args:
        weight: factor ``w`` in the total loss.
    """

    required_parent_attributes = ("components",)

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        w = self.parent.components
        gram = w @ w.T
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return ((gram - eye) ** 2).sum()


@register
class MSEReconstructionLoss(LossNode):
    """Mean squared error to a target: ``L = mean_i (y_i - t_i)^2`` (or the sum).

    ``y`` is the parent output; ``t`` is read through the leaf's label source: ``target``
    names a batch key (default ``"cube"``) or a node of the graph (its first output port),
    and the executor hands it over as ``batch["target"]``. Shapes must be equal.

    Args:
        target: batch key or node name of the reconstruction target.
        weight: factor in the total loss.
        reduction: ``"mean"`` or ``"sum"``.
        detach_target: stop gradients through the target (default), so a trainable node
            upstream of the target is not pulled towards the reconstruction.
    """

    needs_labels = True  # the target travels as batch["target"]

    def __init__(self, target: str = "cube", weight: float = 1.0, reduction: str = "mean",
                 detach_target: bool = True, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name, label_source=target)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.target, self.reduction, self.detach_target = target, reduction, detach_target

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        target = batch[TARGET_KEY]
        if target.shape != output.shape:
            raise ValueError(f"leaf '{self.name}': output {tuple(output.shape)} and target '{self.target}' "
                             f"{tuple(target.shape)} differ")
        target = target.detach() if self.detach_target else target
        return F.mse_loss(output, target.to(output.dtype), reduction=self.reduction)


def _selector_distribution(parent: Any) -> torch.Tensor:
    weights = parent.channel_weights()
    return weights / weights.sum()


@register
class SelectorEntropyRegularizer(ParentBound, LossNode):
    """Entropy of a channel selector's weights: ``-H(p)``, or ``(H(p) - H_target)^2``.

    ``p = w / sum(w)`` with ``w = parent.channel_weights()`` (for ``SoftChannelSelector``:
    ``p = softmax(l / T)``, noise-free) and ``H(p) = -sum_c p_c log p_c`` (nats;
    ``0 log 0 = 0``). The total loss adds ``weight * L``: with ``target_entropy=None``,
    ``-w H`` (a positive weight pushes towards uniform weights, a negative one towards a
    peaked selection); otherwise ``w (H - H_target)^2`` (e.g. ``log(n_select)`` for an
    even spread over ``n_select`` channels).

    Args:
        weight: ``w``.
        target_entropy: ``H_target`` in nats, or ``None``.
    """

    required_parent_attributes = ("channel_weights",)

    def __init__(self, weight: float = 0.01, target_entropy: float | None = None, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name)
        self.target_entropy = None if target_entropy is None else float(target_entropy)

    def entropy(self) -> torch.Tensor:
        """``H(p)`` of the parent's current weights (differentiable)."""
        return torch.special.entr(_selector_distribution(self.parent)).sum()

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        h = self.entropy()
        return -h if self.target_entropy is None else (h - self.target_entropy) ** 2


@register
class SelectorDiversityRegularizer(ParentBound, LossNode):
    """Spread of a channel selector's weights: ``L = -Var(w)``.

    ``w = parent.channel_weights()`` (``[C]``; for ``SoftChannelSelector`` they sum to
    ``n_select``), ``Var(w) = mean_c (w_c - mean(w))^2`` (population variance, ddof = 0).
    The total loss adds ``weight * L = -weight * Var(w)``: a positive weight rewards
    weights that differ between channels (a decisive selection).

    Args:
        weight: factor in the total loss.
    """

    required_parent_attributes = ("channel_weights",)

    def __init__(self, weight: float = 0.01, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name)

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return -self.parent.channel_weights().var(unbiased=False)


def _build_child(spec: LossNode | Mapping[str, Any], where: str) -> LossNode:
    if isinstance(spec, LossNode):
        return spec
    if isinstance(spec, Mapping) and "type" in spec:
        cls = get_class(str(spec["type"]))
        if not (isinstance(cls, type) and issubclass(cls, LossNode)):
            raise TypeError(f"{where}: type '{spec['type']}' is not a LossNode")
        return cls(**{k: v for k, v in spec.items() if k != "type"})
    raise TypeError(f"{where}: expected a LossNode or a mapping with 'type', got {type(spec).__name__}")


@register
class WeightedMultiLoss(ParentBound, LossNode):
    """Several losses on one parent as one leaf: ``L = sum_i w_i L_i``.

    Every child ``L_i`` sees the same parent output and batch; ``w_i`` is ``weights[i]``
    when given, else the child's own ``weight``. After each call, :meth:`components` (and
    ``last_components``) holds ``{child_name: w_i L_i}`` (detached). Logging by the
    compiled module:

    * ``<stage>/loss/<name>``: ``weight * L`` (this leaf's total, as for any loss leaf);
    * ``<stage>/loss/<name>/<child_name>``: each ``w_i L_i`` (epoch means), so the
      components sum to the leaf total divided by this leaf's ``weight``.

    The compiler validates the parent against every child's parent requirements. Children
    that read a target (labels, a reconstruction target) must agree on its source: it
    becomes this leaf's ``label_source``.

    Args:
        losses: child losses: a list, or ``{child_name: loss}``; each a ``LossNode`` or a
            YAML-style mapping ``{"type": "OrthogonalityLoss", "weight": 0.1, ...}``;
            ``None``: none yet, add them with :meth:`add_loss`.
        weights: ``w_i`` as a list (same order) or ``{child_name: w_i}``; ``None``: the
            children's own weights (cuvis.ai: ``loss_weights``).
        weight: factor of the whole sum in the total loss.
    """

    def __init__(self, losses: Sequence[LossNode | Mapping[str, Any]] | Mapping[str, LossNode | Mapping[str, Any]]
                 | None = None, weights: Sequence[float] | Mapping[str, float] | None = None, weight: float = 1.0,
                 name: str | None = None, label_source: str | None = None) -> None:
        super().__init__(weight=weight, name=name, label_source=label_source)
        losses = {} if losses is None else losses
        if isinstance(losses, Mapping):
            items = [(str(k), _build_child(v, f"losses['{k}']")) for k, v in losses.items()]
        else:
            items = []
            for i, spec in enumerate(losses):
                child = _build_child(spec, f"losses[{i}]")
                items.append((child.name or f"{snake_case(type(child).__name__)}_{i}", child))
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"child loss names must be unique, got {names}")
        for child_name, child in items:
            child.name = child.name or child_name
        self.losses = nn.ModuleDict(items)
        if weights is None:
            self.component_weights = {n: c.weight for n, c in items}
        elif isinstance(weights, Mapping) and not items:  # weights of children added later
            self.component_weights = {str(k): float(v) for k, v in weights.items()}
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise ValueError(f"weights for unknown children {sorted(unknown)}; children: {names}")
            self.component_weights = {n: float(weights.get(n, c.weight)) for n, c in items}
        else:
            if len(weights) != len(items):
                raise ValueError(f"got {len(weights)} weights for {len(items)} child losses")
            self.component_weights = {n: float(w) for n, w in zip(names, weights, strict=True)}
        self._own_label_source = label_source
        self._resolve_target()
        self.last_components: dict[str, torch.Tensor] = {}

    def _resolve_target(self) -> None:
        """``needs_labels`` and ``label_source`` from the children (they must agree on the target)."""
        children = list(self.losses.values())
        sources = {c.label_source for c in children if c.needs_labels}
        if len(sources) > 1:
            raise ValueError(f"child losses read different targets {sorted(map(str, sources))}: "
                             "attach them as separate loss leaves")
        child_source, own = next(iter(sources), None), self._own_label_source
        if child_source is not None and own is not None and child_source != own:
            raise ValueError(f"label_source={own!r} disagrees with the children's target {child_source!r}")
        self.label_source = own if own is not None else child_source

    def add_loss(self, name: str, loss: LossNode | Mapping[str, Any], weight: float | None = None) -> LossNode:
        """Add child ``name`` with factor ``w = weight`` (``None``: the weight given for ``name``
        at construction, else the child's own)."""
        if name in self.losses:
            raise ValueError(f"a child loss named {name!r} exists already; children: {list(self.losses)}")
        child = _build_child(loss, f"add_loss({name!r})")
        child.name = child.name or name
        self.losses[name] = child
        preset = self.component_weights.get(name, child.weight)
        self.component_weights[name] = float(preset if weight is None else weight)
        try:
            self._resolve_target()
        except ValueError:
            del self.losses[name], self.component_weights[name]
            raise
        if self._parent_box and isinstance(child, ParentBound):
            child.bind_parent(self._parent_box[0])
        return child

    @computed_flag(default=False)
    def needs_labels(self) -> bool:
        """Whether any child reads a target."""
        return any(c.needs_labels for c in self.losses.values())

    def components(self) -> dict[str, torch.Tensor]:
        """``{child_name: w_i L_i}`` of the last call."""
        return dict(self.last_components)

    @property
    def loss_nodes(self) -> nn.ModuleDict:
        """cuvis.ai name of :attr:`losses`."""
        return self.losses

    @property
    def loss_weights(self) -> dict[str, float]:
        """cuvis.ai name of the child factors ``{child_name: w_i}``."""
        return self.component_weights

    @property
    def required_batch_keys(self) -> set[str]:
        return set().union(*(c.required_batch_keys for c in self.losses.values()))

    def validate_parent(self, parent: Any) -> list[str]:
        problems = super().validate_parent(parent)
        for child_name, child in self.losses.items():
            problems += [f"child '{child_name}': {p}" for p in child.validate_parent(parent)]
        return problems

    def bind_parent(self, parent: Any) -> None:
        super().bind_parent(parent)
        for child in self.losses.values():
            if isinstance(child, ParentBound):
                child.bind_parent(parent)

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """``sum_i w_i L_i``; ``0`` without children."""
        total = None if self.losses else output.new_zeros(())
        components: dict[str, torch.Tensor] = {}
        for child_name, child in self.losses.items():
            value = self.component_weights[child_name] * child.compute_loss(output, batch)
            components[child_name] = value.detach()
            total = value if total is None else total + value
        self.last_components = components
        return total

    def hparams(self) -> dict[str, Any]:
        params = super().hparams()
        params["losses"] = {n: {"type": type(c).__name__, **c.hparams()} for n, c in self.losses.items()}
        params["weights"] = dict(self.component_weights)
        return params
