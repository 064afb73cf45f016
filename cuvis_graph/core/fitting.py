"""Statistical initialization: streaming passes over the training data.

Nodes are fitted level by level (see :meth:`Plan.statistical_levels`): pass ``k`` runs
the executor on the already-fitted ancestors of level-``k`` nodes and folds their inputs
into the nodes' accumulators. Number of passes = number of statistical depth levels.
Per-channel affine parents (normalizers, ``affine_once_fitted``) of a node that accepts it
are folded into its statistics instead of being run (:func:`fold_affine_parents`); an
unfitted one is fitted in the same pass: both accumulate the same raw rows, and a level's
nodes are finalized in topological order, each child after the parents whose maps it folds.
Everything runs under ``torch.no_grad()`` with autocast disabled (a ``bf16-mixed`` run or a
caller's own autocast never lowers the precision of what the float64 accumulators see);
nothing is concatenated. Under DDP each rank
streams its shard and the accumulators are all-reduced before ``finalize_statistics``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm  # plain text bars: tqdm.auto wants ipywidgets in notebooks

from cuvis_graph.core.executor import Executor
from cuvis_graph.core.plan import Plan, Step
from cuvis_graph.core.row_stream import RowStream
from cuvis_graph.core.statistics import Accumulator, StatisticsError

__all__ = ["fit_statistics", "FitReport", "move_batch"]

log = logging.getLogger(__name__)


@dataclass
class FitReport:
    """What statistical initialization did: passes, nodes per level, samples seen."""

    passes: int = 0
    levels: list[list[str]] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy a batch dict with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


#: Pixels per executor call in a statistics pass: a batch is run in slices of whole images so
#: the intermediate cubes stay small (allocated once and reused instead of page-faulted in
#: per batch). Sufficient statistics do not depend on how samples are grouped.
FIT_SLICE_PIXELS = 65536


def _slices(batch: Mapping[str, Any], max_pixels: int | None = None) -> Iterable[Mapping[str, Any]]:
    """``batch`` cut along B into parts of at most ``max_pixels`` pixels (at least one image);
    per-sample tensors (first dim B) are sliced, the rest (``wavelengths``) shared."""
    cube = batch.get("cube")
    if not isinstance(cube, torch.Tensor) or cube.ndim != 4:
        yield batch
        return
    b, h, w = cube.shape[:3]
    step = max(1, (max_pixels or FIT_SLICE_PIXELS) // max(h * w, 1))
    if step >= b:
        yield batch
        return
    for i in range(0, b, step):
        yield {k: v[i:i + step] if _per_sample(k, v, b) else v for k, v in batch.items()}


def fold_affine_parents(plan: Plan, step: Step) -> tuple[Step, dict[str, list[str]]]:
    """``step`` with the ports it lists in ``folds_affine_inputs`` rewired past affine parents.

    A parent declaring ``affine_once_fitted`` maps ``x -> a x + b`` per channel once fitted;
    the statistics pass feeds the node the input of the chain of such parents
    (:meth:`Plan.affine_chain`) and, when the parents are fitted, transforms its accumulators
    with the chain's composed map (:func:`affine_maps`), so the normalized cube is never
    materialised. Returns the rewired step and the chain (nearest parent first) per port.
    """
    inputs, chains = plan.folded_inputs(step.name)
    return (Step(step.name, step.node, inputs) if chains else step), chains


def affine_maps(plan: Plan, chains: Mapping[str, list[str]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The composed ``(a, b)`` per port of fitted chains of affine parents (nearest first):
    ``y = a x + b`` from the chain's input ``x``; each parent gives ``affine_coefficients()``."""
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for port, chain in chains.items():
        a = b = None
        for name in chain:
            coefficients = plan.step(name).node.affine_coefficients()
            if coefficients is None:
                raise StatisticsError(f"node '{name}' declares affine_once_fitted but gives no affine "
                                      "coefficients after its fit")
            pa, pb = coefficients
            a, b = (pa, pb) if a is None else (a * pa, a * pb + b)  # y = a (pa x + pb) + b
        maps[port] = (a, b)
    return maps


def _sources_ancestors(plan: Plan, steps: Iterable[Step]) -> set[str]:
    """Nodes the inputs of ``steps`` come from, with their ancestors."""
    names = {s.key for step in steps for src in step.inputs.values()
             for s in (src if isinstance(src, list) else [src]) if s.kind == "node"}
    return names | plan.ancestors(names)


def _per_sample(key: str, value: Any, batch_size: int) -> bool:
    """A tensor with one entry per image (``[B, ...]``); ``wavelengths`` ``[C]`` is shared."""
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch_size \
        and key != "wavelengths"


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device`` (a no-op where the device has no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def fit_statistics(
    plan: Plan,
    loader_factory: Callable[[], Iterable[Mapping[str, Any]]],
    *,
    device: torch.device | str = "cpu",
    refit: bool | Iterable[str] = False,
    progress: bool = True,
) -> FitReport:
    """Fit every statistical node of ``plan`` that is not fitted yet (and those in ``refit``).

    Args:
        plan: compiled plan.
        loader_factory: returns a fresh iterable of batches (one call per pass).
        device: where nodes and batches run.
        refit: fit already-fitted nodes again: ``True`` for all, or the names of some.
        progress: show a progress bar per pass.
    """
    device = torch.device(device)
    executor = Executor(plan)
    levels = plan.statistical_levels(refit=refit)
    report = FitReport(levels=levels)
    started = time.perf_counter()
    for depth, names in enumerate(levels, 1):
        folded = {name: fold_affine_parents(plan, plan.step(name)) for name in names}
        needed = _sources_ancestors(plan, [step for step, _ in folded.values()])
        for name in names:  # nodes whose statistics depend on the graph (RXGlobal's use_background_mask="auto")
            plan.step(name).node.prepare_statistics(plan, name)
        accumulators: dict[str, dict[str, Accumulator]] = {}
        loader = loader_factory()
        desc = f"statistics {depth}/{len(levels)} ({', '.join(names)})"
        with torch.no_grad(), _no_autocast(device):
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                for part in _slices(move_batch(batch, device)):
                    outputs = executor.run(part, only=needed)
                    with RowStream():  # the nodes that read the same rows read each block once
                        for name in names:
                            step = folded[name][0]
                            inputs = executor.node_inputs(step, part, outputs)
                            if name not in accumulators:
                                accumulators[name] = step.node.create_accumulators(**inputs)
                            step.node.update_statistics(accumulators[name], **inputs)
                report.batches += 1
        report.passes += 1
        for name in names:
            if name not in accumulators:
                raise RuntimeError(f"statistical node '{name}' saw no data: the training loader is empty")
            # the parents folded are fitted by now (earlier levels, or earlier in this one)
            for a, b in affine_maps(plan, folded[name][1]).values():  # all accumulators hold that port's rows
                for acc in accumulators[name].values():
                    acc.affine_(a, b)
            for acc in accumulators[name].values():
                acc.all_reduce()
            node = plan.step(name).node
            try:
                node.finalize_statistics(accumulators[name])
            except StatisticsError as exc:  # name the node once, in front
                if str(exc).startswith(f"node '{name}'"):
                    raise
                raise StatisticsError(f"node '{name}' ({type(node).__name__}): {exc}") from exc
            node.mark_fitted(True)
        log.info("statistics pass %d/%d fitted %s", depth, len(levels), names)
    report.seconds = time.perf_counter() - started
    return report
