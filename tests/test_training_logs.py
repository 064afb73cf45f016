"""What training logs: per-step losses, training-data metrics, the epoch lines of
logs/training.log, hyperparameters for the loggers, and warm-up by steps."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
)
from lightning.pytorch import Callback
from sklearn.metrics import f1_score

from cuvis_graph import ConfigError, Graph, TrainingConfig
from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.monitors import TensorBoardMonitor, WandBMonitor
from cuvis_graph.train.config import parse_config


def _graph() -> Graph:
    graph = Graph("logs")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(trainable_stats=True), parent=norm, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head, name="detection")
    return graph


def _data(**kw) -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(**{"n_train": 4, "n_val": 2, "n_test": 0, "height": 16, "width": 16,
                                     "batch_size": 1, **kw})


def _config(**kw) -> dict:
    trainer = {"max_epochs": 2, "enable_progress_bar": False, **kw.pop("trainer", {})}
    return {"seed": 0, "trainer": trainer, "optimizer": {"lr": 0.05}, **kw}


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("every", [1, 2])
def test_step_losses_every_n_steps_average_to_the_epoch_loss(tmp_path, every: int) -> None:
    result = _graph().train(_data(), _config(trainer={"log_every_n_steps": every}), run_dir=tmp_path / "run")
    lines = _lines(result.run_dir)
    steps = [line for line in lines if "train/loss_step" in line["metrics"]]
    assert [line["step"] for line in steps] == list(range(every - 1, 8, every))  # 4 batches x 2 epochs
    assert all(line["metrics"]["train/loss/bce_step"] == line["metrics"]["train/loss_step"] for line in steps)
    if every == 1:  # equal batch sizes: the epoch mean is the mean of the epoch's steps
        epochs = [line for line in lines if "train/loss" in line["metrics"]]
        for epoch, line in enumerate(epochs):
            values = [s["metrics"]["train/loss_step"] for s in steps if s["metrics"]["epoch"] == epoch]
            assert line["metrics"]["train/loss"] == pytest.approx(np.mean(values), rel=1e-6)


def test_train_metrics_are_off_by_default_and_match_sklearn_when_on(tmp_path) -> None:
    plain = _graph().train(_data(), _config(trainer={"max_epochs": 1}), run_dir=tmp_path / "plain")
    assert not any(k.startswith("train/detection") for line in _lines(plain.run_dir) for k in line["metrics"])
    # a learning rate too small to move the weights: the training steps score what predict() scores
    graph, dm = _graph(), _data()
    config = {**_config(trainer={"max_epochs": 1}, train_metrics=True), "optimizer": {"lr": 1e-12}}
    result = graph.train(dm, config, run_dir=tmp_path / "on")
    assert TrainingConfig().train_metrics is False
    logits = graph.predict(torch.stack(dm.train_set.cubes))["head"].numpy().ravel()
    labels = torch.stack(dm.train_set.masks).numpy().ravel() > 0
    assert result.metrics["train/detection/f1"] == pytest.approx(f1_score(labels, logits > 0), abs=1e-6)


def test_training_log_has_one_line_per_epoch_with_losses_and_metrics(tmp_path) -> None:
    result = _graph().train(_data(), _config(trainer={"max_epochs": 3}), run_dir=tmp_path / "run")
    text = (result.run_dir / "logs" / "training.log").read_text()
    epoch_lines = re.findall(r"epoch (\d+)/3 \((\d+) steps\): (.*)", text)
    assert [(int(e), int(s)) for e, s, _ in epoch_lines] == [(1, 4), (2, 8), (3, 12)]
    logged: dict[int, dict] = {}  # epoch-end values of metrics.jsonl by step (0-based: steps done - 1)
    for line in _lines(result.run_dir):
        if line["stage"] in ("train", "val") and "train/loss_step" not in line["metrics"]:
            logged.setdefault(line["step"], {}).update(line["metrics"])
    for _, step, values in epoch_lines:
        pairs = dict(item.split("=") for item in values.split())
        for key in ("train/loss", "val/loss", "val/detection/f1"):
            assert float(pairs[key]) == pytest.approx(logged[int(step) - 1][key], rel=1e-5)


def test_hyperparameters_reach_tensorboard_and_wandb(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    graph = _graph()
    tensorboard = graph.register_monitor(TensorBoardMonitor())
    wandb = graph.register_monitor(WandBMonitor(project="cuvis-graph-test"))
    seen = {}
    original = type(wandb).log_hyperparams

    def spy(self, params):  # what W&B is given, read back from its run config
        original(self, params)
        seen.update(dict(self.logger.experiment.config))

    monkeypatch.setattr(type(wandb), "log_hyperparams", spy)
    result = graph.train(_data(), _config(trainer={"max_epochs": 1}), run_dir=tmp_path / "run")
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    hparams = yaml.safe_load((tensorboard.root / "hparams.yaml").read_text())
    assert hparams["training"] == config["training"] and hparams["pipeline"] == config["pipeline"]
    assert hparams["training"]["optimizer"]["lr"] == 0.05
    assert seen["training"] == config["training"] and seen["pipeline"]["name"] == "logs"


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_steps_follow_the_hand_computed_schedule(tmp_path) -> None:
    lr, warm, start, floor, total = 0.01, 3, 0.1, 0.001, 8  # 4 batches x 2 epochs
    expected = [lr * (start + (1 - start) * s / warm) if s < warm else
                floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
                for s in range(total)]
    rates = _LearningRates()
    config = {**_config(), "optimizer": {"lr": lr},
              "scheduler": {"name": "cosine", "warmup_steps": warm, "warmup_start_factor": start, "min_lr": floor}}
    _graph().train(_data(), config, callbacks=[rates], run_dir=False)
    assert rates.rates == pytest.approx(expected, rel=1e-12)


def test_warmup_steps_and_epochs_are_exclusive_and_must_fit() -> None:
    with pytest.raises(ConfigError, match="either warmup_epochs or warmup_steps, not both"):
        parse_config(TrainingConfig, {"scheduler": {"name": "cosine", "warmup_epochs": 1, "warmup_steps": 5}})
    config = {**_config(), "scheduler": {"name": "cosine", "warmup_steps": 8}}
    with pytest.raises(ConfigError, match="warmup_steps=8 must be below the number of optimizer steps"):
        _graph().train(_data(), config, run_dir=False)
