"""One gradient-training stage of :func:`cuvis_graph.train.training.train_graph`.

::

    seed + index; freeze / unfreeze; refit the named statistical nodes
      -> Lightning fit for ``max_epochs`` (resumed from the stage's ``last.ckpt``)
      -> ``checkpoints/<stage>/final.ckpt``

A resumed stage keeps its frozen set, skips the seed and the refit (its checkpoint holds
them) and drops the log lines the killed attempt wrote after its checkpoint.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cuvis_graph.core.fitting import FitReport
from cuvis_graph.core.plan import Plan
from cuvis_graph.errors import ConfigError
from cuvis_graph.monitors.hub import MonitorHub, MonitorLogger
from cuvis_graph.train.callbacks import (
    AtomicCheckpointIO,
    RecordGuard,
    SafeCallback,
    build_callbacks,
)
from cuvis_graph.train.config import StageConfig, TrainingConfig
from cuvis_graph.train.evaluation import floats, run_validation
from cuvis_graph.train.lightning import GraphModule
from cuvis_graph.train.run_checkpoints import (
    RecordedCheckpointIO,
    best_checkpoint,
    load_checkpoint,
    stage_resume_checkpoint,
)
from cuvis_graph.train.stage_state import StageState
from cuvis_graph.train.statistics_init import fit_for_training, statistics_task
from cuvis_graph.train.trainability import (
    Trainability,
    refit_names,
    trainable_names,
)

__all__ = ["StageOutcome", "StageRunner"]


@dataclass
class StageOutcome:
    """What a stage ended with, for the stage state and the run record."""

    trainer: pl.Trainer | None = None
    metrics: dict[str, float] | None = None  # None: the stage logged nothing new
    best: dict[str, Any] | None = None
    trained: bool = False
    steps: int = 0
    epochs: int = 0
    checkpoint: str | None = None


@dataclass
class StageRunner:
    """Runs one stage of :func:`~cuvis_graph.train.training.train_graph`: freeze / unfreeze, refit, fit, final checkpoint."""

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

    def train_stage(self, index: int, stage: StageConfig) -> StageOutcome:
        config, run, state = self.config, self.run, self.state
        ckpt_dir = None if run is None else (run.checkpoint_dir if not config.stages
                                             else run.checkpoint_dir / stage.name)
        resume_ckpt = stage_resume_checkpoint(run, state, stage, ckpt_dir, config)
        step_offset, epoch_offset = state.offsets(excluding=stage.name)
        frozen, names = self._start(index, stage, resume_ckpt, step_offset, epoch_offset)
        module = GraphModule(self.plan, stage.optimizer or config.optimizer, stage.scheduler or config.scheduler,
                             self.hub, max_epochs=stage.max_epochs, loss_weights=stage.loss_weights(),
                             frozen=frozen, epoch_offset=epoch_offset, train_metrics=config.train_metrics)
        module.disabled_visualizations = self.disabled_visualizations  # a failure stays disabled
        state.info(stage.name)["losses"] = dict(module.loss_weights) if stage.max_epochs else {}
        if self.distributed and names:
            def after_refit() -> None:  # the refit may have created parameters: check them now
                self._check_trainable(index, stage, module, self.trainability.apply(stage))

            module.setup_task = statistics_task(self.plan, self.loader, names, self.progress, self.fits,
                                                after=after_refit, modes=frozen)
        outcome = StageOutcome()
        if stage.max_epochs > 0 or module.setup_task is not None:
            self._fit(index, stage, module, frozen, ckpt_dir, resume_ckpt, step_offset, outcome)
        if stage.max_epochs == 0 and names and self.has_val:  # what the refit changed
            outcome.metrics = run_validation(module, self.datamodule, self.trainer_kwargs, self.hub, step_offset,
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
        names = refit_names(self.plan, stage)
        if names and not self.distributed:  # (under DDP the refit runs inside the fit, on every rank)
            fit_for_training(self.plan, self.loader, device=self.device, refit=names, progress=self.progress,
                             init=False, modes=frozen)
            frozen = self.trainability.apply(stage)  # refitting may have created parameters
        self.state.start(stage.name, step_offset, epoch_offset, refit=names,
                         trainable=trainable_names(self.plan, frozen) if stage.max_epochs else [])
        return frozen, names

    def _fit(self, index: int, stage: StageConfig, module: GraphModule, frozen: frozenset[str], ckpt_dir: Any,
             resume_ckpt: Any, step_offset: int, outcome: StageOutcome) -> None:
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
                             plugins=[RecordedCheckpointIO(self.state, stage.name)],
                             enable_checkpointing=checkpoint is not None,
                             enable_model_summary=False, default_root_dir=self.root)
        with warnings.catch_warnings():
            if resume_ckpt is not None:  # resuming writes into the run's own checkpoint folder on purpose
                warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=self.datamodule, ckpt_path=resume_ckpt, weights_only=True)
        self.check_record()
        outcome.trainer, outcome.steps, outcome.epochs = trainer, trainer.global_step, trainer.current_epoch
        logged = floats(trainer.callback_metrics)
        if stage.max_epochs > 0 and logged:  # (a resume with every epoch done logs nothing: the record stays)
            outcome.metrics, outcome.trained = logged, True
            outcome.best = best_checkpoint(checkpoint, self.run.path) if self.run is not None else None

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

