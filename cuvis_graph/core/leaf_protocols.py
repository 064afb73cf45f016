"""The two call styles of leaf methods, in one place.

The compiled module calls ``compute_loss(output, batch)``, ``update_metrics(state, output,
batch)`` and ``visualize(output, batch, parent)``. Code written for cuvis.ai calls (and
implements) them the cuvis.ai way:

* ``compute_loss(parent_output, labels=None, metadata=None)``, returning a tensor or
  ``(loss, info)``;
* ``compute_metric(parent_output, batch)`` / ``compute_metric(parent_output, labels=...,
  metadata=...)`` -> ``{name: float}`` for one batch;
* ``visualize(parent_output, batch, step, stage)``, also by keyword (``parent_output=``,
  ``batch=``, ``current_epoch=``, ``logger=``).

:func:`leaf_call` turns either call into ``(output, batch, rest, extras)``: a cuvis.ai
``(x, labels, metadata)`` tuple is unpacked, ``labels`` become ``batch["target"]`` (the key
a leaf reads its labels from) and ``metadata`` entries join the batch.
:func:`labels_style` tells whether a subclass *implements* the cuvis.ai signature, so the
framework can call it with ``labels=`` / ``metadata=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["leaf_call", "labels_style", "unpack_result", "figures_only", "TARGET"]

TARGET = "target"


def leaf_call(args: tuple[Any, ...], kwargs: dict[str, Any], *, where: str
              ) -> tuple[Any, dict[str, Any], list[Any], dict[str, Any]]:
    """``(output, batch, rest, extras)`` from a call in either style: ``rest`` the positional
    arguments after the batch, ``extras`` the other keywords (``step``, ``stage``...)."""
    kwargs, rest = dict(kwargs), list(args)
    if "parent_output" in kwargs:
        output = kwargs.pop("parent_output")
    elif "output" in kwargs:
        output = kwargs.pop("output")
    elif rest:
        output = rest.pop(0)
    else:
        raise TypeError(f"{where}: missing the parent output (first argument or parent_output=)")
    batch = kwargs.pop("batch", None)
    if batch is None and rest and (rest[0] is None or isinstance(rest[0], Mapping)):
        batch = rest.pop(0)
    labels, metadata = kwargs.pop("labels", None), kwargs.pop("metadata", None)
    if isinstance(output, tuple) and len(output) == 3:  # cuvis.ai (x, labels, metadata)
        output, tuple_labels, tuple_metadata = output
        labels = tuple_labels if labels is None else labels
        metadata = tuple_metadata if metadata is None else metadata
    if batch is not None and not isinstance(batch, Mapping):
        raise TypeError(f"{where}: the batch must be a dict, got {type(batch).__name__}")
    batch = dict(batch or {})
    if isinstance(metadata, Mapping):
        batch = {**metadata, **batch}
    if labels is not None:
        batch[TARGET] = labels
    return output, batch, rest, kwargs


def labels_style(method: Callable[..., Any]) -> bool:
    """Whether ``method(self, parent_output, labels=None, metadata=None)`` is the cuvis.ai
    signature (it has ``labels`` or ``metadata`` and no ``batch``)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "batch" not in params and ("labels" in params or "metadata" in params)


def unpack_result(result: Any) -> tuple[Any, dict[str, Any]]:
    """``(value, info)`` from ``value`` or ``(value, info)``."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        return result[0], dict(result[1])
    return result, {}


def figures_only(result: Any) -> dict[str, Any]:
    """``{name: Figure}`` from a ``visualize`` result: a cuvis.ai ``{"figure": fig, "type": t,
    ...}`` becomes ``{t: fig}``; entries that are not figures are left out."""
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise TypeError(f"visualize must return a dict of figures, got {type(result).__name__}")
    if hasattr(result.get("figure"), "savefig"):
        return {str(result.get("type") or "figure"): result["figure"]}
    return {str(k): v for k, v in result.items() if hasattr(v, "savefig")}
