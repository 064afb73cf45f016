"""Fan-out to the graph's monitors with failure isolation, and a Lightning logger over it.

A monitor that raises is reported once (``logging.warning`` with its name and the
error), recorded in :attr:`MonitorHub.failures`, and skipped from then on; training goes
on and the other monitors keep receiving everything.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from cuvis_graph.core.leaves import MonitoringNode

__all__ = ["MonitorHub", "MonitorLogger"]

log = logging.getLogger(__name__)


class MonitorHub:
    """Holds monitors; calls them safely."""

    def __init__(self, monitors: list[MonitoringNode] | None = None) -> None:
        self.monitors: list[MonitoringNode] = list(monitors or [])
        self.disabled: set[int] = set()
        self.failures: list[dict[str, str]] = []

    def record_failure(self, who: str, kind: str, exc: BaseException) -> None:
        """Report a side-effect failure once and keep it for ``run.json``."""
        message = f"{type(exc).__name__}: {exc}"
        log.warning("%s '%s' failed and is disabled for the rest of the run: %s", kind, who, message)
        self.failures.append({"name": who, "kind": kind, "error": message,
                              "traceback": "".join(traceback.format_exception(exc))})

    def _call(self, method: str, *args: Any, optional: bool = False) -> None:
        for i, monitor in enumerate(self.monitors):
            if i in self.disabled or (optional and not hasattr(monitor, method)):
                continue
            try:
                getattr(monitor, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a monitor never stops training
                self.disabled.add(i)
                self.record_failure(monitor.name or type(monitor).__name__, "monitor", exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int, stage: str) -> None:
        self._call("log_metrics", dict(metrics), step, stage)

    def log_artifact(self, artifact: Any, name: str, step: int, stage: str) -> None:
        self._call("log_artifact", artifact, name, step, stage)

    def log_histograms(self, tensors: Mapping[str, Any], step: int) -> None:
        """Parameter histograms, for monitors that implement ``log_histograms``."""
        self._call("log_histograms", dict(tensors), step, optional=True)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """The run's resolved configuration (``{"pipeline": ..., "training": ...}``), for
        monitors that implement ``log_hyperparams`` (TensorBoard hparams, W&B run config)."""
        self._call("log_hyperparams", dict(params), optional=True)

    def attach_run(self, run_dir: Any) -> None:
        """Tell monitors without an explicit folder where the run directory is."""
        self._call("attach_run", run_dir, optional=True)

    def close(self) -> None:
        self._call("close")


class MonitorLogger(Logger):
    """Lightning logger that routes ``self.log`` values to a :class:`MonitorHub`.

    Keys ``"<stage>/..."`` are grouped by stage (``train``, ``val``, ``test``...); keys
    without a stage ride along, or go to ``train`` when they come alone. ``step_offset`` is
    added to Lightning's step (training stages continue one step axis)."""

    def __init__(self, hub: MonitorHub, step_offset: int = 0) -> None:
        super().__init__()
        self.hub = hub
        self.step_offset = step_offset

    @property
    def name(self) -> str:
        return "cuvis_graph"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        groups: dict[str, dict[str, float]] = defaultdict(dict)
        extras = {k: float(v) for k, v in metrics.items() if "/" not in k}
        for key, value in metrics.items():
            if "/" in key:
                groups[key.split("/", 1)[0]][key] = float(value)
        if not groups and any(k != "epoch" for k in extras):
            groups["train"] = {}  # stage-less values (e.g. ``lr-Adam`` of the LR monitor)
        for stage, values in groups.items():
            self.hub.log_metrics({**values, **extras}, self.step_offset + int(step or 0), stage)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        return None
