"""Training configuration (pydantic v2). Unknown or wrongly typed fields fail with their path."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cuvis_graph.errors import ConfigError, did_you_mean
from cuvis_graph.train.compat import (
    MONITOR_PLUGINS,
    as_dict,
    from_dict_config,
    lift_optimizer_scheduler,
    scheduler_name,
    to_dict_config,
)

__all__ = [
    "TrainerConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainingConfig",
    "CheckpointConfig",
    "EarlyStoppingConfig",
    "CallbacksConfig",
    "RunConfig",
    "StageConfig",
    "format_validation_error",
    "parse_config",
    "as_dict",
    "to_dict_config",
    "from_dict_config",
]


class StrictModel(BaseModel):
    """Base of every config model: unknown fields and non-finite floats (``nan``, ``inf``) are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_PRECISIONS = frozenset({"32-true", "32", "64-true", "64", "16-mixed", "16", "16-true", "bf16-mixed", "bf16",
                         "bf16-true", "transformer-engine"})
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


def _runs_on_gpu(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda", "mps"):
        return True
    if accelerator != "auto":
        return False
    import torch

    return torch.cuda.is_available()


class TrainerConfig(StrictModel):
    """The Lightning Trainer options users need. ``max_epochs=0``: statistical init only.

    ``devices=None`` means ``"auto"``. ``enable_checkpointing``: ``False`` turns
    ``TrainingConfig.checkpoint`` off (``None``, the default: as ``checkpoint.enabled`` says).
    """

    max_epochs: int = Field(5, ge=0)
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: str | int = "32-true"
    gradient_clip_val: float | None = Field(None, ge=0)
    accumulate_grad_batches: int = Field(1, ge=1)
    deterministic: bool | Literal["warn"] = False
    log_every_n_steps: int = Field(10, ge=1)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    check_val_every_n_epoch: int = Field(1, ge=1)
    num_sanity_val_steps: int = Field(0, ge=-1)
    enable_progress_bar: bool = True
    enable_checkpointing: bool | None = None

    @field_validator("devices", mode="before")
    @classmethod
    def _none_is_auto(cls, v: Any) -> Any:
        return "auto" if v is None else v

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, v: str | int) -> str | int:
        if str(v) not in _PRECISIONS:
            raise ValueError(f"unknown precision {v!r}; one of {sorted(_PRECISIONS)}")
        if str(v) in ("16-true", "bf16-true"):  # Lightning casts the whole module, float64 buffers included
            raise ValueError(f"precision '{v}' casts every weight and buffer to 16 bits, the float64 statistics "
                             "(RX whitening, PCA axes) included; use 'bf16-mixed' or '16-mixed' (docs/precision.md)")
        return v

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, v: str) -> str:
        if v not in _ACCELERATORS:
            raise ValueError(f"unknown accelerator {v!r}; one of {list(_ACCELERATORS)}")
        return v

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, v: int | str | list[int]) -> int | str | list[int]:
        if isinstance(v, int) and v < 1 and v != -1 or isinstance(v, list) and not v \
                or isinstance(v, str) and v != "auto" and not v.strip().lstrip("-").isdigit():
            raise ValueError(f"devices {v!r}: a count >= 1, -1 (all), 'auto' or a list of device indices")
        return v

    @field_validator("limit_train_batches", "limit_val_batches", "limit_test_batches")
    @classmethod
    def _positive_limit(cls, v: int | float | None) -> int | float | None:
        if v is not None and (v < 0 or isinstance(v, float) and v > 1.0):
            raise ValueError(f"{v!r}: a batch count >= 0 or a fraction in [0, 1]")
        return v

    @model_validator(mode="after")
    def _float16_needs_a_gpu(self) -> TrainerConfig:
        """Lightning silently swaps float16 autocast for bfloat16 on the CPU; say so instead."""
        if str(self.precision) in ("16-mixed", "16", "16-true") and not _runs_on_gpu(self.accelerator):
            raise ValueError(f"precision '{self.precision}' (float16) does not run on the CPU "
                             f"(accelerator '{self.accelerator}'); use 'bf16-mixed' (bfloat16 autocast) "
                             "or '32-true'")
        return self

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.pytorch.Trainer`` (``None`` values dropped;
        checkpointing is configured by ``TrainingConfig.checkpoint``)."""
        return {k: v for k, v in self.model_dump(exclude={"enable_checkpointing"}).items() if v is not None}


class OptimizerConfig(StrictModel):
    """Optimizer: ``adam``, ``adamw`` or ``sgd`` (with momentum).

    ``scheduler`` (a name such as ``"cosine"`` / ``"reduce_on_plateau"``, or a
    :class:`SchedulerConfig` mapping) is accepted here as in cuvis.ai; the training or stage
    config moves it to its own ``scheduler`` field.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    scheduler: SchedulerConfig | None = None

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class SchedulerConfig(StrictModel):
    """Learning-rate schedule.

    * ``cosine``: linear warmup over ``warmup_epochs`` from ``lr * warmup_start_factor``,
      then cosine decay to ``min_lr`` at ``max_epochs`` (one update per epoch). With
      ``warmup_steps`` instead, the schedule updates every optimizer step: for step ``s``
      of ``S`` (``S`` = the stage's optimizer steps) and ``f0 = warmup_start_factor``,
      ``lr_s = lr * (f0 + (1 - f0) * s / warmup_steps)`` while ``s < warmup_steps``, then
      ``min_lr + (lr - min_lr) * (1 + cos(pi * (s - warmup_steps) / (S - warmup_steps))) / 2``.
      ``warmup_epochs`` and ``warmup_steps`` are exclusive.
    * ``step``: ``lr * gamma ** (epoch // step_size)``.
    * ``plateau`` (also ``reduce_on_plateau``): multiply by ``factor`` when ``monitor`` stalls
      for ``patience`` epochs.
    """

    name: Literal["cosine", "step", "plateau"]
    warmup_epochs: int = Field(0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0)
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"

    @field_validator("name", mode="before")
    @classmethod
    def _primary_name(cls, v: Any) -> Any:
        return scheduler_name(v)

    @model_validator(mode="after")
    def _one_warmup(self) -> SchedulerConfig:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError(f"give either warmup_epochs or warmup_steps, not both (got warmup_epochs="
                             f"{self.warmup_epochs}, warmup_steps={self.warmup_steps})")
        return self


class CheckpointConfig(StrictModel):
    """Lightning ``ModelCheckpoint`` in ``<run>/checkpoints/``.

    ``monitor="auto"`` picks ``val/loss`` when there is validation data and a loss,
    ``train/loss`` when there is a loss only, else no monitor (the latest epoch is
    "best"). With ``save_top_k=1`` the best checkpoint is ``best.ckpt``; with more, the
    ``save_top_k`` best are kept as ``epoch=NNN.ckpt`` (older ones are deleted, so disk
    use stays bounded; ``-1`` keeps all). ``last.ckpt`` is rewritten atomically after every
    epoch, whether or not the monitor improved, so a resume continues from the last epoch.

    Periodic snapshots (off unless ``keep_last`` or ``keep_every_n_epochs`` is set): every
    ``every_n_epochs`` epochs ``snapshots/epoch=NNN.ckpt``; the newest ``keep_last`` are kept,
    and each whose epoch count ``NNN + 1`` is a multiple of ``keep_every_n_epochs`` is kept
    for good. Example: ``{every_n_epochs: 1, keep_last: 2, keep_every_n_epochs: 5}``. Every
    checkpoint carries the run's resolved config (``"cuvis_graph_config"``).
    """

    enabled: bool = True
    monitor: str | None = "auto"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(1, ge=-1)
    save_last: bool = True
    every_n_epochs: int = Field(1, ge=1)
    keep_last: int | None = Field(None, ge=0)
    keep_every_n_epochs: int | None = Field(None, ge=1)


class EarlyStoppingConfig(StrictModel):
    """Lightning ``EarlyStopping``: stop when ``monitor`` has not improved by ``min_delta``
    for ``patience`` validation checks."""

    monitor: str = "val/loss"
    patience: int = Field(3, ge=0)
    mode: Literal["min", "max"] = "min"
    min_delta: float = Field(0.0, ge=0)


class CallbacksConfig(StrictModel):
    """Callbacks built from config (custom ones: ``graph.train(..., callbacks=[...])``).

    * ``early_stopping``: see :class:`EarlyStoppingConfig` (off when ``None``);
    * ``lr_monitor``: log the learning rate each epoch as ``lr-<Optimizer>``;
    * ``rich_progress_bar``: Lightning's ``RichProgressBar`` instead of tqdm;
    * ``parameter_histograms``: every ``n`` epochs send parameter histograms to monitors
      that support them (TensorBoard); ``0`` disables.
    """

    early_stopping: EarlyStoppingConfig | None = None
    lr_monitor: bool = False
    rich_progress_bar: bool = False
    parameter_histograms: int = Field(1, ge=0)


class RunConfig(StrictModel):
    """Where run directories go: ``<root>/<pipeline-name>/<YYYYMMDD_HHMMSS_mmm>/``.

    The default root is ``$CUVIS_GRAPH_RUNS_ROOT`` when set (e.g. a temporary folder for
    test suites), else ``runs`` in the working directory.
    """

    root: str = Field(default_factory=lambda: os.environ.get("CUVIS_GRAPH_RUNS_ROOT") or "runs")


class StageConfig(StrictModel):
    """One gradient-training stage (see :mod:`cuvis_graph.train.training`).

    * ``trainable``: the only nodes whose parameters train (all others frozen), or
      ``frozen``: nodes to freeze (the others train as built); not both.
    * ``losses``: active loss leaves, a list or ``{leaf: weight}`` (``null`` weight keeps the
      leaf's own); ``None`` = every loss leaf at its own weight.
    * ``optimizer`` / ``scheduler``: replace the training-wide ones for this stage.
    * ``refit``: statistical nodes fitted again, on the data as this stage sees it, before
      the stage starts (e.g. RX after the selector changed); ``"all"`` for every one.
    * ``max_epochs=0``: a statistics-only stage (refit, no gradients). Frozen nodes run in
      eval mode, so ``{max_epochs: 0, trainable: [], refit: [rx]}`` refits RX on what
      inference sees (e.g. a ``hard=True`` selector's top-k mask).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    max_epochs: int = Field(1, ge=0)
    trainable: list[str] | None = None
    frozen: list[str] | None = None
    losses: list[str] | dict[str, float | None] | None = None
    optimizer: OptimizerConfig | None = None
    scheduler: SchedulerConfig | None = None
    refit: list[str] | Literal["all"] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _optimizer_scheduler(cls, data: Any) -> Any:
        return lift_optimizer_scheduler(data, "stage")

    @model_validator(mode="after")
    def _one_selection(self) -> StageConfig:
        if self.trainable is not None and self.frozen is not None:
            raise ValueError(f"stage '{self.name}': give either 'trainable' or 'frozen', not both")
        s = self.scheduler
        if s is not None and s.name == "cosine" and self.max_epochs and s.warmup_epochs > self.max_epochs:
            raise ValueError(f"stage '{self.name}': scheduler.warmup_epochs={s.warmup_epochs} exceeds "
                             f"max_epochs={self.max_epochs}")
        return self

    def loss_weights(self) -> dict[str, float | None] | None:
        """``{leaf: weight or None}`` of the active losses; ``None`` = all at their own weight."""
        if self.losses is None:
            return None
        return dict(self.losses) if isinstance(self.losses, dict) else dict.fromkeys(self.losses)


class TrainingConfig(StrictModel):
    """Everything ``graph.train`` needs besides the graph and the data.

    ``stages``: ordered gradient stages after statistical init; empty = one stage named
    ``train`` with ``trainer.max_epochs`` epochs, every node as built, every loss.
    With stages, ``trainer.max_epochs`` is not used (each stage has its own).
    ``train_metrics``: also compute the metric leaves on the training batches, as the
    training steps see them (train mode, weights of that step), logged per epoch as
    ``train/<leaf>/<metric>``; off by default (it costs a metric update per step).
    ``monitor_plugins``: monitors by name, added for the run to the graph's registered ones:
    ``"tensorboard"``, ``"wandb"``, ``"loguru"`` / ``"logging"`` (metrics to the Python log),
    ``"dummy"`` / ``"file"`` (nothing to add: the run directory has the files).

    Defaults that differ from cuvis.ai: ``seed`` 0 (42 there), ``trainer.max_epochs`` 5 (1),
    ``trainer.accelerator`` ``"auto"`` (``"cpu"``), ``trainer.devices`` 1 (``None``),
    ``trainer.log_every_n_steps`` 10 (50), checkpointing on (off), ``optimizer.lr`` 1e-2
    (1e-3), ``monitor_plugins`` empty (``["loguru"]``).
    """

    seed: int = 0
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    stages: list[StageConfig] = Field(default_factory=list)
    train_metrics: bool = False
    monitor_plugins: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _optimizer_scheduler(cls, data: Any) -> Any:
        return lift_optimizer_scheduler(data, "training")

    @field_validator("monitor_plugins")
    @classmethod
    def _known_plugins(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.lower() not in MONITOR_PLUGINS:
                raise ValueError(f"unknown monitor plugin {name!r}{did_you_mean(name, MONITOR_PLUGINS)}; "
                                 f"one of {sorted(MONITOR_PLUGINS)}")
        return v

    @model_validator(mode="after")
    def _checkpointing_switch(self) -> TrainingConfig:
        if self.trainer.enable_checkpointing is False and self.checkpoint.enabled:
            object.__setattr__(self, "checkpoint", self.checkpoint.model_copy(update={"enabled": False}))
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        s = self.scheduler
        if s is not None and s.name == "cosine" and not self.stages and self.trainer.max_epochs \
                and s.warmup_epochs > self.trainer.max_epochs:
            raise ValueError(
                f"scheduler.warmup_epochs={s.warmup_epochs} exceeds trainer.max_epochs={self.trainer.max_epochs}"
            )
        names = [stage.name for stage in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stages: names must be unique, repeated: {', '.join(repeated)}")
        return self

    def resolved_stages(self) -> list[StageConfig]:
        """The declared stages, or the default single stage ``train``."""
        return list(self.stages) or [StageConfig(name="train", max_epochs=self.trainer.max_epochs)]

    @property
    def trains(self) -> bool:
        """Whether any stage runs gradient epochs."""
        return any(stage.max_epochs > 0 for stage in self.resolved_stages())


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in error.errors():
        path = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        got = f" (got {e['input']!r})" if e["type"] == "finite_number" else ""
        lines.append(f"{path or '<root>'}: {e['msg']}{got}")
    return "\n".join(lines)


def parse_config(model: type[StrictModel], data: Any, prefix: str = "training") -> Any:
    """Validate ``data`` as ``model``; raise :class:`ConfigError` naming each field path."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None
