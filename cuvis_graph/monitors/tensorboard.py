"""TensorBoard monitor on Lightning's ``TensorBoardLogger``: scalars, figures, histograms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..leaves import MonitoringNode
from ..registry import register

__all__ = ["TensorBoardMonitor"]


@register
class TensorBoardMonitor(MonitoringNode):
    """Event files TensorBoard (and its ``EventAccumulator``) reads.

    * metrics -> scalars under their key (``train/loss``, ``val/det/f1``...);
    * matplotlib figures -> images under ``<stage>/<name>``; arrays ``[H,W]``/``[H,W,3]``
      -> images too;
    * parameter histograms under ``params/<name>`` (see ``callbacks.parameter_histograms``).

    Args:
        root: folder for the event files. ``None``: ``<run dir>/tensorboard`` when training
            into a run directory. An explicit root gets one ``version_N`` folder per run.
        name: monitor name (in failure reports).
    """

    def __init__(self, root: str | os.PathLike | None = None, name: str | None = None) -> None:
        self.root = None if root is None else Path(root)
        self.name = name or "tensorboard"
        self._logger: Any = None
        self._in_run = False

    def attach_run(self, run_dir: str | os.PathLike) -> None:
        if self.root is None:
            self.root, self._in_run = Path(run_dir) / "tensorboard", True

    @property
    def logger(self) -> Any:
        """The Lightning ``TensorBoardLogger`` (created on first use)."""
        if self._logger is None:
            from lightning.pytorch.loggers import TensorBoardLogger

            root = self.root if self.root is not None else Path("runs") / "tensorboard"
            self._logger = TensorBoardLogger(save_dir=str(root), name="", version="" if self._in_run else None,
                                             default_hp_metric=False)
        return self._logger

    @property
    def log_dir(self) -> Path:
        return Path(self.logger.log_dir)

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        self.logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step)

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        tag = f"{stage}/{name}"
        if hasattr(artifact, "savefig"):
            self.logger.experiment.add_figure(tag, artifact, global_step=step, close=False)
            return
        image = torch.as_tensor(np.asarray(artifact))
        if image.ndim == 2:
            self.logger.experiment.add_image(tag, image, global_step=step, dataformats="HW")
        elif image.ndim == 3:
            self.logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        else:
            raise TypeError(f"TensorBoardMonitor logs figures and [H,W(,3)] images, got shape {tuple(image.shape)}")

    def log_histograms(self, tensors: Mapping[str, torch.Tensor], step: int) -> None:
        for key, value in tensors.items():
            self.logger.experiment.add_histogram(f"params/{key}", value.detach().float().cpu(), global_step=step)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.finalize("success")
            self._logger.experiment.close()
            self._logger = None
