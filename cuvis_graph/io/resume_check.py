"""Whether an attempt may continue a run: the same pipeline as its ``config.yaml``, and
something left to train.

Both configurations are flattened to ``{"nodes.rx.params.eps": 1e-6, "training.optimizer.lr":
..., ...}`` and compared key by key, leaving out what an attempt may change
(:data:`ATTEMPT_KEYS`: its length, display, devices, the run folder). A key on one side
only is a change, except in a section recorded in full on both sides (the training config,
or every node parameter of a graph trained from Python): there it is a field a newer (or
older) cuvis-graph added at its default. A record written in an earlier layout is read in
today's (:func:`~cuvis_graph.io.run_config.recorded_pipeline`) first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.plain import plain
from cuvis_graph.io.run_config import CONFIG_FILE, recorded_pipeline

if TYPE_CHECKING:
    from cuvis_graph.io.runs import Run

__all__ = ["ResumeError", "ATTEMPT_KEYS", "check_continuation"]


class ResumeError(CuvisGraphError):
    """A resume request that cannot continue the run it names."""


#: training settings an attempt may change on resume (length, display, devices)
ATTEMPT_KEYS = re.compile(r"^training\.(trainer\.(max_epochs|enable_progress_bar|accelerator|devices|strategy|"
                          r"num_sanity_val_steps|log_every_n_steps)|stages\.\d+\.max_epochs|run\..*|"
                          r"callbacks\.rich_progress_bar)$")


def check_continuation(run: Run, training: Mapping[str, Any], pipeline: Mapping[str, Any]) -> None:
    """Refuse (:class:`ResumeError`) to continue ``run`` with another pipeline than the one in
    its ``config.yaml`` (naming the first differing keys), or a completed run with nothing
    left to train."""
    recorded_path = run.path / CONFIG_FILE
    if recorded_path.is_file():
        try:
            recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ResumeError(f"{recorded_path}: cannot be read ({str(exc).splitlines()[0]}); the run's pipeline "
                              "is unknown, so it cannot be continued; start a new run") from None
        new = yaml.safe_load(yaml.safe_dump(plain({"pipeline": pipeline, "training": training})))
        if isinstance(recorded, Mapping) and isinstance(recorded.get("pipeline"), Mapping):
            recorded = {**recorded, "pipeline": recorded_pipeline(recorded["pipeline"], new["pipeline"])}
        old, now = _comparable(recorded), _comparable(new)
        diffs = [f"{k}: {old.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in sorted(old.keys() | now.keys())
                 if old.get(k, _MISSING) != now.get(k, _MISSING)
                 and not _new_field(k, old, now, full_params="training" not in pipeline)]
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise ResumeError(f"run {run.path}: the pipeline differs from the one the run was trained with: "
                              f"{'; '.join(diffs[:3])}{more}; continue it with the run's own pipeline "
                              f"({run.path / 'pipeline.yaml'}), or train a new run "
                              f"({'without --resume' if run.resuming else 'into another --run-dir'})")
    if run.resuming and run.record.get("status") == "completed":
        stages = [s.get("name") for s in training.get("stages") or []]
        if stages:
            done = all(s in (run.record.get("completed_stages") or []) for s in stages)
            left, more = f"all stages ({', '.join(map(str, stages))}) are done", ""
        else:
            epochs, wanted = int(run.record.get("epochs") or 0), int(training["trainer"]["max_epochs"])
            done = epochs >= wanted
            left = f"{epochs} epoch(s) trained of training.trainer.max_epochs={wanted}"
            more = "raise training.trainer.max_epochs to train on, or "
        if done:
            raise ResumeError(f"run {run.path}: already completed, {left}; nothing to resume ({more}train "
                              "without --resume for a new run)")


_MISSING = object()


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"nodes.rx.params.eps": 1e-6, "training.optimizer.lr": ...}`` of what must match."""
    pipeline = {k: v for k, v in dict(config.get("pipeline") or {}).items() if k not in ("overrides", "training")}
    flat = _flatten(pipeline, "") | _flatten({"training": config.get("training") or {}}, "")
    return {k: v for k, v in flat.items() if not ATTEMPT_KEYS.match(k)}


def _containers(flat: Mapping[str, Any]) -> set[str]:
    return {key.rsplit(".", i)[0] for key in flat for i in range(1, key.count(".") + 1)} | set(flat)


def _new_field(key: str, old: Mapping[str, Any], now: Mapping[str, Any], full_params: bool) -> bool:
    """``key`` is on one side only, in a section recorded in full that both sides have: the
    training config, or (``full_params``: the record of a graph trained from Python, which
    has no ``training`` section) the node / leaf / monitor parameters ``nodes.<name>.params``:
    a field a newer (or older) cuvis-graph added at its default, not a change of the run. (A
    pipeline file's ``params`` hold only what the file wrote, so there a missing key is a change.)"""
    if (key in old) == (key in now) or "." not in key:
        return False
    parent = key.rsplit(".", 1)[0]
    full = parent.startswith("training.") or (full_params and _PARAMS.match(parent) is not None)
    return full and parent in _containers(old) and parent in _containers(now)


_PARAMS = re.compile(r"(nodes|leaves|monitors)\.[^.]+\.params(\.|$)")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value:
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}
