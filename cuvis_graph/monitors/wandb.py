"""Weights & Biases monitor on Lightning's ``WandbLogger`` (offline by default)."""

from __future__ import annotations

import importlib
import logging
import netrc
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cuvis_graph.core.leaves import MonitoringNode
from cuvis_graph.core.registry import register

__all__ = ["WandBMonitor"]

log = logging.getLogger(__name__)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


@register
class WandBMonitor(MonitoringNode):
    """Metrics and figures to W&B.

    * ``mode="offline"`` (default): a local run under ``<run dir>/wandb`` (or
      ``save_dir``), synced later with ``wandb sync``; no network, no key needed.
    * ``mode="online"``: needs a key (``WANDB_API_KEY`` or ``wandb login``); without one,
      one warning and the monitor falls back to offline.
    * ``mode="disabled"``: nothing is written.

    The run's resolved pipeline and training config become the W&B run config
    (``config["training"]["optimizer"]["lr"]``...).

    When the ``wandb`` package is missing, one warning is given and the monitor does
    nothing; training goes on.

    Args:
        config: extra entries of the W&B run config (beside ``pipeline`` and ``training``).
        notes: the W&B run's notes.
        run_name: the W&B run name (cuvis.ai's ``name``; here ``name`` names the monitor).
    """

    def __init__(self, project: str = "cuvis-graph", entity: str | None = None,
                 mode: Literal["offline", "online", "disabled"] = "offline", tags: list[str] | None = None,
                 save_dir: str | os.PathLike | None = None, run_name: str | None = None,
                 config: Mapping[str, Any] | None = None, notes: str | None = None,
                 name: str | None = None) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"mode must be 'offline', 'online' or 'disabled', got {mode!r}")
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.run_name = run_name
        self.config, self.notes = dict(config or {}), notes
        self.name = name or "wandb"
        self._logger: Any = None
        self._unavailable = False

    def attach_run(self, run_dir: str | os.PathLike) -> None:
        if self.save_dir is None:
            self.save_dir = Path(run_dir)
        if self.run_name is None:
            self.run_name = f"{Path(run_dir).parent.name}/{Path(run_dir).name}"

    @property
    def logger(self) -> Any:
        """The Lightning ``WandbLogger``; ``None`` when wandb is unavailable."""
        if self._logger is None and not self._unavailable:
            try:
                importlib.import_module("wandb")
            except ImportError:
                self._unavailable = True
                warnings.warn("WandBMonitor: the 'wandb' package is not installed (pip install wandb); "
                              "W&B logging is off for this run", RuntimeWarning, stacklevel=2)
                return None
            mode = self.mode
            if mode == "online" and not _has_api_key():
                warnings.warn("WandBMonitor: no W&B API key (set WANDB_API_KEY or run `wandb login`); "
                              "logging offline instead", RuntimeWarning, stacklevel=2)
                mode = "offline"
            from lightning.pytorch.loggers import WandbLogger

            save_dir = self.save_dir or Path("runs")
            save_dir.mkdir(parents=True, exist_ok=True)
            self._logger = WandbLogger(project=self.project, entity=self.entity, tags=self.tags, name=self.run_name,
                                       save_dir=str(save_dir), mode=mode, offline=mode == "offline",
                                       settings={"silent": True, "console": "off"}, notes=self.notes)
            if self.config:
                self._logger.log_hyperparams(dict(self.config))
            # Lightning always passes anonymous=None, which wandb >= 0.19 answers with "The anonymous
            # setting has no effect" on every run; we never ask for anonymous logging, so drop the key.
            if self._logger._wandb_init.get("anonymous") is None:
                self._logger._wandb_init.pop("anonymous", None)
        return self._logger

    @property
    def run_dir(self) -> Path | None:
        """The local W&B run folder (``.../wandb/offline-run-...``)."""
        if self._logger is None:
            return None
        return Path(self._logger.experiment.dir).parent

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        if self.logger is not None:
            self.logger.log_metrics({k: float(v) for k, v in metrics.items()}, step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(dict(params))

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        if self.logger is None:
            return
        if hasattr(artifact, "canvas"):
            artifact.canvas.draw()
            artifact = np.asarray(artifact.canvas.buffer_rgba())[..., :3]
        self.logger.log_image(key=f"{stage}/{name}", images=[np.asarray(artifact)], step=step)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.finalize("success")
            self._logger.experiment.finish()
            self._logger = None
