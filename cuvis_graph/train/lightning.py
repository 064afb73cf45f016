"""The compiled LightningModule: every step runs the plan through the one executor.

* loss: ``L = sum_i w_i * L_i`` over loss leaves; logged as ``<stage>/loss/<leaf>``
  (weighted) and ``<stage>/loss`` (total), epoch means weighted by batch size; a leaf whose
  :meth:`~cuvis_graph.core.leaves.LossNode.components` are not empty (e.g.
  ``WeightedMultiLoss``) also gets ``<stage>/loss/<leaf>/<component>``. Validation and test
  losses are ``torchmetrics.MeanMetric`` states (float64 sums of ``loss * batch_size`` and
  of batch sizes, all-reduced by torchmetrics under DDP), so their means are exact over the
  whole set, never a mean of the ranks' means. The training losses of single steps go out
  every ``trainer.log_every_n_steps`` steps as ``train/loss_step`` and
  ``train/loss/<leaf>_step`` (Lightning's ``_step`` suffix);
* epochs: ``node.on_epoch_start(epoch)`` on every node at each training epoch start
  (e.g. temperature annealing), then each entry of ``node.logged_values()`` is logged as
  ``train/<node>/<key>`` (e.g. ``train/selector/temperature``);
* metrics: torchmetrics states per stage, logged at epoch end as ``<stage>/<leaf>/<name>``
  (``train`` too with ``train_metrics``: the training batches as the steps see them); a
  test pass logs under ``test_label`` (``test``, or e.g. ``test_best`` for another set of
  weights);
* epoch summary: one ``logging`` line per training epoch (``logs/training.log`` of a run)
  with the epoch's losses and metrics, validation ones when validation ran that epoch;
* visualizations: first validation batch of every ``log_frequency``-th epoch, rank 0,
  never during the sanity check, sent to the monitors; a failing one is disabled. The
  validation before training logs its figures under stage ``initial``;
* stages: ``loss_weights`` picks the active losses (``None`` weight = the leaf's own),
  ``frozen`` nodes run in eval mode (no noise, fixed masks), ``epoch_offset`` continues
  epoch numbering across stages;
* divergence: a non-finite training loss (checked before its backward pass) or non-finite
  weights after an optimizer step stop training with :class:`TrainingDiverged`, naming the
  step, the epoch, the loss leaves and the first non-finite parameter's node, so that a
  diverged model is never checkpointed or saved as the run's model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from cuvis_graph.core.executor import Executor
from cuvis_graph.core.fitting import move_batch
from cuvis_graph.core.inference import sink_outputs
from cuvis_graph.core.leaves import LossNode, MetricNode, VisualizationNode
from cuvis_graph.core.plan import Plan
from cuvis_graph.errors import ConfigError, CuvisGraphError
from cuvis_graph.monitors.hub import MonitorHub
from cuvis_graph.train.config import OptimizerConfig, SchedulerConfig

__all__ = ["GraphModule", "TrainingDiverged", "build_optimizer", "build_scheduler"]

STAGES = ("train", "val", "test")

log = logging.getLogger(__name__)


class TrainingDiverged(CuvisGraphError):
    """The training loss or the weights became NaN / infinite."""


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, max_epochs: int,
                    total_steps: float | None = None) -> dict[str, Any]:
    """Lightning ``lr_scheduler`` dict for ``cfg``: epoch interval, or step interval for a
    cosine schedule with ``warmup_steps`` (``total_steps``: the optimizer steps of the fit)."""
    if cfg.name == "step":
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        return {"scheduler": sched, "interval": "epoch"}
    if cfg.name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=cfg.mode, factor=cfg.factor,
                                                           patience=cfg.patience, min_lr=cfg.min_lr)
        return {"scheduler": sched, "interval": "epoch", "monitor": cfg.monitor}
    base = optimizer.param_groups[0]["lr"]
    if cfg.warmup_steps:
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg, base, total_steps)),
                "interval": "step"}
    warm, total, floor = cfg.warmup_epochs, max(max_epochs, 1), cfg.min_lr / base

    def factor(epoch: int) -> float:
        if epoch < warm:
            return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * epoch / warm
        progress = (epoch - warm) / max(total - warm, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "epoch"}


def _warmup_cosine(cfg: SchedulerConfig, base_lr: float, total_steps: float | None) -> Any:
    """Factor of the base learning rate at optimizer step ``s`` (0-based): linear warm-up over
    ``warmup_steps`` steps, then cosine decay to ``min_lr`` over the remaining steps."""
    warm, floor, start = cfg.warmup_steps, cfg.min_lr / base_lr, cfg.warmup_start_factor
    if total_steps is None or not math.isfinite(total_steps) or warm >= total_steps:
        raise ConfigError(f"scheduler.warmup_steps={warm} must be below the number of optimizer steps of the "
                          f"training ({total_steps}: epochs x batches / accumulate_grad_batches)")

    def factor(step: int) -> float:
        if step < warm:
            return start + (1 - start) * step / warm
        progress = min((step - warm) / (total_steps - warm), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class GraphModule(pl.LightningModule):
    """LightningModule compiled from a :class:`Plan`. Shares node objects with the graph."""

    def __init__(
        self,
        plan: Plan,
        optimizer: OptimizerConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        hub: MonitorHub | None = None,
        max_epochs: int = 1,
        loss_weights: Mapping[str, float | None] | None = None,
        frozen: set[str] | frozenset[str] = frozenset(),
        epoch_offset: int = 0,
        train_metrics: bool = False,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.executor = Executor(plan)
        self.optimizer_config = optimizer or OptimizerConfig()
        self.scheduler_config = scheduler
        self.max_epochs_hint = max_epochs
        self.hub = hub or MonitorHub()
        self.graph_nodes = nn.ModuleDict({s.name: s.node for s in plan.steps})
        self.graph_leaves = nn.ModuleDict({b.name: b.leaf for b in plan.leaves})
        self.loss_bindings = [b for b in plan.leaves if isinstance(b.leaf, LossNode)
                              and (loss_weights is None or b.name in loss_weights)]
        self.loss_weights = {b.name: float(b.leaf.weight if loss_weights is None or loss_weights[b.name] is None
                                           else loss_weights[b.name]) for b in self.loss_bindings}
        self.frozen = frozenset(frozen)
        self.epoch_offset = epoch_offset
        self.metric_bindings = [b for b in plan.leaves if isinstance(b.leaf, MetricNode)]
        self.vis_bindings = [b for b in plan.leaves if isinstance(b.leaf, VisualizationNode)]
        self.train_metrics = train_metrics
        self.stage_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({b.name: b.leaf.create_metrics() for b in self.metric_bindings})
            for stage in (("fit",) if train_metrics else ()) + ("val", "test")  # "fit": "train" is a Module attribute
        })
        #: prefix of the keys a test pass logs (``test``; e.g. ``test_best`` for the best weights)
        self.test_label = "test"
        self._validated_epoch: int | None = None
        self.disabled_visualizations: set[str] = set()
        #: called once in ``setup("fit")`` with this module (see :mod:`cuvis_graph.train.training`)
        self.setup_task: Any = None
        #: epoch means of validation / test losses by logged key (plain dict: no module state)
        self._eval_losses: dict[str, MeanMetric] = {}
        self._last_losses: dict[str, torch.Tensor] = {}

    # -- steps ---------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return self.executor.run(batch)

    @staticmethod
    def _batch_size(batch: Mapping[str, Any]) -> int:
        cube = batch.get("cube")
        return int(cube.shape[0]) if isinstance(cube, torch.Tensor) else 1

    def _losses(self, batch, outputs, stage: str) -> torch.Tensor | None:
        if not self.loss_bindings:
            return None
        total = None
        bs = self._batch_size(batch)
        self._last_losses = {}
        for b in self.loss_bindings:
            output, leaf_batch = self.executor.leaf_inputs(b, batch, outputs)
            value = self.loss_weights[b.name] * b.leaf.compute_loss(output, leaf_batch)
            self._last_losses[b.name] = value.detach()
            self._log_loss(f"{stage}/loss/{b.name}", value, stage, bs)
            for part, part_value in b.leaf.components().items():
                self._log_loss(f"{stage}/loss/{b.name}/{part}", part_value, stage, bs, step_value=False)
            total = value if total is None else total + value
        self._log_loss(f"{stage}/loss", total, stage, bs, prog_bar=True)
        return total

    @property
    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _log_loss(self, key: str, value: torch.Tensor, stage: str, batch_size: int, prog_bar: bool = False,
                  step_value: bool = True) -> None:
        """Epoch mean of a loss weighted by batch size: ``sum_b n_b L_b / sum_b n_b``. Training
        losses go through Lightning's own epoch means (``step_value``: also this step's value);
        validation / test losses into a :class:`MeanMetric` logged by :meth:`_log_eval_losses`."""
        if stage == "train":
            self.log(key, value, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=batch_size,
                     sync_dist=self._world_size > 1)
            if step_value:  # this step's value, sent every ``log_every_n_steps`` (rank 0's batch)
                self.log(f"{key}_step", value, on_step=True, on_epoch=False, batch_size=batch_size)
            return
        mean = self._eval_losses.get(key)
        if mean is None:  # NaN as the fill value keeps a non-finite loss visible with its weight
            mean = self._eval_losses[key] = MeanMetric(nan_strategy=math.nan).to(value.device)
            mean.set_dtype(torch.float64)
        mean.update(value.detach(), batch_size)

    def _log_eval_losses(self, label: str) -> None:
        """Log the epoch means of the losses under ``<label>/loss`` and drop them (every rank calls
        ``compute``, which all-reduces the sums under DDP)."""
        prefix = f"{label}/loss"
        for key in [k for k in self._eval_losses if k == prefix or k.startswith(prefix + "/")]:
            mean = self._eval_losses.pop(key)
            self.log(key, mean.compute(), prog_bar=key == prefix, sync_dist=False)

    def _update_metrics(self, batch, outputs, stage: str) -> None:
        for b in self.metric_bindings:
            output, leaf_batch = self.executor.leaf_inputs(b, batch, outputs)
            b.leaf.update_metrics(self.stage_metrics[stage][b.name], output, leaf_batch)

    def _log_metrics(self, stage: str, label: str | None = None) -> None:
        for b in self.metric_bindings:
            collection = self.stage_metrics[stage][b.name]
            values = b.leaf.compute_metrics(collection)
            collection.reset()
            self.log_dict({f"{label or stage}/{b.name}/{k}": v for k, v in values.items()}, sync_dist=False)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        outputs = self.executor.run(batch)
        loss = self._losses(batch, outputs, "train")
        if self.train_metrics:
            with torch.no_grad():
                self._update_metrics(batch, _detach(outputs, cpu=False), "fit")
        if loss is not None and not self._everywhere(bool(torch.isfinite(loss.detach()).all())):
            parts = ", ".join(f"'{n}'={float(v.float().sum()):.4g}" for n, v in self._last_losses.items()
                              if not bool(torch.isfinite(v).all()))
            self._diverged(f"the training loss is {float(loss.detach().float().sum())} (loss leaves {parts})")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        params = [p for p in self.parameters() if p.requires_grad]
        if params and not self._everywhere(bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all())):
            self._diverged("the weights became non-finite in the optimizer step")

    def _everywhere(self, finite: bool) -> bool:
        """``finite`` on every DDP rank: all ranks stop at the same step, none waits for the rest."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
        return finite

    def _diverged(self, what: str) -> None:
        """Raise :class:`TrainingDiverged` naming where, what and the first non-finite parameter."""
        first, largest = None, (0.0, "")
        for step in self.plan.steps:
            for name, p in step.node.named_parameters():
                bad = ~torch.isfinite(p.detach())
                if bool(bad.any()):
                    first = f"node '{step.name}' parameter '{name}' ({int(bad.sum())} of {p.numel()} values)"
                    break
                if p.numel():
                    top = float(p.detach().abs().max())
                    largest = max(largest, (top, f"node '{step.name}' parameter '{name}'"))
            if first is not None:
                break
        weights = f"first non-finite weight: {first}" if first else \
            f"the weights are finite (largest |w| = {largest[0]:.3g}, {largest[1] or 'none'})"
        lr = self.optimizer_config.lr
        raise TrainingDiverged(
            f"training diverged at step {self.global_step} (epoch {self.epoch_offset + self.current_epoch}): {what}; "
            f"{weights}; the model is not saved. Lower training.optimizer.lr (now {lr:g}) or set "
            "training.trainer.gradient_clip_val")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        outputs = self.executor.run(batch)
        self._losses(batch, outputs, "val")
        self._update_metrics(batch, outputs, "val")
        if batch_idx == 0:
            self._visualize(batch, outputs)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        outputs = self.executor.run(batch)
        self._losses(batch, outputs, self.test_label)
        self._update_metrics(batch, outputs, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        return sink_outputs(self.plan, self.executor.run(batch, keep=self.plan.sinks()))

    def on_fit_start(self) -> None:
        # Lightning >= 2.2 keeps each module's mode; nodes left in eval mode by an earlier
        # train/predict would otherwise train in eval mode (hard masks, no Gumbel noise).
        self.train()
        self._freeze_modes()

    def _freeze_modes(self) -> None:
        for name in self.frozen:
            self.graph_nodes[name].eval()

    def on_train_epoch_start(self) -> None:
        self._freeze_modes()
        for step in self.plan.steps:
            if step.name not in self.frozen:
                step.node.on_epoch_start(self.epoch_offset + self.current_epoch)
            for key, value in step.node.logged_values().items():
                self.log(f"train/{step.name}/{key}", float(value), on_step=False, on_epoch=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        if self.train_metrics:
            self._log_metrics("fit", "train")
        trainer = self._trainer
        if trainer is not None and trainer.is_global_zero:
            log.info("%s", self._epoch_summary(trainer))

    def _epoch_summary(self, trainer: pl.Trainer) -> str:
        """``epoch 3/5 (24 steps): train/loss=0.21 val/loss=0.18 ...``; validation values only when
        validation ran in this epoch."""
        stages = ("train", "val") if self._validated_epoch == self.current_epoch else ("train",)
        values = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if k.split("/", 1)[0] in stages and not k.endswith("_step") and v.numel() == 1}
        epoch = self.epoch_offset + self.current_epoch + 1
        total = self.epoch_offset + trainer.max_epochs if trainer.max_epochs is not None else "?"
        text = " ".join(f"{k}={v:.6g}" for k, v in sorted(values.items()))
        return f"epoch {epoch}/{total} ({trainer.global_step} steps): {text or 'nothing logged'}"

    def on_validation_epoch_end(self) -> None:
        self._log_eval_losses("val")
        self._log_metrics("val")
        if self._trainer is not None and not self._trainer.sanity_checking:
            self._validated_epoch = self.current_epoch

    def on_test_epoch_end(self) -> None:
        self._log_eval_losses(self.test_label)
        self._log_metrics("test", self.test_label)

    def setup(self, stage: str) -> None:
        """Run the pending ``setup_task`` (statistical init under DDP: every rank, inside the fit)."""
        if stage == "fit" and self.setup_task is not None:
            task, self.setup_task = self.setup_task, None
            task(self)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_batch(batch, device) if isinstance(batch, Mapping) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    # -- visualizations -----------------------------------------------------------------
    def _visualize(self, batch, outputs) -> None:
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero or not self.vis_bindings:
            return
        import matplotlib.pyplot as plt

        fitting = trainer.state.fn is not None and trainer.state.fn.value == "fit"
        epoch, stage = self.epoch_offset + self.current_epoch, "val" if fitting else "initial"
        cpu_batch = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for b in self.vis_bindings:
            if b.name in self.disabled_visualizations or not b.leaf.should_run(epoch):
                continue
            try:
                output, leaf_batch = self.executor.leaf_inputs(b, cpu_batch, _detach(outputs))
                figures = b.leaf.visualize(output, leaf_batch, self.graph_nodes[b.parent.key])
            except Exception as exc:  # noqa: BLE001 - a visualization never stops training
                self.disabled_visualizations.add(b.name)
                self.hub.record_failure(b.name, "visualization", exc)
                continue
            for fig_name, fig in figures.items():
                self.hub.log_artifact(fig, f"{b.name}/{fig_name}", epoch, stage)
                plt.close(fig)

    # -- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        optimizer = build_optimizer(params, self.optimizer_config)
        if self.scheduler_config is None:
            return optimizer
        steps = self.trainer.estimated_stepping_batches if self.scheduler_config.warmup_steps else None
        return {"optimizer": optimizer,
                "lr_scheduler": build_scheduler(optimizer, self.scheduler_config, self.max_epochs_hint, steps)}


def _detach(outputs: dict[str, dict[str, torch.Tensor]], cpu: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {p: t.detach().cpu() if cpu else t.detach() for p, t in ports.items()} for n, ports in outputs.items()}
