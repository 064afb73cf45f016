"""cuvis.ai forms of the training configuration, in one place.

* scheduler names: ``"reduce_on_plateau"`` is ``"plateau"``; a scheduler may be given as a
  name or mapping inside ``OptimizerConfig(scheduler=...)`` (moved to
  ``TrainingConfig.scheduler``, or ``StageConfig.scheduler`` in a stage);
* ``TrainerConfig(devices=None)`` means ``"auto"``; ``enable_checkpointing=False`` turns
  ``TrainingConfig.checkpoint.enabled`` off;
* ``TrainingConfig(monitor_plugins=[...])``: monitors by name (:data:`MONITOR_PLUGINS`),
  added to the graph's own for that run;
* config helpers :func:`as_dict`, :func:`to_dict_config`, :func:`from_dict_config`
  (a round trip gives an equal config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from cuvis_graph.core.leaves import MonitoringNode
    from cuvis_graph.train.config import TrainingConfig

__all__ = ["SCHEDULER_ALIASES", "MONITOR_PLUGINS", "scheduler_name", "lift_optimizer_scheduler", "plugin_monitors",
           "as_dict", "to_dict_config", "from_dict_config"]

#: alternative scheduler names -> the names of :class:`~cuvis_graph.train.config.SchedulerConfig`.
SCHEDULER_ALIASES = {"reduce_on_plateau": "plateau", "reducelronplateau": "plateau", "cosine_annealing": "cosine"}

#: ``monitor_plugins`` names -> ``"module:Class"`` of the monitor (``None``: nothing to add,
#: the run directory already holds ``metrics.jsonl`` and the PNG figures).
MONITOR_PLUGINS: dict[str, str | None] = {
    "loguru": "cuvis_graph.monitors.log_monitor:LoggingMonitor",
    "logging": "cuvis_graph.monitors.log_monitor:LoggingMonitor",
    "tensorboard": "cuvis_graph.monitors.tensorboard:TensorBoardMonitor",
    "wandb": "cuvis_graph.monitors.wandb:WandBMonitor", "dummy": None, "file": None,
}


def scheduler_name(name: Any) -> Any:
    """The primary scheduler name of ``name`` (unchanged when it is one already)."""
    return SCHEDULER_ALIASES.get(name.lower(), name) if isinstance(name, str) else name


def _scheduler_spec(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def lift_optimizer_scheduler(data: Any, where: str) -> Any:
    """Move ``optimizer.scheduler`` of a config mapping to its ``scheduler`` field.

    ``where`` names the config in the error raised when both are given.
    """
    if not isinstance(data, Mapping) or data.get("optimizer") is None:
        return data
    optimizer = data["optimizer"]
    if isinstance(optimizer, Mapping):
        inner = optimizer.get("scheduler")
        optimizer = {k: v for k, v in optimizer.items() if k != "scheduler"}
    else:  # an OptimizerConfig
        inner = getattr(optimizer, "scheduler", None)
        optimizer = optimizer.model_copy(update={"scheduler": None}) if inner is not None else optimizer
    if inner is None:
        return data
    if data.get("scheduler") is not None:
        raise ValueError(f"{where}: a scheduler is given both as optimizer.scheduler and as scheduler; give one")
    return {**data, "optimizer": optimizer, "scheduler": _scheduler_spec(inner)}


def plugin_monitors(names: list[str], registered: list[MonitoringNode]) -> list[MonitoringNode]:
    """Monitors for ``names`` that the graph has not registered already (by class)."""
    import importlib

    have = {f"{type(m).__module__}:{type(m).__name__}" for m in registered}
    out = []
    for name in names:
        kind = MONITOR_PLUGINS[name.lower()]
        if kind is not None and kind not in have:
            have.add(kind)
            module, cls = kind.split(":")
            out.append(getattr(importlib.import_module(module), cls)())
    return out


def as_dict(config: TrainingConfig) -> dict[str, Any]:
    """The config as plain Python values (every field, defaults included)."""
    return config.model_dump(mode="json")


def to_dict_config(config: TrainingConfig) -> DictConfig:
    """The config as an OmegaConf ``DictConfig`` (attribute access: ``cfg.trainer.max_epochs``)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(as_dict(config))


def from_dict_config(config: DictConfig | Mapping[str, Any]) -> TrainingConfig:
    """A :class:`TrainingConfig` from a ``DictConfig`` or mapping (validated: unknown or
    mistyped fields raise :class:`~cuvis_graph.errors.ConfigError` with their path)."""
    from cuvis_graph.train.config import TrainingConfig, parse_config

    if type(config).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    return parse_config(TrainingConfig, config)
