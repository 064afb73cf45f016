"""Which checkpoints a run keeps: last.ckpt is the last epoch, snapshots rotate by rule, config inside."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cuvis_graph import Graph, TrainingConfig, nodes
from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.train.checkpoint_callbacks import CONFIG_KEY


def selector_rx_graph() -> Graph:
    graph = Graph("ckpt_rules")
    sel = graph.add_node(nodes.SoftChannelSelector(n_select=3, gumbel=True), name="sel")
    rx = graph.add_node(nodes.RXGlobal(trainable_stats=True), parent=sel, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(), parent=head, name="bce")
    return graph


def data() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=10, width=10, n_bands=10, batch_size=2)


def train(tmp_path: Path, epochs: int, checkpoint: dict | None = None, **optimizer) -> Path:
    config = TrainingConfig.model_validate({
        "seed": 1, "trainer": {"max_epochs": epochs, "enable_progress_bar": False, "accelerator": "cpu"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, **optimizer},
        "scheduler": {"name": "cosine", "warmup_epochs": 1}, "checkpoint": checkpoint or {}})
    return selector_rx_graph().train(data(), config, runs_root=tmp_path / "runs").run_dir


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def test_last_ckpt_is_the_last_epoch_even_when_val_loss_got_worse(tmp_path: Path) -> None:
    """The issue's reproduction: monitor 'auto' (val/loss), 3 epochs, 2 steps each."""
    run_dir = train(tmp_path, epochs=3)
    record = json.loads((run_dir / "run.json").read_text())
    last, best = load(run_dir / "checkpoints" / "last.ckpt"), load(run_dir / "checkpoints" / "best.ckpt")
    assert record["global_step"] == 6
    assert last["global_step"] == record["global_step"] and last["epoch"] == 2
    assert best["global_step"] <= last["global_step"]


def test_every_checkpoint_carries_the_resolved_config(tmp_path: Path) -> None:
    run_dir = train(tmp_path, epochs=2, checkpoint={"save_top_k": -1})
    files = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {f.name for f in files} >= {"last.ckpt", "epoch=000.ckpt", "epoch=001.ckpt"}  # -1 keeps every epoch
    recorded = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    for f in files:
        config = load(f)[CONFIG_KEY]
        assert config["pipeline"] == recorded["pipeline"] and config["training"] == recorded["training"]
        assert config["training"]["trainer"]["max_epochs"] == 2


def expected_snapshots(epochs: int, every: int, keep_last: int, keep_every: int) -> set[int]:
    """Hand-derived rule: snapshots at 0-based e with (e+1) % every == 0; keep the newest
    ``keep_last`` and those with (e+1) % keep_every == 0."""
    taken = [e for e in range(epochs) if (e + 1) % every == 0]
    return set(taken[-keep_last:]) | {e for e in taken if (e + 1) % keep_every == 0}


@pytest.mark.parametrize(("epochs", "every", "keep_last", "keep_every", "by_hand"), [
    (12, 1, 2, 5, {4, 9, 10, 11}),
    (9, 2, 2, 4, {3, 5, 7}),
])
def test_snapshot_files_follow_keep_last_and_keep_every(tmp_path: Path, epochs: int, every: int, keep_last: int,
                                                         keep_every: int, by_hand: set[int]) -> None:
    assert expected_snapshots(epochs, every, keep_last, keep_every) == by_hand
    run_dir = train(tmp_path, epochs=epochs, checkpoint={"every_n_epochs": every, "keep_last": keep_last,
                                                         "keep_every_n_epochs": keep_every}, lr=0.001, momentum=0.0)
    found = {int(re.fullmatch(r"epoch=(\d+)\.ckpt", p.name).group(1))
             for p in (run_dir / "checkpoints" / "snapshots").iterdir()}
    assert found == by_hand
    for epoch in found:
        assert load(run_dir / "checkpoints" / "snapshots" / f"epoch={epoch:03d}.ckpt")["epoch"] == epoch


def test_a_moved_run_resumes_knowing_its_best_checkpoint(tmp_path: Path) -> None:
    """A run folder moved (or copied to another machine) and resumed keeps the best epoch of its
    earlier attempt: here val/loss rises from the statistical start, so the best is the first
    epoch, and a resume that forgot the earlier best would call a later, worse epoch the best."""
    import shutil
    import warnings

    def config(epochs: int) -> TrainingConfig:
        return TrainingConfig.model_validate({
            "seed": 1, "trainer": {"max_epochs": epochs, "enable_progress_bar": False, "accelerator": "cpu"},
            "optimizer": {"name": "sgd", "lr": 1e-3}, "checkpoint": {"monitor": "val/loss", "mode": "min"}})

    run_dir = selector_rx_graph().train(data(), config(2), runs_root=tmp_path / "runs").run_dir
    moved = tmp_path / "elsewhere" / run_dir.name
    moved.parent.mkdir()
    shutil.move(run_dir, moved)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selector_rx_graph().train(data(), config(4), resume=moved)
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    losses = {j["metrics"]["epoch"]: j["metrics"]["val/loss"] for j in map(json.loads, (moved / "metrics.jsonl")
              .read_text().splitlines()) if j["stage"] == "val" and j["step"] > 0}
    assert sorted(losses) == [0, 1, 2, 3] and max(losses.values()) > min(losses.values())
    best_epoch = min(losses, key=losses.get)
    assert best_epoch < 2  # the case under test: the best is in the attempt before the move
    best = load(moved / "checkpoints" / "best.ckpt")
    assert best["epoch"] == best_epoch
    record = json.loads((moved / "run.json").read_text())["best"]
    assert record["checkpoint"] == "checkpoints/best.ckpt" and record["score"] == pytest.approx(losses[best_epoch])
    state = next(v for k, v in load(moved / "checkpoints" / "last.ckpt")["callbacks"].items()
                 if k.startswith("ModelCheckpoint"))
    assert all(Path(p).parent == moved / "checkpoints" for p in state["best_k_models"])
