"""TensorBoard monitor on Lightning's ``TensorBoardLogger``: scalars, figures, histograms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cuvis_graph.core.leaves import MonitoringNode
from cuvis_graph.core.registry import register

__all__ = ["TensorBoardMonitor"]


@register
class TensorBoardMonitor(MonitoringNode):
    """Event files TensorBoard (and its ``EventAccumulator``) reads.

    * metrics -> scalars under their key (``train/loss``, ``val/det/f1``...);
    * matplotlib figures -> images under ``<stage>/<name>``; arrays ``[H,W]``/``[H,W,3]``
      -> images too. They share the scalars' step axis (the global step): a figure arrives
      with its epoch while validation runs, is rendered at once and written with the step
      of the metrics logged next (that validation's), or the last step seen when the run
      closes first;
    * parameter histograms under ``params/<name>`` (see ``callbacks.parameter_histograms``);
    * the run's resolved pipeline and training config as hyperparameters: flattened
      (``training/optimizer/lr``...) in the HPARAMS tab, nested in ``hparams.yaml``.

    Args:
        root: folder for the event files (cuvis.ai: ``log_dir``). ``None``: ``<run
            dir>/tensorboard`` when training into a run directory. An explicit root gets one
            ``version_N`` folder per run.
        flush_secs: write pending events to disk at least this often (seconds).
        name: monitor name (in failure reports).
    """

    def __init__(self, root: str | os.PathLike | None = None, flush_secs: int = 120, name: str | None = None) -> None:
        if flush_secs <= 0:
            raise ValueError(f"flush_secs must be > 0, got {flush_secs}")
        self.root = None if root is None else Path(root)
        self.flush_secs = int(flush_secs)
        self.name = name or "tensorboard"
        self._logger: Any = None
        self._in_run = False
        self._pending: list[tuple[str, np.ndarray, str, int]] = []  # tag, image, dataformats, epoch
        self._last_step: int | None = None

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
                                             default_hp_metric=False, flush_secs=self.flush_secs)
        return self._logger

    @property
    def log_dir(self) -> Path:
        return Path(self.logger.log_dir)

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        self._write_pending(step)
        self._last_step = step
        self.logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.logger.log_hyperparams(dict(params))

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        if hasattr(artifact, "savefig"):
            from torch.utils.tensorboard._utils import figure_to_image

            image, dataformats = figure_to_image(artifact, close=False), "CHW"  # rendered now, written later
        else:
            image = np.asarray(artifact)
            if image.ndim not in (2, 3):
                raise TypeError(f"TensorBoardMonitor logs figures and [H,W(,3)] images, got shape {tuple(image.shape)}")
            dataformats = "HW" if image.ndim == 2 else "HWC"
        self._pending.append((f"{stage}/{name}", image, dataformats, step))

    def _write_pending(self, step: int | None) -> None:
        """Write the figures waiting for a step at ``step`` (``None``: each at its own epoch)."""
        for tag, image, dataformats, epoch in self._pending:
            self.logger.experiment.add_image(tag, torch.as_tensor(image), dataformats=dataformats,
                                             global_step=epoch if step is None else step)
        self._pending.clear()

    def log_histograms(self, tensors: Mapping[str, torch.Tensor], step: int) -> None:
        for key, value in tensors.items():
            self.logger.experiment.add_histogram(f"params/{key}", value.detach().float().cpu(), global_step=step)

    def close(self) -> None:
        if self._pending:
            self._write_pending(self._last_step)
        if self._logger is not None:
            self._logger.finalize("success")
            self._logger.experiment.close()
            self._logger = None
