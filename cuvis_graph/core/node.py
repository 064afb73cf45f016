"""Node base class: named ports with symbolic shapes and the statistical-fit protocol.

A node is an ``nn.Module`` with

* ``INPUTS`` / ``OUTPUTS``: port name -> :class:`PortSpec`, whose ``dims`` mix symbols
  (``"B", "H", "W", "C"``) and integers. Symbols are scoped to one node: the compiler
  binds them from the parents' output dims and from :meth:`Node.dim_bindings`, then
  substitutes them into the output dims (e.g. a PCA declares ``("B","H","W","K")`` and
  binds ``K = n_components``).
* ``forward(**inputs)`` returning a tensor (one output port) or a dict of tensors.
* optionally the statistical protocol (``statistical = True``)::

      acc = node.create_accumulators(**inputs)      # first batch
      node.update_statistics(acc, **inputs)         # every batch, under no_grad
      node.finalize_statistics(acc)                 # writes buffers; node becomes fitted

  The framework all-reduces the accumulators across DDP ranks before ``finalize``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from cuvis_graph.core.aliases import callable_flag
from cuvis_graph.core.hparams import RecordsInit
from cuvis_graph.core.statistics import Accumulator
from cuvis_graph.errors import NotFittedError

__all__ = ["Dim", "DimBinding", "PortSpec", "Node", "DimensionMismatch", "snake_case", "unify_dims"]

Dim = str | int | None


def snake_case(name: str) -> str:
    """``"RXLogitHead"`` -> ``"rx_logit_head"``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


@dataclass(frozen=True)
class PortSpec:
    """Specification of one port.

    Attributes:
        dims: symbolic shape, e.g. ``("B", "H", "W", "C")``; ints are fixed sizes.
        dtype: expected dtype (documentation and ``describe()``); ``None`` for any.
        optional: an input that may stay unconnected.
        variadic: an input that takes a list of parents (fan-in).
        batch_key: default source of an input that is not wired to a parent.
        description: one line for ``describe()`` and the node catalog.
    """

    dims: tuple[Dim, ...]
    dtype: torch.dtype | None = torch.float32
    optional: bool = False
    variadic: bool = False
    batch_key: str | None = None
    description: str = ""


class DimensionMismatch(ValueError):
    """Raised by :meth:`Node.infer_output_dims` when input shapes disagree."""


@dataclass
class DimBinding:
    values: dict[str, int] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


def unify_dims(
    spec_dims: tuple[Dim, ...], actual: tuple[Dim, ...], binding: DimBinding, where: str
) -> None:
    """Bind ``spec_dims`` symbols to ``actual`` sizes; raise :class:`DimensionMismatch`."""
    if len(spec_dims) != len(actual):
        raise DimensionMismatch(
            f"{where} expects rank {len(spec_dims)} {_fmt(spec_dims)}, parent gives rank "
            f"{len(actual)} {_fmt(actual)}"
        )
    for sym, size in zip(spec_dims, actual, strict=True):
        if size is None or isinstance(size, str):
            continue
        if isinstance(sym, int):
            if sym != size:
                raise DimensionMismatch(f"{where} expects size {sym}, got {size} in {_fmt(actual)}")
        elif sym is not None:
            if sym in binding.values and binding.values[sym] != size:
                raise DimensionMismatch(
                    f"{where}: {sym}={size} disagrees with {sym}={binding.values[sym]} "
                    f"from {binding.origin[sym]}"
                )
            binding.values.setdefault(sym, size)
            binding.origin.setdefault(sym, where)


def _fmt(dims: tuple[Dim, ...]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


class Node(RecordsInit, nn.Module):
    """Base of all processing nodes. Subclasses set ``INPUTS``/``OUTPUTS`` and ``forward``.

    The conventions the compiler, the training and prediction rely on are declared here,
    never guessed from attribute or port names:

    Class flags (a subclass sets them in its class body; a flag that depends on the
    constructor arguments is a :class:`~cuvis_graph.core.flags.computed_flag`, never an
    assignment on the instance):
        statistical: the node must see data (statistical initialization) before it runs.
            A computed one starts unfitted when its class default is ``True``; its
            constructor calls ``self.mark_fitted(not self.statistical)`` once the arguments
            are set.
        provides_labels: its output is a label map that leaves may consume (label mappers).
        is_decider: its output is a 0/1 decision mask derived from scores (prediction takes
            it as the mask, never as the score map).
        folds_affine_inputs: input ports whose statistics may absorb a fitted affine parent
            (:func:`cuvis_graph.core.fitting.fold_affine_parents`); empty: none.
        affine_once_fitted: once fitted, the node is a per-channel affine map ``y = a x + b``
            of its single input (:meth:`affine_coefficients`). A statistical child that folds
            it is then fitted in the same data pass: both accumulate the raw rows, the parent
            is finalized first and its ``(a, b)`` transforms the child's accumulators.

    Methods with defaults:
        :meth:`input_channels`: the channel count C the node has taken from its input.
        :meth:`logged_values`: scalars logged every training epoch.
        :meth:`on_epoch_start`, :meth:`prepare_for_train`, :meth:`materialize`: hooks.
        :meth:`affine_coefficients`, :meth:`prepare_statistics`: statistical-fit hooks.
    """

    INPUTS: ClassVar[dict[str, PortSpec]] = {"x": PortSpec(("B", "H", "W", "C"))}
    OUTPUTS: ClassVar[dict[str, PortSpec]] = {"out": PortSpec(("B", "H", "W", "C"))}
    #: True when the node must see data (statistical initialization) before it runs.
    statistical: ClassVar[bool] = False
    #: True for nodes whose output is a label map that leaves may consume (label mappers).
    provides_labels: ClassVar[bool] = False
    #: True for nodes whose output is a 0/1 decision mask (thresholds of a score).
    is_decider: ClassVar[bool] = False
    #: Input ports whose accumulated statistics may fold a fitted affine parent in.
    folds_affine_inputs: ClassVar[tuple[str, ...]] = ()
    #: True when the fitted node is a per-channel affine map of its one input (foldable by children).
    affine_once_fitted: ClassVar[bool] = False

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name: str | None = name
        # the class's value: a flag computed from arguments is not readable before they are set
        self.register_buffer("_fitted", torch.tensor(not type(self).statistical), persistent=True)
        self._frozen = False

    # -- ports --------------------------------------------------------------------
    @property
    def input_specs(self) -> dict[str, PortSpec]:
        return dict(self.INPUTS)

    @property
    def output_specs(self) -> dict[str, PortSpec]:
        return dict(self.OUTPUTS)

    def dim_bindings(self) -> dict[str, int]:
        """Symbols fixed by the node's own parameters (e.g. ``{"K": n_components}``)."""
        return {}

    def infer_output_dims(
        self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]
    ) -> dict[str, tuple[Dim, ...]]:
        """Output dims from the wired inputs' dims (unification of symbols, then substitution)."""
        binding = DimBinding(dict(self.dim_bindings()), {k: "the node's parameters" for k in self.dim_bindings()})
        specs = self.input_specs
        for port, dims in input_dims.items():
            spec = specs[port]
            for i, d in enumerate(dims if spec.variadic else [dims]):
                suffix = f"[{i}]" if spec.variadic else ""
                unify_dims(spec.dims, tuple(d), binding, f"port '{port}{suffix}'")
        return {
            port: tuple(binding.values.get(d) if isinstance(d, str) else d for d in spec.dims)
            for port, spec in self.output_specs.items()
        }

    def input_channels(self) -> int | None:
        """The channel count ``C`` of the input this node has taken (per-channel statistics
        ``[C]``, logits built for ``C`` channels...), ``None`` while it holds nothing sized by
        C. Read to tell the ``C`` of a saved model that does not declare it."""
        return None

    def materialize(self, input_dims: Mapping[str, tuple[Dim, ...] | list[tuple[Dim, ...]]]) -> None:
        """Create the parameters whose size the compiled ``input_dims`` fix (e.g. one logit per
        input channel). Called once after a successful compile (never by the compile itself,
        which changes nothing) by the paths that train or run the graph; idempotent. Default:
        nothing to create."""

    # -- statistical protocol ---------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether the node can run (always true for non-statistical nodes)."""
        return bool(self._fitted.item())

    def mark_fitted(self, fitted: bool = True) -> None:
        self._fitted.fill_(fitted)

    def create_accumulators(self, **inputs: torch.Tensor) -> dict[str, Accumulator]:
        """Accumulators for the streaming pass, sized from the first batch's inputs."""
        raise NotImplementedError(f"{type(self).__name__} declares statistical=True but no accumulators")

    def update_statistics(self, accumulators: dict[str, Accumulator], **inputs: torch.Tensor) -> None:
        """Fold one batch into ``accumulators`` (called under ``torch.no_grad()``)."""
        raise NotImplementedError

    def finalize_statistics(self, accumulators: dict[str, Accumulator]) -> None:
        """Turn the (all-reduced) accumulators into buffers/parameters."""
        raise NotImplementedError

    def prepare_statistics(self, plan: Any, name: str) -> None:
        """Called before the node's statistics pass with the compiled plan and its step name
        (for statistics that depend on the graph around it). Default: nothing."""

    def affine_coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The node's fitted map as ``y = a * x + b`` (``[C]`` or ``[1]``), for statistical
        children that fold it (``folds_affine_inputs``); ``None``: not an affine map."""
        return None

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"node '{self.name}' ({type(self).__name__}) has no statistics yet: run "
                "graph.train(...) (max_epochs=0 fits statistics only) or load a fitted graph"
            )

    # -- training state ------------------------------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if callable(cls.__dict__.get("is_trainable")):  # a method here, a property in cuvis.ai: both work
            cls.is_trainable = callable_flag(cls.__dict__["is_trainable"])

    @callable_flag
    def is_trainable(self) -> bool:
        """Whether the node has (or will have after fitting) parameters that need gradients;
        reads as a method (``node.is_trainable()``) and as a flag (``if node.is_trainable:``)."""
        return not self._frozen and any(p.requires_grad for p in self.parameters())

    def freeze(self) -> None:
        """Stop gradients to all parameters of this node."""
        self._frozen = True
        for p in self.parameters():
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        """Let gradients reach this node's parameters again."""
        self._frozen = False
        for p in self.parameters():
            p.requires_grad_(True)

    def prepare_for_train(self) -> None:
        """Hook called after fitting and before gradient training (e.g. buffers -> parameters)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called by the compiled module at the start of every training epoch (0-based)."""

    def logged_values(self) -> dict[str, float]:
        """Scalars logged at every training epoch start as ``train/<node>/<key>`` (e.g. a
        temperature); default none."""
        return {}

    # -- state dict: buffers sized at fit time are resized on load ------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook
        for key, value in state_dict.items():
            if not key.startswith(prefix) or "." in key[len(prefix):]:
                continue
            attr = key[len(prefix):]
            if attr in self._buffers and self._buffers[attr] is not None:
                if self._buffers[attr].shape != value.shape:
                    self._buffers[attr] = torch.empty_like(value)
            elif attr in self._parameters and self._parameters[attr] is not None:
                p = self._parameters[attr]
                if p.shape != value.shape:
                    self._parameters[attr] = nn.Parameter(torch.empty_like(value), requires_grad=p.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    def hparams(self) -> dict[str, Any]:
        """Constructor parameters (for describe/YAML); subclasses record them in ``self._hparams``."""
        return dict(getattr(self, "_hparams", {}))
