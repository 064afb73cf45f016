"""The training lifecycle behind ``graph.train``: statistical init, then the stages.

::

    compile (graph + stages checked before any data)
      -> statistical init of unfitted nodes (one pass per statistical level)
      -> one validation (``initial_metrics``)
      -> for each stage: seed + index; freeze / unfreeze; refit named statistical nodes;
         Lightning fit for ``max_epochs``; ``checkpoints/<stage>/final.ckpt``
      -> ``stage_state.json`` at every transition
      -> the test split, when the data has one: final weights as ``test/...``, the best
         checkpoint's as ``test_best/...`` (in ``metrics``, metrics.jsonl, the monitors)
      -> ``model/`` (``Graph.save``) at the end,
         with the best weights by the checkpoint monitor: the best checkpoint, or the
         statistical start when its validation was better (run.json ``model_weights``);
         the graph in memory keeps its final weights

Without ``training.stages`` there is one stage, ``train``, with ``trainer.max_epochs``
epochs, every node as built and every loss, checkpointing into ``checkpoints/``.

In a stage, ``trainable`` nodes get gradients and every other node is frozen: its
parameters are left out of the optimizer and it runs in eval mode (no Gumbel noise, no
hard/soft switching mid-stage), so its weights end the stage bit-identical.

Resume (``resume="auto"`` or a run directory): completed stages are skipped; the
current stage continues from its ``last.ckpt`` (weights, optimizer, epoch, RNG states),
or, when it had not written one yet, starts over from the previous stage's
``final.ckpt``. Each stage seeds ``seed + index`` at its start, so either way the run
ends as an uninterrupted one would. Every ``last.ckpt`` written is noted in
``stage_state.json`` (``last_checkpoint_step``): a resume whose checkpoint was deleted since
is refused rather than started over. A run stopped after its last epoch (during the test
split or the model save) resumes to those steps and keeps its recorded metrics and best.

The parts: one stage in :mod:`~cuvis_graph.train.stages`, freezing in
:mod:`~cuvis_graph.train.trainability`, the DDP statistics task in
:mod:`~cuvis_graph.train.statistics_init`, checkpoints and shipped weights in
:mod:`~cuvis_graph.train.run_checkpoints`, validation / test passes in
:mod:`~cuvis_graph.train.evaluation`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from cuvis_graph.core.fitting import FitReport
from cuvis_graph.core.plan import Plan
from cuvis_graph.data.datamodule import statistics_loader
from cuvis_graph.io.run_config import pipeline_summary
from cuvis_graph.monitors.hub import MonitorHub
from cuvis_graph.train.compat import plugin_monitors
from cuvis_graph.train.config import TrainingConfig
from cuvis_graph.train.distributed import (
    RESUME_CKPT_ENV,
    RESUMING_ENV,
    RUN_DIR_ENV,
    distributed_trainer_kwargs,
    worker_rank,
)
from cuvis_graph.train.evaluation import (
    evaluate_graph,
    evaluate_test_split,
    has_batches,
    run_validation,
)
from cuvis_graph.train.lightning import GraphModule
from cuvis_graph.train.lightning_data import as_lightning_datamodule
from cuvis_graph.train.results import TrainResult
from cuvis_graph.train.run_checkpoints import (
    best_weights,
    load_checkpoint,
    load_node_states,
    node_states,
    restore_point,
)
from cuvis_graph.train.run_files import RunFiles
from cuvis_graph.train.stage_state import StageState
from cuvis_graph.train.stages import StageRunner
from cuvis_graph.train.statistics_init import (
    check_batches_per_process,
    fit_for_training,
    loader_length,
    statistics_task,
)
from cuvis_graph.train.trainability import Trainability

if TYPE_CHECKING:
    from pathlib import Path

    from cuvis_graph.core.graph import Graph
    from cuvis_graph.io.runs import Run, RunSession

__all__ = ["train_graph", "evaluate_graph", "load_checkpoint"]

log = logging.getLogger(__name__)


def train_graph(graph: Graph, datamodule: Any, config: TrainingConfig, callbacks: list[pl.Callback] | None,
                refit: bool | Sequence[str], session: RunSession | None,
                worker_run: Run | None = None) -> TrainResult:
    """Run the lifecycle above.

    ``session``: the run directory this process writes (``None``: no files). ``worker_run``:
    a DDP rank > 0 joining rank 0's run (reads it, writes nothing).
    """
    run = session.run if session is not None else worker_run
    writes = session is not None
    stages = config.resolved_stages()
    stage_names = [s.name for s in stages]
    state = StageState.load(run.path, stage_names) if run is not None and run.resuming \
        else StageState(run.path if run is not None else None, stage_names)
    if not writes:
        state.path = None  # DDP ranks > 0 read the state, never write it
    datamodule = as_lightning_datamodule(datamodule)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    plan = graph.compile(datamodule, for_training=config.trains)
    graph.data_spec = datamodule.data_spec() if hasattr(datamodule, "data_spec") else None
    if writes and getattr(datamodule, "skipped_files", None):  # files a folder datamodule left out
        run.record["data"] = {"skipped_files": list(datamodule.skipped_files)}
    kwargs, world = distributed_trainer_kwargs(config.trainer.trainer_kwargs())
    distributed = world > 1
    if distributed and writes:  # ranks 1..N-1 re-run the script: tell them which run to join
        os.environ[RUN_DIR_ENV] = str(run.path)
        os.environ[RESUMING_ENV] = "1" if run.resuming else "0"
        os.environ[RESUME_CKPT_ENV] = str(run.resume_checkpoint or "")
    device = _init_device(config.trainer.accelerator)
    monitors = list(graph.monitors) + plugin_monitors(config.monitor_plugins, graph.monitors)
    record = RunFiles(run.path) if writes else None
    if record is not None:
        monitors.insert(0, record)
    hub = MonitorHub(monitors)
    if writes:
        session.hub = hub
        hub.attach_run(run.path)
    if worker_rank() == 0:  # the resolved config, as the run's config.yaml holds it
        hub.log_hyperparams({"pipeline": session.pipeline if writes and session.pipeline else pipeline_summary(graph),
                             "training": config.model_dump(mode="json")})
    module = GraphModule(plan, config.optimizer, config.scheduler, hub, max_epochs=config.trainer.max_epochs,
                         train_metrics=config.train_metrics)

    restore = restore_point(run, state, config)
    if writes and restore is None and len(run.record["attempts"]) > 1:
        run.trim_metrics(0)  # an attempt that starts over keeps no line of the earlier one
    if restore is not None:  # fitted statistics come from the checkpoint: fitting below skips fitted nodes
        module.load_state_dict(load_checkpoint(restore)["state_dict"])
    loader = statistics_loader(datamodule)  # the loader training reads, unless the datamodule has an exact one
    if distributed and restore is None:  # before Lightning starts the other processes
        check_batches_per_process(loader_length(loader()), world, getattr(datamodule, "batch_size", None))
    progress = config.trainer.enable_progress_bar
    fits: list[FitReport] = []
    root = str(run.path / "lightning") if run is not None else "runs/lightning"
    refit_now = refit if restore is None else False
    if not distributed:
        fits.append(fit_for_training(plan, loader, device=device, refit=refit_now, progress=progress, init=True))
    elif restore is None:  # every rank fits its shard inside a 0-epoch Lightning fit (process group up)
        module.setup_task = statistics_task(plan, loader, refit_now, progress, fits, init=True)
        pl.Trainer(**{**kwargs, "max_epochs": 0}, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=root).fit(module, datamodule=datamodule)
    else:  # resumed under DDP: the statistics came from the checkpoint
        for step in plan.steps:
            step.node.prepare_for_train()
    if restore is None and fits:
        state.record_statistics(fits[0].passes, fits[0].levels, fits[0].batches)
    has_val = has_batches(datamodule, "val_dataloader") and bool(module.metric_bindings or module.loss_bindings
                                                                  or module.vis_bindings)
    trainability = Trainability(plan)
    initial: dict[str, float] = dict(run.record.get("initial_metrics") or {}) if restore is not None else {}
    metrics, best, trainer, initial_state = dict(initial), None, None, None
    if restore is not None and state.completed:  # what the stages done so far ended with
        last = state.info(state.completed[-1])
        metrics = {k: v for k, v in (last.get("metrics") or {}).items() if v is not None} or metrics
        best = last.get("best")
    try:
        check_record = _record_check(record, session)
        if has_val and restore is None:
            initial = run_validation(module, datamodule, kwargs, hub, 0, root)
            check_record()
            metrics = dict(initial)
            initial_state = node_states(plan)
            if writes:
                run.record["initial_metrics"] = {k: v if math.isfinite(v) else None for k, v in initial.items()}
                run.save()
        ctx = StageRunner(plan=plan, datamodule=datamodule, config=config, callbacks=callbacks, run=run,
                          writes=writes, state=state, hub=hub, trainability=trainability, loader=loader,
                          trainer_kwargs=kwargs, root=root, device=device, distributed=distributed,
                          has_val=has_val, progress=progress, fits=fits,
                          disabled_visualizations=module.disabled_visualizations, check_record=check_record)
        for index, stage in enumerate(stages):
            if config.stages and stage.name in state.completed:
                continue  # (the single default stage always runs: resuming may extend max_epochs)
            outcome = ctx.train_stage(index, stage)
            trainer = outcome.trainer or trainer
            if outcome.metrics is not None:
                metrics, best = outcome.metrics, outcome.best if outcome.trained else best
            state.complete(stage.name, steps=outcome.steps, epochs=outcome.epochs, checkpoint=outcome.checkpoint,
                           best=best, metrics=metrics)
        metrics = {**metrics,
                   **evaluate_test_split(plan, datamodule, kwargs, hub, state.offsets()[0], root, run, best)}
        check_record()
    finally:
        hub.close()
        trainability.restore()
        for step in plan.steps:
            step.node.eval()
    fit = fits[0] if fits else FitReport()
    steps_total, epochs_total = state.offsets()
    model_dir, model_error, shipped = None, None, None
    if writes:  # the trained graph with its best weights, ready for `cuvis-graph predict` / `Graph.load`
        model_dir, model_error, shipped = _save_model(graph, plan, run, None if config.stages else best, initial,
                                                      initial_state)
    if session is not None:
        session.finish(metrics, initial, best=best, fit_passes=fit.passes, epochs=epochs_total,
                       global_step=steps_total, completed_stages=state.completed,
                       model=os.path.relpath(model_dir, run.path) if model_dir is not None else None,
                       model_error=model_error, model_weights=shipped)
    return TrainResult(metrics=metrics, fit=fit, initial_metrics=initial, trainer=trainer,
                       module=trainer.lightning_module if trainer is not None else module,
                       failures=list(hub.failures), run_dir=run.path if run is not None else None,
                       stages={n: dict(state.info(n)) for n in state.completed}, model_dir=model_dir)


def _save_model(graph: Graph, plan: Plan, run: Run, best: Mapping[str, Any] | None, initial: Mapping[str, float],
                initial_state: dict[str, dict[str, torch.Tensor]] | None
                ) -> tuple[Path | None, str | None, dict[str, Any]]:
    """``<run>/model`` with the weights :func:`best_weights` picks: ``(model folder or None,
    the error that kept it from being saved or None, run.json "model_weights")``. The graph in
    memory keeps its final weights (training can go on from them)."""
    model_dir, model_error = None, None
    shipped, states = best_weights(plan, run, best, initial, initial_state)
    final = node_states(plan) if states is not None else None
    try:
        load_node_states(plan, states)
        model_dir = graph.save(run.path / "model")
    except Exception as exc:  # noqa: BLE001 - e.g. an unregistered node type: noted, never fatal
        model_error = f"{type(exc).__name__}: {exc}"
        log.warning("the trained graph was not saved to %s: %s", run.path / "model", model_error)
    finally:
        load_node_states(plan, final)
    return model_dir, model_error, shipped


def _init_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _record_check(record: RunFiles | None, session: RunSession | None) -> Callable[[], None]:
    """What training calls before every batch: raises when the run's record was lost or SIGTERM arrived."""
    def check() -> None:
        if record is not None:
            record.check()
        if session is not None:
            session.raise_if_terminated()
    return check
