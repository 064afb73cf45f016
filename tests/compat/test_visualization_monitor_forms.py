"""Visualization and monitor arguments of cuvis.ai, really used: colormap, bins, subsample, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import AnomalyHeatmap, PCAVisualization, ScoreHistogram
from matplotlib import colormaps
from matplotlib.image import imread

from cuvis_graph.monitors import DummyMonitor, TensorBoardMonitor, WandBMonitor


def _gradient_scores() -> torch.Tensor:
    return torch.linspace(0.0, 1.0, 32 * 32).reshape(1, 32, 32, 1)


def _pixels_near(image: np.ndarray, colour: np.ndarray, tol: float = 0.02) -> int:
    return int((np.abs(image[..., :3] - colour[:3]).max(axis=-1) < tol).sum())


@pytest.mark.parametrize("form", [{"colormap": "viridis"}, {"cmap": "viridis"}])
def test_anomaly_heatmap_draws_with_the_colormap(form, tmp_path):
    monitor = DummyMonitor(output_dir=tmp_path)
    drawn = AnomalyHeatmap(log_frequency=10, vmin=0.0, vmax=1.0, **form)
    assert drawn.log_every_n_epochs == 10 and drawn.cmap == "viridis"
    default = AnomalyHeatmap(log_frequency=10)
    for name, leaf in (("viridis", drawn), ("inferno", default)):
        monitor.log_artifacts(leaf.visualize(parent_output=_gradient_scores(), batch={}, step=0, stage="val"),
                              step=0, stage=name)
    viridis = imread(next((tmp_path / "artifacts" / "viridis").glob("*.png")))
    inferno = imread(next((tmp_path / "artifacts" / "inferno").glob("*.png")))
    top, bottom = colormaps["viridis"](1.0), colormaps["viridis"](0.0)
    assert _pixels_near(viridis, np.array(top)) > 50 and _pixels_near(viridis, np.array(bottom)) > 50
    assert _pixels_near(inferno, np.array(top)) == 0


@pytest.mark.parametrize("form", [{"n_bins": 7}, {"bins": 7}])
def test_score_histogram_uses_the_bin_count(form):
    leaf = ScoreHistogram(log_frequency=10, **form)
    scores = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10, 1)
    fig = leaf.visualize(scores, {}, 3, "val")["histogram"]
    (steps,) = [p for p in fig.axes[0].patches if type(p).__name__ == "StepPatch"]
    values, edges = steps.get_data().values, steps.get_data().edges
    assert len(values) == 7 and edges[0] == 0.0


@pytest.mark.parametrize("form", [{"subsample": 40}, {"max_samples": 40}, {"max_points": 40}])
def test_pca_visualization_subsamples(form):
    leaf = PCAVisualization(log_frequency=5, **form)
    z = torch.randn(2, 10, 10, 3, generator=torch.Generator().manual_seed(0))
    fig = leaf.visualize(parent_output=z, batch={}, current_epoch=0, logger=None)["scatter"]
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert drawn == 40


def test_dummy_monitor_writes_png_and_json_never_pickle(tmp_path):
    monitor = DummyMonitor(output_dir=tmp_path / "out")
    assert monitor.output_dir == tmp_path / "out"
    monitor.setup(trainer=None)
    monitor.log_metrics({"loss": 0.5}, step=0, stage="train")
    fig = ScoreHistogram(bins=5).visualize(torch.rand(1, 4, 4), {}, 0, "val")["histogram"]
    monitor.log_artifacts({"hist": {"figure": fig, "type": "score_histogram", "statistics": {"mean": 0.5},
                                    "data": torch.tensor([1.0, 2.0])}}, step=5, stage="val")
    monitor.teardown()
    folder = tmp_path / "out" / "artifacts" / "val"
    assert (folder / "hist_step0005.png").is_file()
    assert json.loads((folder / "hist_step0005.json").read_text()) == {
        "type": "score_histogram", "statistics": {"mean": 0.5}, "data": [1.0, 2.0]}
    assert not list((tmp_path / "out").rglob("*.pkl"))
    assert json.loads((tmp_path / "out" / "metrics.jsonl").read_text())["metrics"] == {"loss": 0.5}


def test_wandb_and_tensorboard_arguments(tmp_path):
    wandb = WandBMonitor(project="p", entity="e", mode="disabled", config={"lr": 0.001}, notes="n")
    assert (wandb.project, wandb.entity, wandb.mode, wandb.config, wandb.notes) == ("p", "e", "disabled",
                                                                                    {"lr": 0.001}, "n")
    wandb.setup(trainer=None)
    wandb.teardown()
    tensorboard = TensorBoardMonitor(log_dir=tmp_path / "tb", flush_secs=30)
    assert tensorboard.root == tmp_path / "tb" and tensorboard.flush_secs == 30
    tensorboard.setup(trainer=None)
    tensorboard.log_metrics({"loss": 1.0}, step=0, stage="train")
    assert tensorboard.logger.experiment.flush_secs == 30  # the SummaryWriter got it
    tensorboard.teardown()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
