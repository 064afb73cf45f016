"""Figures a user can read: histogram axes and legend, predict's overlay.png, false colour,
TensorBoard step axis, no W&B noise. Checked on the matplotlib objects and the PNGs read back."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from cuvis_graph.nodes import AnomalyHeatmap, MinMaxNormalizer, RXGlobal, ScoreHistogram  # noqa: E402

from cuvis_graph import Graph, GraphDataModule  # noqa: E402
from cuvis_graph.io.prediction import predict_files  # noqa: E402
from cuvis_graph.io.render import DetectionFigure  # noqa: E402

BINS = 100


class Parent:
    name = "rx"


def heavy_tailed(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RX-like scores ``[1, 60, 60]`` (chi-square bulk, a few huge outliers) and labels."""
    rng = np.random.default_rng(seed)
    scores = rng.chisquare(20, size=(1, 60, 60))
    labels = np.zeros_like(scores, dtype=bool)
    labels[0, :3, :10] = True
    scores[labels] = rng.uniform(60, 400, size=int(labels.sum()))
    scores[0, 30, 30] = 5e4
    return scores, labels


def histogram(scores: np.ndarray, labels: np.ndarray | None, **kwargs) -> plt.Figure:
    batch = {} if labels is None else {"mask": torch.from_numpy(labels)}
    return ScoreHistogram(bins=BINS, **kwargs).visualize(torch.from_numpy(scores), batch, Parent())["histogram"]


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_log_histogram_y_range_comes_from_the_bars() -> None:
    scores, labels = heavy_tailed()
    ax = histogram(scores, labels, log_scale=True).axes[0]
    values = scores.reshape(-1)
    width = np.ptp(values) / BINS
    tallest = 0.0
    for group in (values[~labels.reshape(-1)], values[labels.reshape(-1)]):
        counts, _ = np.histogram(group, bins=BINS, range=(values.min(), values.max()))
        tallest = max(tallest, counts.max() / (group.size * width))
    one_count = 1.0 / ((~labels).sum() * width)  # one pixel of the largest group
    bottom, top = ax.get_ylim()
    assert ax.get_yscale() == "log"
    assert 0.4 * one_count <= bottom <= one_count  # single pixels visible, no 1e-281 floor
    assert tallest <= top <= 3 * tallest


@pytest.mark.parametrize("log_scale", [False, True])
def test_legend_sits_outside_the_data(log_scale: bool) -> None:
    scores, labels = heavy_tailed()
    fig = histogram(scores, labels, log_scale=log_scale)
    fig.canvas.draw()
    ax = fig.axes[0]
    legends = fig.legends + ([ax.get_legend()] if ax.get_legend() else [])
    assert len(legends) == 1
    assert not overlaps(legends[0].get_window_extent(), ax.get_window_extent())
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert any("threshold" in t for t in texts) and any("anomalous" in t for t in texts)


def test_linear_histogram_clips_the_tail_and_says_so() -> None:
    scores, _ = heavy_tailed()
    values = scores.reshape(-1)
    ax = histogram(scores, None).axes[0]
    cut = np.quantile(values, 0.995)
    threshold = values.mean() + 3 * values.std()  # the outlier drags the 3-sigma line past the cut
    assert ax.get_xlim()[1] == pytest.approx(cut)
    label = ax.get_xlabel()
    assert "q99.5" in label and f"{int((values > cut).sum())} of {values.size}" in label
    assert f"threshold {threshold:.3g} is off the axis" in label
    counts, _ = np.histogram(values, bins=BINS, range=(values.min(), cut))
    assert (counts > 0).sum() > BINS / 4  # the bulk spreads over the bins instead of one spike
    unclipped = histogram(scores, None, clip_quantile=None).axes[0]
    assert unclipped.get_xlim()[1] == pytest.approx(values.max()) and "clipped" not in unclipped.get_xlabel()


def test_heatmap_false_colour_without_wavelengths_uses_visible_bands_of_an_aviris_grid() -> None:
    rng = np.random.default_rng(0)
    cube = rng.uniform(0, 1, size=(1, 12, 12, 204)).astype(np.float32)
    fig = AnomalyHeatmap().visualize(torch.from_numpy(cube[..., :1]), {"cube": torch.from_numpy(cube)},
                                     Parent())["image_0"]
    grid = np.linspace(365, 2500, 204)
    expected = [int(np.argmin(np.abs(grid - nm))) for nm in (640, 550, 460)]
    assert fig.axes[1].get_title() == "overlay on RGB (bands " + ", ".join(map(str, expected)) + ")"


@pytest.fixture(scope="module")
def rx_graph() -> Graph:
    rng = np.random.default_rng(1)
    cube = (rng.normal(size=(1, 20, 30, 8)) * 10 + 100).astype(np.float32)
    graph = Graph("rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    graph.train(GraphDataModule.from_arrays(cube, batch_size=1),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}}, run_dir=False)
    return graph


def test_predict_overlay_is_a_titled_three_panel_figure(rx_graph: Graph, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(3):
        cube = (rng.normal(size=(20, 30, 8)) * 10 + 100).astype(np.float32)
        cube[5, 7] += 200  # one clear anomaly
        np.save(tmp_path / f"scene{i}.npy", cube)
    figures_before = plt.get_fignums()
    predict_files(rx_graph, [tmp_path], tmp_path / "out", progress=False)
    assert plt.get_fignums() == figures_before  # no pyplot figures left behind
    for i in range(3):
        folder = tmp_path / "out" / f"scene{i}"
        png = matplotlib.image.imread(folder / "overlay.png")
        assert png.shape[1] >= 900
        red = (png[..., 0] > 0.8) & (png[..., 1] < 0.4) & (png[..., 2] < 0.4)
        assert red.sum() > 0  # detections drawn in red
    scores, mask = np.load(folder / "scores.npy"), np.load(folder / "mask.npy")

    drawing = DetectionFigure()
    title = "scene2.npy: score > 1.0; 3 pixels"
    fig = drawing.draw(scores, np.zeros(scores.shape + (3,)), mask, title)
    assert drawing.draw(scores, np.zeros(scores.shape + (3,)), mask, title) is fig  # one reused figure
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 3 and len(fig.axes) == 4  # three panels and a colour bar
    colorbar = images[0].get_images()[0].colorbar
    assert colorbar is not None and colorbar.ax in fig.axes
    assert fig._suptitle.get_text() == title


def test_predict_title_names_file_threshold_and_count(rx_graph: Graph, tmp_path: Path, monkeypatch) -> None:
    cube = (np.random.default_rng(3).normal(size=(20, 30, 8)) * 10 + 100).astype(np.float32)
    np.save(tmp_path / "scene.npy", cube)
    titles = []
    original = DetectionFigure.draw

    def record(self, scores, rgb, mask, title, rgb_label=""):
        titles.append(title)
        return original(self, scores, rgb, mask, title, rgb_label)

    monkeypatch.setattr(DetectionFigure, "draw", record)
    predict_files(rx_graph, [tmp_path / "scene.npy"], tmp_path / "out", progress=False)
    scores = np.load(tmp_path / "out" / "scene" / "scores.npy")
    threshold = np.quantile(scores, 0.99)
    detected = int((scores > threshold).sum())
    assert titles == [f"scene.npy: score > {threshold:.4g} (q0.99 of image); {detected} of {scores.size} "
                      f"pixels detected ({100 * detected / scores.size:.2f} %)"]


def test_tensorboard_images_share_the_scalars_step_axis(tmp_path: Path) -> None:
    from runs_helpers import build_graph, config, datamodule
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cuvis_graph import VisualizationNode
    from cuvis_graph.monitors import TensorBoardMonitor

    class ScoreImage(VisualizationNode):
        def visualize(self, output, batch, parent):
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.imshow(output[0, ..., 0].numpy())
            return {"scores": fig}

    graph = build_graph()
    graph.add_leaf_node(ScoreImage(log_frequency=1), parent="rx", name="score_image")
    graph.register_monitor(TensorBoardMonitor())
    graph.train(datamodule(), config(3), run_dir=tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    val_steps = [e.step for e in events.Scalars("val/det/auroc")]  # initial validation, then 3 epochs
    assert [e.step for e in events.Images("initial/score_image/scores")] == val_steps[:1]
    assert [e.step for e in events.Images("val/score_image/scores")] == val_steps[1:]
    assert val_steps[1:] != [0, 1, 2]  # global steps, not epochs


def test_wandb_run_prints_no_anonymous_setting_warning(tmp_path: Path, monkeypatch, capfd) -> None:
    pytest.importorskip("wandb")
    from cuvis_graph.monitors import WandBMonitor

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monitor = WandBMonitor(save_dir=tmp_path / "wb")
    monitor.log_metrics({"train/loss": 1.0}, 1, "train")
    monitor.close()
    captured = capfd.readouterr()
    assert "anonymous" not in captured.err + captured.out
