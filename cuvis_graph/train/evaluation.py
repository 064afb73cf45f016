"""Validation and test passes outside a fit: the validation after statistical init, the test
split after the last stage (final and best weights) and :func:`evaluate_graph`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

from cuvis_graph.core.plan import Plan
from cuvis_graph.errors import ConfigError
from cuvis_graph.monitors.hub import MonitorHub, MonitorLogger
from cuvis_graph.train.lightning import GraphModule
from cuvis_graph.train.lightning_data import as_lightning_datamodule
from cuvis_graph.train.run_checkpoints import load_checkpoint

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["evaluate_graph", "run_validation", "evaluate_test_split", "run_test", "has_batches", "floats"]


def run_validation(module: GraphModule, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub,
                   step: int, root: str) -> dict[str, float]:
    """One validation pass outside a fit (figures go under stage ``initial``)."""
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, logger=MonitorLogger(hub, step),
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    return floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])


def evaluate_test_split(plan: Plan, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub,
                        step: int, root: str, run: Any, best: Mapping[str, Any] | None) -> dict[str, float]:
    """The test split, once, after the last stage: the final weights as ``test/...`` and, when
    the checkpoint monitor chose a best checkpoint, its weights as ``test_best/...`` (the final
    weights are back in the graph afterwards). ``{}`` without test data or leaves to evaluate."""
    module = GraphModule(plan, hub=hub)
    if not (module.metric_bindings or module.loss_bindings) or not has_batches(datamodule, "test_dataloader"):
        return {}
    results = run_test(module, datamodule, trainer_kwargs, hub, step, root)
    path = run.path / best["checkpoint"] if run is not None and best and best.get("checkpoint") else None
    if path is not None and path.is_file():
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(load_checkpoint(path)["state_dict"])
        module.test_label = "test_best"
        results.update(run_test(module, datamodule, trainer_kwargs, hub, step, root))
        module.load_state_dict(final)
    return results


def run_test(module: GraphModule, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub | None,
             step: int, root: str | None, loader: Any = None) -> dict[str, float]:
    """One test pass (keys ``<module.test_label>/...``); ``loader`` replaces the test split."""
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1},
                         logger=MonitorLogger(hub, step) if hub is not None else False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    if loader is not None:
        return floats(trainer.test(module, dataloaders=loader, verbose=False)[0])
    return floats(trainer.test(module, datamodule=datamodule, verbose=False)[0])


def evaluate_graph(graph: Graph, datamodule: Any, split: str = "auto", *, accelerator: str = "auto",
                   precision: str | int = "32-true") -> dict[str, float]:
    """Losses and metric leaves of a (trained) graph on one split of ``datamodule``, as the
    end of training computes them: ``split`` ``"test"``, ``"val"``, or ``"auto"`` (the test
    split when there is one, else the validation split). Keys ``<split>/<leaf>/<metric>``,
    ``<split>/loss``..."""
    datamodule = as_lightning_datamodule(datamodule)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup("test")
    if split == "auto":
        split = "test" if has_batches(datamodule, "test_dataloader") else "val"
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test', 'val' or 'auto', got {split!r}")
    if not has_batches(datamodule, f"{split}_dataloader"):
        raise ConfigError(f"{type(datamodule).__name__} has no {'test or validation' if split == 'val' else split} "
                          "data to evaluate")
    module = GraphModule(graph.compile(datamodule))
    if not (module.metric_bindings or module.loss_bindings):
        raise ConfigError(f"graph '{graph.name}' has no metric or loss leaves to evaluate")
    module.test_label = split
    kwargs = {"accelerator": accelerator, "precision": precision, "devices": 1, "enable_progress_bar": False}
    loader = getattr(datamodule, f"{split}_dataloader")()
    try:
        return run_test(module, datamodule, kwargs, None, 0, None, loader=loader)
    finally:
        for step in module.plan.steps:
            step.node.eval()


def has_batches(datamodule: Any, method: str) -> bool:
    """Whether ``datamodule.<method>()`` gives a loader with at least one batch (a loader
    without a length counts as one that has)."""
    fn = getattr(datamodule, method, None)
    if fn is None:
        return False
    try:
        loader = fn()
    except Exception:  # noqa: BLE001 - no loader of that kind
        return False
    try:
        return len(loader) > 0
    except TypeError:
        return True


def floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Logged values (tensors of one element) as floats."""
    return {k: float(v) for k, v in metrics.items()}
