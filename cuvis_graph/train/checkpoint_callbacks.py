"""Which checkpoints a run keeps: the last epoch, the best, periodic snapshots, and the config.

* :class:`RunCheckpoint`: Lightning's ``ModelCheckpoint`` whose recorded paths follow the run
  folder: a run moved (or copied to another machine) and resumed keeps its best score, its
  top-k and its last path (Lightning alone forgets them when the folder's path changed, so the
  first epoch after the resume became "best" whatever its score).
* :class:`LastCheckpoint`: ``last.ckpt`` is rewritten at the end of *every* completed
  epoch, whatever the monitor says (Lightning 2.6's ``save_last`` writes it only when a
  top-k checkpoint was saved in the same step, so with a monitor it lagged behind the
  training after the last improvement, and ``resume="auto"`` repeated those epochs).
* :class:`SnapshotCheckpoint`: every ``every_n_epochs`` epochs a snapshot
  ``snapshots/epoch=NNN.ckpt`` (``NNN`` the 0-based epoch); the newest ``keep_last`` are kept,
  and every snapshot whose epoch count ``NNN + 1`` is a multiple of ``keep_every_n_epochs`` is
  kept for good. Stateless: the folder itself is the state, so a resumed run rotates the
  files of the killed one by the same rule.
* :class:`ConfigInCheckpoint`: every checkpoint carries the run's resolved ``config.yaml``
  (pipeline and training config) under ``"cuvis_graph_config"``, so a lone ``.ckpt`` says what
  produced it. Plain YAML types only, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RunCheckpoint", "LastCheckpoint", "SnapshotCheckpoint", "ConfigInCheckpoint", "snapshots_to_keep", "CONFIG_KEY"]

#: Key of the run's resolved config inside every checkpoint.
CONFIG_KEY = "cuvis_graph_config"

_SNAPSHOT = re.compile(r"epoch=(\d+)\.ckpt")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that reads a checkpoint's paths relative to the folder it was written in."""

    @property
    def state_key(self) -> str:  # Lightning's own key, so checkpoints of either class restore
        return "ModelCheckpoint" + repr({"monitor": self.monitor, "mode": self.mode,
                                         "every_n_train_steps": self._every_n_train_steps,
                                         "every_n_epochs": self._every_n_epochs,
                                         "train_time_interval": self._train_time_interval})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(relocated(state_dict, self.dirpath))


def relocated(state: dict[str, Any], dirpath: str | None) -> dict[str, Any]:
    """``state`` of a ``ModelCheckpoint`` with the paths under its recorded ``dirpath`` moved to
    ``dirpath`` (the same file names in the run's current checkpoint folder)."""
    old = state.get("dirpath")
    if not old or not dirpath or old == dirpath:
        return state

    def move(path: Any) -> Any:
        if isinstance(path, str) and path and Path(path).parent == Path(old):
            return str(Path(dirpath) / Path(path).name)
        return path

    moved = {k: move(v) for k, v in state.items() if k != "best_k_models"}
    moved["best_k_models"] = {move(k): v for k, v in (state.get("best_k_models") or {}).items()}
    moved["dirpath"] = dirpath
    return moved


class LastCheckpoint(RunCheckpoint):
    """``<dir>/last.ckpt`` after every completed training epoch (atomic, through the trainer's IO)."""

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False,
                         auto_insert_metric_name=False)

    @property
    def state_key(self) -> str:  # distinct from the best-checkpoint callback's key in a checkpoint
        return "LastCheckpoint"


def snapshots_to_keep(epochs: list[int], keep_last: int | None, keep_every_n_epochs: int | None) -> set[int]:
    """The 0-based snapshot epochs to keep: the newest ``keep_last`` and every epoch ``e`` with
    ``(e + 1) % keep_every_n_epochs == 0``. ``keep_last=None`` keeps all."""
    ordered = sorted(set(epochs))
    keep = set(ordered if keep_last is None else ordered[len(ordered) - keep_last:] if keep_last > 0 else [])
    if keep_every_n_epochs:
        keep |= {e for e in ordered if (e + 1) % keep_every_n_epochs == 0}
    return keep


class SnapshotCheckpoint(pl.Callback):
    """Periodic snapshots in ``<dir>/snapshots/``, rotated by :func:`snapshots_to_keep`."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, keep_last: int | None = None,
                 keep_every_n_epochs: int | None = None) -> None:
        self.dirpath = Path(dirpath) / "snapshots"
        self.every_n_epochs = int(every_n_epochs)
        self.keep_last = keep_last
        self.keep_every_n_epochs = keep_every_n_epochs

    @property
    def state_key(self) -> str:
        return "SnapshotCheckpoint"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        trainer.save_checkpoint(self.dirpath / f"epoch={trainer.current_epoch:03d}.ckpt")
        if trainer.is_global_zero:
            self.rotate()

    def rotate(self) -> None:
        """Delete the snapshots the rule does not keep."""
        files = {int(m.group(1)): p for p in self.dirpath.glob("epoch=*.ckpt") if (m := _SNAPSHOT.fullmatch(p.name))}
        keep = snapshots_to_keep(list(files), self.keep_last, self.keep_every_n_epochs)
        for epoch, path in files.items():
            if epoch not in keep:
                path.unlink(missing_ok=True)


class ConfigInCheckpoint(pl.Callback):
    """Puts the run's ``config.yaml`` (read once) into every checkpoint under :data:`CONFIG_KEY`."""

    def __init__(self, config_file: str | Path) -> None:
        self.config_file = Path(config_file)
        self._config: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "ConfigInCheckpoint"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._config is None and self.config_file.is_file():
            self._config = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        if self._config is not None:
            checkpoint[CONFIG_KEY] = self._config
