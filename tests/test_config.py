"""Configuration validation, optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cuvis_graph import ConfigError, OptimizerConfig, SchedulerConfig, TrainingConfig
from cuvis_graph.train.config import parse_config
from cuvis_graph.train.lightning import build_optimizer, build_scheduler


def config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(TrainingConfig, data)
    return str(info.value)


# -- validation ---------------------------------------------------------------------------
def test_unknown_field_names_its_path():
    msg = config_error({"trainer": {"max_epoch": 3}})
    assert msg.startswith("training.trainer.max_epoch:")
    assert "xtra" in msg  # pydantic: "Extra inputs are not permitted"


def test_unknown_top_level_and_nested_fields():
    assert config_error({"optimiser": {}}).startswith("training.optimiser:")
    assert "training.optimizer.learning_rate" in config_error({"optimizer": {"learning_rate": 0.1}})


@pytest.mark.parametrize("value", ["three", -1, 2.5])
def test_bad_epochs_name_their_path(value):
    msg = config_error({"trainer": {"max_epochs": value}})
    assert msg.startswith("training.trainer.max_epochs:")


def test_every_problem_is_listed():
    msg = config_error({"trainer": {"max_epochs": -1}, "optimizer": {"name": "rmsprop", "lr": 0}})
    lines = msg.splitlines()
    assert len(lines) == 3
    assert {ln.split(":")[0] for ln in lines} == {
        "training.trainer.max_epochs", "training.optimizer.name", "training.optimizer.lr"}


def test_warmup_longer_than_training_is_rejected():
    msg = config_error({"trainer": {"max_epochs": 3}, "scheduler": {"name": "cosine", "warmup_epochs": 5}})
    assert "warmup_epochs=5" in msg and "max_epochs=3" in msg


def test_valid_config_and_passthrough():
    cfg = parse_config(TrainingConfig, {"trainer": {"max_epochs": 0}, "optimizer": {"name": "sgd", "lr": 0.5}})
    assert cfg.trainer.max_epochs == 0 and cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.5
    assert parse_config(TrainingConfig, cfg) is cfg
    assert parse_config(TrainingConfig, None).trainer.max_epochs == 5  # defaults
    kwargs = cfg.trainer.trainer_kwargs()
    assert kwargs["max_epochs"] == 0 and "gradient_clip_val" not in kwargs  # None dropped


def test_assignment_is_validated():
    cfg = TrainingConfig()
    with pytest.raises(ValueError):
        cfg.trainer.max_epochs = -2


# -- optimizers ---------------------------------------------------------------------------
def params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.ones(2, 2))]


def test_adam():
    opt = build_optimizer(params(), OptimizerConfig(name="adam", lr=3e-3, betas=(0.8, 0.99), weight_decay=0.01))
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-3, (0.8, 0.99), 0.01)
    assert len(group["params"]) == 2


def test_adamw():
    opt = build_optimizer(params(), OptimizerConfig(name="adamw", lr=1e-4, betas=(0.5, 0.9), weight_decay=0.1))
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.5, 0.9), 0.1)


def test_sgd():
    opt = build_optimizer(params(), OptimizerConfig(name="sgd", lr=0.2, momentum=0.7, nesterov=True))
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.7, True, 0.0)


def test_sgd_step_matches_hand_update():
    """One plain SGD step: ``w <- w - lr * grad``."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer([w], OptimizerConfig(name="sgd", lr=0.25, momentum=0.0))
    (w * torch.tensor([4.0, 8.0])).sum().backward()
    opt.step()
    assert w.detach().tolist() == [0.0, -4.0]


# -- schedulers ----------------------------------------------------------------------------
def lrs(cfg: SchedulerConfig, lr: float, max_epochs: int, epochs: int) -> list[float]:
    """Learning rate in effect at epochs ``0..epochs-1`` (one scheduler step per epoch)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    spec = build_scheduler(opt, cfg, max_epochs)
    assert spec["interval"] == "epoch"
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        spec["scheduler"].step()
    return out


def test_cosine_with_warmup_hand_values():
    cfg = SchedulerConfig(name="cosine", warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.001)
    got = lrs(cfg, lr=0.1, max_epochs=10, epochs=12)
    # warmup: 0.1 * (0.1 + 0.9 * e / 2); then 0.001 + 0.099 * (1 + cos(pi * (e - 2) / 8)) / 2
    expected = {
        0: 0.01,
        1: 0.055,
        2: 0.1,
        4: 0.001 + 0.099 * (1 + math.sqrt(0.5)) / 2,
        6: 0.0505,
        8: 0.001 + 0.099 * (1 - math.sqrt(0.5)) / 2,
        10: 0.001,
        11: 0.001,  # stays at min_lr past max_epochs
    }
    for epoch, value in expected.items():
        assert got[epoch] == pytest.approx(value, rel=1e-12, abs=1e-15), epoch
    assert all(a >= b for a, b in zip(got[2:], got[3:], strict=False))  # monotone decay


def test_cosine_without_warmup_starts_at_lr():
    cfg = SchedulerConfig(name="cosine")
    got = lrs(cfg, lr=0.2, max_epochs=4, epochs=5)
    assert got == pytest.approx([0.2, 0.2 * (1 + math.sqrt(0.5)) / 2, 0.1, 0.2 * (1 - math.sqrt(0.5)) / 2, 0.0],
                                abs=1e-15)


@pytest.mark.parametrize(("step_size", "gamma"), [(3, 0.5), (1, 0.9), (10, 0.1)])
def test_step_schedule(step_size, gamma):
    got = lrs(SchedulerConfig(name="step", step_size=step_size, gamma=gamma), lr=0.4, max_epochs=20, epochs=12)
    for epoch, value in enumerate(got):
        assert value == pytest.approx(0.4 * gamma ** (epoch // step_size), rel=1e-12)


def test_plateau_schedule_is_monitored():
    cfg = SchedulerConfig(name="plateau", monitor="val/auroc", mode="max", factor=0.5, patience=2)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    spec = build_scheduler(opt, cfg, max_epochs=10)
    assert spec["monitor"] == "val/auroc"
    sched = spec["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for value in (0.5, 0.5, 0.5, 0.5):  # no improvement for > patience epochs
        sched.step(value)
    assert opt.param_groups[0]["lr"] == 0.5
