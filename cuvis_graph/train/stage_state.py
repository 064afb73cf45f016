"""``stage_state.json``: which training stages of a run are done, and where each ended.

::

    {
      "stages": ["statistics", "selector", "finetune"],     # declared order
      "completed_stages": ["statistics"],
      "current_stage": "selector",                          # null when none is running
      "statistics": {"passes": 2, "levels": [["norm"], ["rx"]], "batches": 16},
      "stage_info": {
        "statistics": {"status": "completed", "start_step": 0, "start_epoch": 0,
                       "steps": 0, "epochs": 0, "checkpoint": "checkpoints/statistics/final.ckpt",
                       "best": null, "metrics": {...}, "losses": {}, "trainable": [...], "refit": [...]},
        "selector": {"status": "running", "start_step": 0, "start_epoch": 0,
                     "last_checkpoint_step": 40, ...}      # the stage's newest last.ckpt
      }
    }

Steps and epochs continue across stages: stage ``k`` starts at the summed steps/epochs of
the stages before it, so ``metrics.jsonl`` and figures keep one axis. Written atomically
at every transition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cuvis_graph.errors import ConfigError
from cuvis_graph.io.atomic import atomic_write_json

__all__ = ["StageState", "STAGE_STATE_FILE"]

STAGE_STATE_FILE = "stage_state.json"


class StageState:
    """Progress of the stages of one run (in memory only when ``run_dir`` is ``None``)."""

    def __init__(self, run_dir: str | Path | None, stages: Sequence[str]) -> None:
        self.path = Path(run_dir) / STAGE_STATE_FILE if run_dir is not None else None
        self.data: dict[str, Any] = {"stages": list(stages), "completed_stages": [], "current_stage": None,
                                     "statistics": None, "stage_info": {}}

    @classmethod
    def load(cls, run_dir: str | Path, stages: Sequence[str]) -> StageState:
        """The saved state of ``run_dir`` (a fresh one when there is none); the declared stages
        must be the ones the run was started with."""
        state = cls(run_dir, stages)
        if state.path is not None and state.path.is_file():
            saved = json.loads(state.path.read_text(encoding="utf-8"))
            if list(saved.get("stages", [])) != list(stages):
                raise ConfigError(
                    f"training.stages: run {run_dir} was trained with stages {saved.get('stages')}, the "
                    f"configuration declares {list(stages)}; resume with the same stages or start a new run")
            state.data = saved
        return state

    # -- queries ------------------------------------------------------------------------
    @property
    def completed(self) -> list[str]:
        return list(self.data["completed_stages"])

    @property
    def current(self) -> str | None:
        return self.data["current_stage"]

    def info(self, name: str) -> dict[str, Any]:
        return self.data["stage_info"].setdefault(name, {})

    def offsets(self, excluding: str | None = None) -> tuple[int, int]:
        """``(steps, epochs)`` of all completed stages but ``excluding``: where the next stage
        starts (a completed stage trained on, e.g. to more epochs, counts its own from its checkpoint)."""
        done = [self.data["stage_info"][n] for n in self.completed if n != excluding]
        return sum(int(i.get("steps", 0)) for i in done), sum(int(i.get("epochs", 0)) for i in done)

    def last_final_checkpoint(self) -> str | None:
        """Run-relative path of the newest completed stage's final checkpoint."""
        for name in reversed(self.completed):
            ckpt = self.data["stage_info"][name].get("checkpoint")
            if ckpt:
                return ckpt
        return None

    # -- transitions --------------------------------------------------------------------
    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)

    def record_statistics(self, passes: int, levels: list[list[str]], batches: int) -> None:
        self.data["statistics"] = {"passes": passes, "levels": levels, "batches": batches}
        self.save()

    def start(self, name: str, start_step: int, start_epoch: int, **details: Any) -> None:
        self.data["current_stage"] = name
        info = self.info(name)
        info.update(status="running", start_step=start_step, start_epoch=start_epoch, **details)
        self.save()

    def complete(self, name: str, *, steps: int, epochs: int, checkpoint: str | None,
                 best: Mapping[str, Any] | None, metrics: Mapping[str, float]) -> None:
        info = self.info(name)
        info.update(status="completed", steps=int(steps), epochs=int(epochs), checkpoint=checkpoint,
                    best=dict(best) if best else None,
                    metrics={k: (v if v == v and abs(v) != float("inf") else None) for k, v in metrics.items()})
        if name not in self.data["completed_stages"]:
            self.data["completed_stages"].append(name)
        self.data["current_stage"] = None
        self.save()
