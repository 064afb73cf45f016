"""Lightning callbacks and plugins used by ``graph.train``.

* :class:`AtomicCheckpointIO`: checkpoints are written to a temporary file in the same
  folder, fsync'ed, then renamed over the target, so a kill never leaves a half-written
  ``last.ckpt``; loads with ``weights_only=True`` (no pickle of code).
* :class:`RNGStateCallback`: stores the torch / numpy / python RNG states in every
  checkpoint and puts them back when training resumes, so that a resumed run draws the
  same shuffles (and dropout masks) as an uninterrupted one.
* :class:`ParameterHistogramCallback`: every ``n`` epochs sends the trainable parameters
  to monitors that can draw histograms (``log_histograms``).
* :class:`SafeCallback`: wraps a user callback; an exception in one of its hooks is
  reported once (name + error) and the callback is skipped from then on.
* :class:`RecordGuard`: stops training at the next batch once the run's own record
  (``metrics.jsonl``) could not be written: a run must not go on without its record.
* :func:`build_callbacks`: callbacks from :class:`~cuvis_graph.train.config.TrainingConfig`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cuvis_graph.io.atomic import atomic_write
from cuvis_graph.train.checkpoints import load_checkpoint

if TYPE_CHECKING:
    from cuvis_graph.monitors.hub import MonitorHub
    from cuvis_graph.train.config import TrainingConfig

__all__ = [
    "AtomicCheckpointIO",
    "RNGStateCallback",
    "ParameterHistogramCallback",
    "SafeCallback",
    "RecordGuard",
    "build_callbacks",
    "resolve_monitor",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp-<pid>``, fsync, ``os.replace`` onto the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = True) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def collect_rng_states() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCallback(pl.Callback):
    """Saves RNG states with each checkpoint; restores them when training starts from one.

    Restoring happens in ``on_fit_start``: after Lightning has loaded the checkpoint and
    before the fit loop creates the first training dataloader iterator (whose creation
    draws the sampler / worker base seeds from the global generator). Restoring any later
    (``on_train_start``) would miss that draw and shift every later shuffle by one.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class ParameterHistogramCallback(pl.Callback):
    """Every ``every_n_epochs`` epochs: ``hub.log_histograms({name: tensor}, step)``."""

    def __init__(self, hub: MonitorHub, every_n_epochs: int = 1, step_offset: int = 0) -> None:
        self.hub, self.every_n_epochs, self.step_offset = hub, every_n_epochs, step_offset

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.current_epoch % self.every_n_epochs:
            return
        params = {n: p.detach().cpu() for n, p in pl_module.named_parameters() if p.requires_grad}
        if params:
            self.hub.log_histograms(params, self.step_offset + trainer.global_step)


_HOOKS = [name for name in dir(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown")]


class SafeCallback(pl.Callback):
    """Runs ``inner``'s hooks; the first exception is reported to ``hub`` and the callback is
    skipped from then on (training goes on). State is forwarded for checkpoints."""

    def __init__(self, inner: pl.Callback, hub: MonitorHub) -> None:
        self.inner, self.hub, self.failed = inner, hub, False
        for hook in _HOOKS:
            if getattr(type(inner), hook, None) is not getattr(pl.Callback, hook, None):
                setattr(self, hook, self._wrap(hook))

    @property
    def state_key(self) -> str:
        return self.inner.state_key

    def _wrap(self, hook: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failed:
                return None
            try:
                return getattr(self.inner, hook)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a side effect never stops training
                self.failed = True
                self.hub.record_failure(type(self.inner).__name__, "callback", exc)
                return None

        return call

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)


class RecordGuard(pl.Callback):
    """Calls ``check()`` (which raises when the run's record was lost) before every batch and
    at the end of every epoch."""

    def __init__(self, check: Any) -> None:
        self.check = check

    def on_train_batch_start(self, *args: Any) -> None:
        self.check()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.check()

    def on_train_epoch_end(self, *args: Any) -> None:
        self.check()


def resolve_monitor(requested: str | None, *, has_val: bool, has_loss: bool) -> str | None:
    """``"auto"`` -> ``val/loss`` | ``train/loss`` | ``None`` (see ``CheckpointConfig``)."""
    if requested != "auto":
        return requested
    if has_loss:
        return "val/loss" if has_val else "train/loss"
    return None


def build_callbacks(config: TrainingConfig, hub: MonitorHub, checkpoint_dir: Path | None, *,
                    has_val: bool, has_loss: bool, step_offset: int = 0,
                    run_config: Path | None = None) -> list[pl.Callback]:
    """Checkpointing, RNG states, early stopping, LR monitor, progress bar, histograms.

    Checkpoints (:mod:`cuvis_graph.train.checkpoint_callbacks`): the best (``best.ckpt``, or the
    ``save_top_k`` best as ``epoch=NNN.ckpt``; ``-1`` keeps all), ``last.ckpt`` after every
    epoch, optional rotated snapshots, and ``run_config`` (the run's ``config.yaml``) inside each.
    """
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        RichProgressBar,
    )

    from cuvis_graph.train.checkpoint_callbacks import (
        ConfigInCheckpoint,
        LastCheckpoint,
        RunCheckpoint,
        SnapshotCheckpoint,
    )

    callbacks: list[pl.Callback] = [RNGStateCallback()]
    ck = config.checkpoint
    if checkpoint_dir is not None and ck.enabled:
        monitor = resolve_monitor(ck.monitor, has_val=has_val, has_loss=has_loss)
        single = ck.save_top_k == 1 or monitor is None
        callbacks.append(RunCheckpoint(  # first ModelCheckpoint: the one whose best the run reports
            dirpath=checkpoint_dir, filename="best" if single else "epoch={epoch:03d}", auto_insert_metric_name=False,
            monitor=monitor, mode=ck.mode, save_top_k=ck.save_top_k if monitor is not None else 1,
            save_last=ck.save_last and monitor is None, every_n_epochs=ck.every_n_epochs,
            save_on_train_epoch_end=True, enable_version_counter=False))
        if ck.save_last and monitor is not None:
            callbacks.append(LastCheckpoint(checkpoint_dir))
        if ck.keep_last is not None or ck.keep_every_n_epochs is not None:
            callbacks.append(SnapshotCheckpoint(checkpoint_dir, ck.every_n_epochs, ck.keep_last,
                                                ck.keep_every_n_epochs))
        if run_config is not None:
            callbacks.append(ConfigInCheckpoint(run_config))
    cb = config.callbacks
    if cb.early_stopping is not None:
        es = cb.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode,
                                       min_delta=es.min_delta, check_on_train_epoch_end=True))
    if cb.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if cb.rich_progress_bar and config.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar())
    if cb.parameter_histograms:
        callbacks.append(ParameterHistogramCallback(hub, cb.parameter_histograms, step_offset))
    return callbacks
