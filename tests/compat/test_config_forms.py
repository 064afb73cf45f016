"""TrainingConfig / TrainerConfig / OptimizerConfig as cuvis.ai documents them."""

from __future__ import annotations

import pytest
from cuvis_graph.nodes import OrthogonalityLoss, TrainablePCA
from omegaconf import DictConfig

from cuvis_graph import Graph, OptimizerConfig, TrainerConfig, TrainingConfig
from cuvis_graph.errors import ConfigError
from cuvis_graph.monitors.log_monitor import LoggingMonitor
from cuvis_graph.train.compat import plugin_monitors
from cuvis_graph.train.config import as_dict, from_dict_config, to_dict_config


def test_documented_fields_and_scheduler_names():
    config = TrainingConfig(
        seed=7, trainer=TrainerConfig(max_epochs=3, accelerator="cpu", devices=1, precision="32",
                                      enable_checkpointing=False),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-4, scheduler="reduce_on_plateau"),
        monitor_plugins=["loguru"])
    assert config.scheduler.name == "plateau" and config.optimizer.scheduler is None
    assert config.checkpoint.enabled is False
    assert "enable_checkpointing" not in config.trainer.trainer_kwargs()
    cosine = TrainingConfig(optimizer=OptimizerConfig(name="sgd", scheduler="cosine"))
    assert cosine.scheduler.name == "cosine"
    assert TrainerConfig(devices=None).devices == "auto"
    with pytest.raises(ValueError, match="both as optimizer.scheduler and as scheduler"):
        TrainingConfig(optimizer={"scheduler": "cosine"}, scheduler={"name": "step"})
    with pytest.raises(ValueError, match="did you mean 'wandb'"):
        TrainingConfig(monitor_plugins=["wandbb"])


def test_config_helpers_round_trip():
    original = TrainingConfig(seed=42, trainer=TrainerConfig(max_epochs=15, accelerator="cpu", devices=2),
                              optimizer=OptimizerConfig(name="adam", lr=0.003, weight_decay=0.01))
    plain = as_dict(original)
    assert plain["trainer"]["max_epochs"] == 15 and plain["optimizer"]["lr"] == 0.003
    dict_config = to_dict_config(original)
    assert isinstance(dict_config, DictConfig) and dict_config.seed == 42 and dict_config.trainer.devices == 2
    assert from_dict_config(dict_config) == original
    assert from_dict_config(plain) == original
    with pytest.raises(ConfigError, match="training.trainer.max_epoch"):
        from_dict_config({"trainer": {"max_epoch": 3}})


def test_monitor_plugins_add_monitors_for_the_run(datamodule, tmp_path, caplog):
    assert [type(m).__name__ for m in plugin_monitors(["loguru", "dummy"], [])] == ["LoggingMonitor"]
    assert plugin_monitors(["loguru"], [LoggingMonitor()]) == []
    graph = Graph("plugins")
    pca = TrainablePCA(n_components=2, trainable=True)
    graph.add_node(pca)
    graph.add_leaf_node(OrthogonalityLoss(weight=1.0), parent=pca)
    config = TrainingConfig(trainer=TrainerConfig(max_epochs=1, enable_progress_bar=False),
                            monitor_plugins=["loguru"])
    with caplog.at_level("INFO", logger="cuvis_graph.metrics"):
        graph.train(datamodule=datamodule, training_config=config, run_dir=False)
    assert any("train/loss" in r.getMessage() for r in caplog.records)
    assert graph.monitors == []  # added for the run only


def test_config_and_training_config_are_one_argument(datamodule):
    with pytest.raises(TypeError, match="'config' and 'training_config'"):
        Graph("g").train(datamodule, TrainingConfig(), training_config=TrainingConfig())
