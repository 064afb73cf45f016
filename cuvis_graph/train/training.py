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
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cuvis_graph.core.fitting import FitReport, fit_statistics
from cuvis_graph.core.plan import Plan
from cuvis_graph.data.datamodule import statistics_loader
from cuvis_graph.errors import ConfigError
from cuvis_graph.io.runs import RunRecordError, pipeline_summary
from cuvis_graph.monitors.file import FileMonitor
from cuvis_graph.monitors.hub import MonitorHub, MonitorLogger
from cuvis_graph.train import checkpoints
from cuvis_graph.train.callbacks import (
    AtomicCheckpointIO,
    RecordGuard,
    SafeCallback,
    build_callbacks,
)
from cuvis_graph.train.compat import plugin_monitors
from cuvis_graph.train.config import StageConfig, TrainingConfig
from cuvis_graph.train.distributed import (
    RESUME_CKPT_ENV,
    RESUMING_ENV,
    RUN_DIR_ENV,
    distributed_trainer_kwargs,
    shard_batches,
    worker_rank,
)
from cuvis_graph.train.lightning import GraphModule
from cuvis_graph.train.lightning_data import as_lightning_datamodule
from cuvis_graph.train.results import TrainResult
from cuvis_graph.train.stage_state import StageState

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.io.runs import Run, RunSession

__all__ = ["train_graph", "evaluate_graph", "load_checkpoint"]

log = logging.getLogger(__name__)


# -- trainability --------------------------------------------------------------------------
class Trainability:
    """Which nodes train in a stage; remembers the graph's own settings to restore them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.saved = {s.name: (s.node._frozen, {n: p.requires_grad for n, p in s.node.named_parameters()})
                      for s in plan.steps}

    def restore(self) -> None:
        """The graph as built: each node's own frozen flag and parameter settings."""
        for s in self.plan.steps:
            frozen, grads = self.saved[s.name]
            s.node._frozen = frozen
            for n, p in s.node.named_parameters():
                p.requires_grad_(grads.get(n, not frozen))

    def apply(self, stage: StageConfig) -> frozenset[str]:
        """Freeze / unfreeze for ``stage``; returns the frozen node names."""
        self.restore()
        if stage.trainable is not None:
            frozen = {s.name for s in self.plan.steps if s.name not in stage.trainable}
            for s in self.plan.steps:
                if s.name not in frozen and s.node._frozen:  # frozen by the user: the stage trains it
                    s.node.unfreeze()
        else:
            frozen = set(stage.frozen or [])
        for name in frozen:
            self.plan.step(name).node.freeze()
        return frozenset(frozen)


# -- the lifecycle -------------------------------------------------------------------------
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

    restore = _restore_point(run, state, config)
    if writes and restore is None and len(run.record["attempts"]) > 1:
        run.trim_metrics(0)  # an attempt that starts over keeps no line of the earlier one
    if restore is not None:  # fitted statistics come from the checkpoint: fitting below skips fitted nodes
        module.load_state_dict(load_checkpoint(restore)["state_dict"])
    loader = statistics_loader(datamodule)  # the loader training reads, unless the datamodule has an exact one
    if distributed and restore is None:  # before Lightning starts the other processes
        _check_batches_per_process(_length(loader()), world, getattr(datamodule, "batch_size", None))
    progress = config.trainer.enable_progress_bar
    fits: list[FitReport] = []
    root = str(run.path / "lightning") if run is not None else "runs/lightning"
    refit_now = refit if restore is None else False
    if not distributed:
        for step in plan.steps:
            step.node.to(device)
        fits.append(fit_statistics(plan, loader, device=device, refit=refit_now, progress=progress))
        for step in plan.steps:
            step.node.prepare_for_train()
    elif restore is None:  # every rank fits its shard inside a 0-epoch Lightning fit (process group up)
        module.setup_task = _statistics_task(plan, loader, refit_now, progress, fits, init=True)
        pl.Trainer(**{**kwargs, "max_epochs": 0}, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=root).fit(module, datamodule=datamodule)
    else:  # resumed under DDP: the statistics came from the checkpoint
        for step in plan.steps:
            step.node.prepare_for_train()
    if restore is None and fits:
        state.record_statistics(fits[0].passes, fits[0].levels, fits[0].batches)
    has_val = _has_batches(datamodule, "val_dataloader") and bool(module.metric_bindings or module.loss_bindings
                                                                  or module.vis_bindings)
    trainability = Trainability(plan)
    initial: dict[str, float] = dict(run.record.get("initial_metrics") or {}) if restore is not None else {}
    metrics, best, trainer, initial_state = dict(initial), None, None, None
    if restore is not None and state.completed:  # what the stages done so far ended with
        last = state.info(state.completed[-1])
        metrics = {k: v for k, v in (last.get("metrics") or {}).items() if v is not None} or metrics
        best = last.get("best")
    try:
        check_record = record.check if record is not None else _nothing
        if has_val and restore is None:
            initial = _validate(module, datamodule, kwargs, hub, 0, root)
            check_record()
            metrics = dict(initial)
            initial_state = _node_states(plan)
            if writes:
                run.record["initial_metrics"] = {k: v if math.isfinite(v) else None for k, v in initial.items()}
                run.save()
        ctx = _StageRunner(plan=plan, datamodule=datamodule, config=config, callbacks=callbacks, run=run,
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
        metrics = {**metrics, **_test_phase(plan, datamodule, kwargs, hub, state.offsets()[0], root, run, best)}
        check_record()
    finally:
        hub.close()
        trainability.restore()
        for step in plan.steps:
            step.node.eval()
    fit = fits[0] if fits else FitReport()
    steps_total, epochs_total = state.offsets()
    model_dir, model_error = None, None
    shipped = None
    if writes:  # the trained graph with its best weights, ready for `cuvis-graph predict` / `Graph.load`
        shipped, states = _best_weights(plan, run, None if config.stages else best, initial, initial_state)
        final = _node_states(plan) if states is not None else None
        try:
            _load_node_states(plan, states)
            model_dir = graph.save(run.path / "model")
        except Exception as exc:  # noqa: BLE001 - e.g. an unregistered node type: noted, never fatal
            model_error = f"{type(exc).__name__}: {exc}"
            log.warning("the trained graph was not saved to %s: %s", run.path / "model", model_error)
        finally:  # the graph in memory keeps its final weights (training can go on from them)
            _load_node_states(plan, final)
    if session is not None:
        session.finish(metrics, initial, best=best, fit_passes=fit.passes, epochs=epochs_total,
                       global_step=steps_total, completed_stages=state.completed,
                       model=os.path.relpath(model_dir, run.path) if model_dir is not None else None,
                       model_error=model_error, model_weights=shipped)
    return TrainResult(metrics=metrics, fit=fit, initial_metrics=initial, trainer=trainer,
                       module=trainer.lightning_module if trainer is not None else module,
                       failures=list(hub.failures), run_dir=run.path if run is not None else None,
                       stages={n: dict(state.info(n)) for n in state.completed}, model_dir=model_dir)


def _validate(module: GraphModule, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub,
              step: int, root: str) -> dict[str, float]:
    """One validation pass outside a fit (figures go under stage ``initial``)."""
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, logger=MonitorLogger(hub, step),
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    return _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])


def _test_phase(plan: Plan, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub, step: int,
                root: str, run: Any, best: Mapping[str, Any] | None) -> dict[str, float]:
    """The test split, once, after the last stage: the final weights as ``test/...`` and, when
    the checkpoint monitor chose a best checkpoint, its weights as ``test_best/...`` (the final
    weights are back in the graph afterwards). ``{}`` without test data or leaves to evaluate."""
    module = GraphModule(plan, hub=hub)
    if not (module.metric_bindings or module.loss_bindings) or not _has_batches(datamodule, "test_dataloader"):
        return {}
    results = _test(module, datamodule, trainer_kwargs, hub, step, root)
    path = run.path / best["checkpoint"] if run is not None and best and best.get("checkpoint") else None
    if path is not None and path.is_file():
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(load_checkpoint(path)["state_dict"])
        module.test_label = "test_best"
        results.update(_test(module, datamodule, trainer_kwargs, hub, step, root))
        module.load_state_dict(final)
    return results


def _test(module: GraphModule, datamodule: Any, trainer_kwargs: Mapping[str, Any], hub: MonitorHub | None,
          step: int, root: str | None, loader: Any = None) -> dict[str, float]:
    """One test pass (keys ``<module.test_label>/...``); ``loader`` replaces the test split."""
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 1},
                         logger=MonitorLogger(hub, step) if hub is not None else False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    if loader is not None:
        return _floats(trainer.test(module, dataloaders=loader, verbose=False)[0])
    return _floats(trainer.test(module, datamodule=datamodule, verbose=False)[0])


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
        split = "test" if _has_batches(datamodule, "test_dataloader") else "val"
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test', 'val' or 'auto', got {split!r}")
    if not _has_batches(datamodule, f"{split}_dataloader"):
        raise ConfigError(f"{type(datamodule).__name__} has no {'test or validation' if split == 'val' else split} "
                          "data to evaluate")
    module = GraphModule(graph.compile(datamodule))
    if not (module.metric_bindings or module.loss_bindings):
        raise ConfigError(f"graph '{graph.name}' has no metric or loss leaves to evaluate")
    module.test_label = split
    kwargs = {"accelerator": accelerator, "precision": precision, "devices": 1, "enable_progress_bar": False}
    loader = getattr(datamodule, f"{split}_dataloader")()
    try:
        return _test(module, datamodule, kwargs, None, 0, None, loader=loader)
    finally:
        for step in module.plan.steps:
            step.node.eval()


@dataclass
class _StageOutcome:
    trainer: pl.Trainer | None = None
    metrics: dict[str, float] | None = None  # None: the stage logged nothing new
    best: dict[str, Any] | None = None
    trained: bool = False
    steps: int = 0
    epochs: int = 0
    checkpoint: str | None = None


@dataclass
class _StageRunner:
    """Runs one stage of :func:`train_graph`: freeze / unfreeze, refit, fit, final checkpoint."""

    plan: Plan
    datamodule: Any
    config: TrainingConfig
    callbacks: list[pl.Callback] | None
    run: Any
    writes: bool
    state: StageState
    hub: MonitorHub
    trainability: Trainability
    loader: Any
    trainer_kwargs: dict[str, Any]
    root: str
    device: torch.device
    distributed: bool
    has_val: bool
    progress: bool
    fits: list[FitReport]
    disabled_visualizations: set[str]
    check_record: Any

    def train_stage(self, index: int, stage: StageConfig) -> _StageOutcome:
        config, run, state = self.config, self.run, self.state
        ckpt_dir = None if run is None else (run.checkpoint_dir if not config.stages
                                             else run.checkpoint_dir / stage.name)
        resume_ckpt = _stage_resume_checkpoint(run, state, stage, ckpt_dir, config)
        step_offset, epoch_offset = state.offsets()
        frozen, names = self._start(index, stage, resume_ckpt, step_offset, epoch_offset)
        module = GraphModule(self.plan, stage.optimizer or config.optimizer, stage.scheduler or config.scheduler,
                             self.hub, max_epochs=stage.max_epochs, loss_weights=stage.loss_weights(),
                             frozen=frozen, epoch_offset=epoch_offset, train_metrics=config.train_metrics)
        module.disabled_visualizations = self.disabled_visualizations  # a failure stays disabled
        state.info(stage.name)["losses"] = dict(module.loss_weights) if stage.max_epochs else {}
        if self.distributed and names:
            def after_refit() -> None:  # the refit may have created parameters: check them now
                self._check_trainable(index, stage, module, self.trainability.apply(stage))

            module.setup_task = _statistics_task(self.plan, self.loader, names, self.progress, self.fits,
                                                 after=after_refit, modes=frozen)
        outcome = _StageOutcome()
        if stage.max_epochs > 0 or module.setup_task is not None:
            self._fit(index, stage, module, frozen, ckpt_dir, resume_ckpt, step_offset, outcome)
        if stage.max_epochs == 0 and names and self.has_val:  # what the refit changed
            outcome.metrics = _validate(module, self.datamodule, self.trainer_kwargs, self.hub, step_offset,
                                        self.root)
        outcome.checkpoint = self._final_checkpoint(stage, module, ckpt_dir, outcome.steps)
        return outcome

    def _start(self, index: int, stage: StageConfig, resume_ckpt: Any, step_offset: int,
               epoch_offset: int) -> tuple[frozenset[str], list[str]]:
        """Freeze / unfreeze; on a fresh start seed, refit and record the start; on a resume
        drop the log lines the killed attempt wrote after its checkpoint."""
        frozen = self.trainability.apply(stage)
        if resume_ckpt is not None:
            if self.writes:
                self.run.trim_metrics(step_offset + int(load_checkpoint(resume_ckpt).get("global_step", 0)))
            return frozen, []
        pl.seed_everything(self.config.seed + index, workers=True, verbose=False)
        names = _refit_names(self.plan, stage)
        if names and not self.distributed:  # (under DDP the refit runs inside the fit, on every rank)
            _set_stage_modes(self.plan, frozen)
            fit_statistics(self.plan, self.loader, device=self.device, refit=names, progress=self.progress)
            for name in names:
                self.plan.step(name).node.prepare_for_train()
            frozen = self.trainability.apply(stage)  # refitting may have created parameters
        self.state.start(stage.name, step_offset, epoch_offset, refit=names,
                         trainable=_trainable(self.plan, frozen) if stage.max_epochs else [])
        return frozen, names

    def _fit(self, index: int, stage: StageConfig, module: GraphModule, frozen: frozenset[str], ckpt_dir: Any,
             resume_ckpt: Any, step_offset: int, outcome: _StageOutcome) -> None:
        config = self.config
        if module.setup_task is None:  # (a DDP refit checks after it ran, inside the fit)
            self._check_trainable(index, stage, module, frozen)
        cbs = build_callbacks(config, self.hub, ckpt_dir if stage.max_epochs else None, has_val=self.has_val,
                              has_loss=bool(module.loss_bindings), step_offset=step_offset,
                              run_config=self.run.path / "config.yaml" if self.run is not None else None)
        cbs += [SafeCallback(c, self.hub) for c in self.callbacks or []] + [RecordGuard(self.check_record)]
        checkpoint = next((c for c in cbs if isinstance(c, ModelCheckpoint)), None)
        trainer = pl.Trainer(**{**self.trainer_kwargs, "max_epochs": stage.max_epochs},
                             logger=MonitorLogger(self.hub, step_offset), callbacks=cbs,
                             plugins=[_RecordedCheckpointIO(self.state, stage.name)],
                             enable_checkpointing=checkpoint is not None,
                             enable_model_summary=False, default_root_dir=self.root)
        with warnings.catch_warnings():
            if resume_ckpt is not None:  # resuming writes into the run's own checkpoint folder on purpose
                warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=self.datamodule, ckpt_path=resume_ckpt, weights_only=True)
        self.check_record()
        outcome.trainer, outcome.steps, outcome.epochs = trainer, trainer.global_step, trainer.current_epoch
        logged = _floats(trainer.callback_metrics)
        if stage.max_epochs > 0 and logged:  # (a resume with every epoch done logs nothing: the record stays)
            outcome.metrics, outcome.trained = logged, True
            outcome.best = _best(checkpoint, self.run.path) if self.run is not None else None

    def _check_trainable(self, index: int, stage: StageConfig, module: GraphModule, frozen: frozenset[str]) -> None:
        if self.config.stages and stage.max_epochs > 0 and not any(p.requires_grad for p in module.parameters()):
            raise ConfigError(f"training.stages.{index} ('{stage.name}'): no node has trainable parameters "
                              f"(frozen: {sorted(frozen)})")

    def _final_checkpoint(self, stage: StageConfig, module: GraphModule, ckpt_dir: Any, steps: int) -> str | None:
        """Run-relative path of the stage's end state (written by the process that owns the run)."""
        if ckpt_dir is None:
            return None
        if not self.config.stages:  # the single default stage: its last.ckpt
            last = ckpt_dir / "last.ckpt"
            return os.path.relpath(last, self.run.path) if last.is_file() else None
        path = ckpt_dir / "final.ckpt"
        if self.writes:
            AtomicCheckpointIO().save_checkpoint({"state_dict": module.state_dict(), "global_step": steps,
                                                  "stage": stage.name}, path)
        return os.path.relpath(path, self.run.path)


class _RecordedCheckpointIO(AtomicCheckpointIO):
    """Atomic checkpoints; each ``last.ckpt`` written is noted in the stage state
    (``last_checkpoint_step``), so that a resume can tell a run that never had a checkpoint
    from one whose checkpoint was lost (:func:`cuvis_graph.io.runs.resume_target`)."""

    def __init__(self, state: StageState, stage: str) -> None:
        super().__init__()
        self.state, self.stage = state, stage

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if os.path.basename(path) == "last.ckpt":
            self.state.info(self.stage)["last_checkpoint_step"] = int(checkpoint.get("global_step", 0))
            self.state.save()


class RunFiles(FileMonitor):
    """The run's own ``metrics.jsonl`` and figures. Unlike other monitors, losing the metrics
    record (e.g. a full disk) is fatal: :meth:`check` raises at the next batch."""

    def __init__(self, run_dir: Any) -> None:
        super().__init__(run_dir, name="run_files")
        self.lost: OSError | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        try:
            super().log_metrics(metrics, step, stage)
        except OSError as exc:
            self.lost = self.lost or exc
            raise

    def check(self) -> None:
        if self.lost is not None:
            raise RunRecordError(f"run folder {self.root}: cannot write {self.metrics_path.name} "
                                 f"({self.lost.strerror or self.lost}); training stopped: free space, then "
                                 f"resume with --resume {self.root}")


def _nothing() -> None:
    return None


def _set_stage_modes(plan: Plan, frozen: frozenset[str]) -> None:
    """Train mode for the nodes that train in the stage, eval for frozen ones: refits see the
    data as the stage's training steps will."""
    for s in plan.steps:
        s.node.train(s.name not in frozen)


def _statistics_task(plan: Plan, loader: Any, refit: bool | Sequence[str], progress: bool, fits: list[FitReport],
                     *, init: bool = False, after: Any = None, modes: frozenset[str] = frozenset()) -> Any:
    """Statistical init (``init``: unfitted nodes, plus ``refit``) or a stage's refit, run by
    every DDP rank in ``setup("fit")``: rank ``r`` of ``W`` streams batches ``r, r+W, ...``;
    the accumulators are all-reduced before finalizing, so all ranks end with the
    single-process buffers. ``modes``: nodes in eval mode (the stage's frozen ones);
    ``after``: called last (the stage's freeze / unfreeze)."""
    def task(module: GraphModule) -> None:
        trainer = module.trainer
        rank, world = trainer.global_rank, trainer.world_size
        _check_batches_per_process(_length(loader()), world)
        device = trainer.strategy.root_device
        for s in plan.steps:
            s.node.to(device)
        _set_stage_modes(plan, modes)
        report = fit_statistics(plan, shard_batches(loader, rank, world), device=device, refit=refit,
                                progress=progress and rank == 0)
        refitted = set(refit) if not isinstance(refit, bool) else set()
        for s in plan.steps:
            if init or s.name in refitted:
                s.node.prepare_for_train()
        if after is not None:
            after()
        if init:
            fits.append(report)

    return task


def _check_batches_per_process(n_batches: int | None, world: int, batch_size: Any = None) -> None:
    """Statistics under DDP: each of the ``world`` processes streams its own batches (at least one)."""
    if n_batches is not None and n_batches < world:
        size = f" of batch_size={batch_size}" if batch_size else ""
        raise ConfigError(f"statistical init with {world} processes needs at least {world} training batches "
                          f"(one per process); the training loader has {n_batches}{size}: use more training "
                          "data, a smaller batch size or fewer processes (training.trainer.devices x num_nodes)")


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _restore_point(run: Any, state: StageState, config: TrainingConfig) -> Any:
    """The checkpoint whose weights a resumed run starts from (``None``: a fresh start)."""
    if run is None or not run.resuming:
        return None
    if not config.stages:
        return run.resume_checkpoint
    current = state.current
    if current is not None and (run.checkpoint_dir / current / "last.ckpt").is_file():
        return run.checkpoint_dir / current / "last.ckpt"
    final = state.last_final_checkpoint()
    return run.path / final if final else None


def _stage_resume_checkpoint(run: Any, state: StageState, stage: StageConfig, ckpt_dir: Any,
                             config: TrainingConfig) -> Any:
    """The ``last.ckpt`` a resumed run continues ``stage`` from, if it had started it."""
    if run is None or not run.resuming or state.current != stage.name and config.stages:
        return None
    if not config.stages:
        return run.resume_checkpoint
    last = ckpt_dir / "last.ckpt"
    return last if last.is_file() else None


def _refit_names(plan: Plan, stage: StageConfig) -> list[str]:
    if stage.refit == "all":
        return [s.name for s in plan.steps if s.node.statistical]
    return list(stage.refit)


def _trainable(plan: Plan, frozen: frozenset[str]) -> list[str]:
    return [s.name for s in plan.steps if s.name not in frozen and any(p.requires_grad for p in s.node.parameters())]


# -- helpers -------------------------------------------------------------------------------
def _init_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _has_batches(datamodule: Any, method: str) -> bool:
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` on the CPU (see
    :mod:`cuvis_graph.train.checkpoints`)."""
    return checkpoints.load_checkpoint(path)


def _best(checkpoint: ModelCheckpoint | None, run_path: Any) -> dict[str, Any] | None:
    if checkpoint is None or not checkpoint.best_model_path:
        return None
    score = checkpoint.best_model_score
    path = os.path.relpath(checkpoint.best_model_path, run_path)
    return {"monitor": checkpoint.monitor, "mode": checkpoint.mode, "checkpoint": path,
            "score": float(score) if score is not None and math.isfinite(float(score)) else None}


def _node_states(plan: Plan) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every node's state dict (the weights right after statistical init)."""
    return {s.name: {k: v.detach().clone() for k, v in s.node.state_dict().items()} for s in plan.steps}


def _load_node_states(plan: Plan, states: dict[str, dict[str, torch.Tensor]] | None) -> None:
    for s in plan.steps if states is not None else []:
        device = next(iter(s.node.state_dict().values()), torch.empty(0)).device
        s.node.load_state_dict({k: v.to(device) for k, v in states[s.name].items()})


def _best_weights(plan: Plan, run: Any, best: Mapping[str, Any] | None, initial: Mapping[str, float],
                  initial_state: dict[str, dict[str, torch.Tensor]] | None
                  ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]] | None]:
    """The weights ``<run>/model`` ships, so that it is never worse than the run's own start:
    ``(run.json "model_weights", node states or None for the final weights)``.

    Candidates, with a checkpoint monitor set (single-stage runs; a staged run ships its
    final weights): the best checkpoint and, when ``initial_metrics`` (the validation right
    after statistical init, before any gradient step) has the monitored value, the initial
    weights (held in memory: a resumed run compares its best checkpoint only). The better
    by the monitor's ``mode`` wins (a tie keeps the trained one; a non-finite score never wins).
    """
    if not best or not best.get("monitor") or not best.get("checkpoint"):
        return {"source": "final"}, None
    monitor, mode, score = best["monitor"], best.get("mode", "min"), best.get("score")
    start = initial.get(monitor) if initial_state is not None else None
    start = start if start is not None and math.isfinite(start) else None

    def better(a: float | None, b: float | None) -> bool:
        return a is not None and (b is None or (a < b if mode == "min" else a > b))

    if better(start, score):
        states, source = initial_state, {"source": "initial", "monitor": monitor, "score": start}
    else:
        path = run.path / best["checkpoint"]
        if not path.is_file():
            log.warning("best checkpoint %s is missing: the final weights are the run's model", path)
            return {"source": "final"}, None
        saved = load_checkpoint(path)["state_dict"]
        states = {s.name: {k[len(f"graph_nodes.{s.name}."):]: v for k, v in saved.items()
                           if k.startswith(f"graph_nodes.{s.name}.")} for s in plan.steps}
        source = {"source": "best", "checkpoint": best["checkpoint"], "monitor": monitor, "score": score}
    return source, states


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}
