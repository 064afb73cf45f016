"""Visualization leaves: PNGs through the file monitor in short training runs, frequency,
failure isolation, and the numbers the figures show."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyHeatmap,
    MinMaxNormalizer,
    PCAVisualization,
    RXGlobal,
    RXLogitHead,
    ScoreHistogram,
    SelectorChannelMaskPlot,
    SelectorStabilityPlot,
    SelectorTemperaturePlot,
)
from cuvis_graph.nodes.visualizations._common import default_threshold
from cuvis_graph.nodes.visualizations._selector import jaccard
from cuvis_graph.nodes.visualizations.pca import subsample_pixels
from torch import nn

from cuvis_graph import CompileError, Graph
from cuvis_graph.core.leaves import VisualizationNode
from cuvis_graph.core.node import Node, PortSpec
from cuvis_graph.core.registry import registered
from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.io.render import rgb_band_indices
from cuvis_graph.monitors import FileMonitor

N_BANDS = 12
T_INIT, T_DECAY, T_MIN = 2.0, 0.5, 0.3


def temperature_at(epoch: int) -> float:
    return max(T_MIN, T_INIT * T_DECAY**epoch)


class StandInSelector(Node):
    """Minimal soft channel selector: ``y = x * w``, ``w = k * softmax(logits / T)``.

    Stands in for ``SoftChannelSelector``: the selector plots only read ``temperature``,
    ``channel_weights()``, ``selected_channels()``, ``n_select`` and ``hard``.
    """

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"))}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "C"))}

    def __init__(self, n_channels: int = N_BANDS, n_select: int = 4, name: str | None = None) -> None:
        super().__init__(name=name)
        gen = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.randn(n_channels, generator=gen) * 0.1)
        self.n_select, self.hard = n_select, True
        self.temperature_init, self.temperature_decay, self.temperature_min = T_INIT, T_DECAY, T_MIN
        self.temperature = T_INIT

    def channel_weights(self) -> torch.Tensor:
        return self.n_select * torch.softmax(self.logits / self.temperature, dim=0)

    def selected_channels(self) -> torch.Tensor:
        return torch.topk(self.channel_weights(), self.n_select).indices.sort().values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights()


class Anneal(pl.Callback):
    """Sets the stand-in selector's temperature to ``T(epoch)`` at each training epoch start."""

    def __init__(self, selector: StandInSelector) -> None:
        self.selector = selector

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.selector.temperature = temperature_at(trainer.current_epoch)


class Broken(VisualizationNode):
    """Raises on every call; counts its calls."""

    def __init__(self, log_frequency: int = 1, name: str | None = None) -> None:
        super().__init__(log_frequency=log_frequency, name=name)
        self.calls = 0

    def visualize(self, output, batch, parent):
        self.calls += 1
        raise RuntimeError("drawing failed on purpose")


def _datamodule() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16, n_bands=N_BANDS, batch_size=2)


def _config(epochs: int) -> dict:
    return {"seed": 0, "trainer": {"max_epochs": epochs, "enable_progress_bar": False}, "optimizer": {"lr": 0.05}}


def _pngs(root: Path, leaf: str) -> dict[int, Path]:
    """``{step: path}`` of the PNGs a leaf wrote under ``root/artifacts/val``."""
    found = {}
    for path in sorted((root / "artifacts" / "val").glob(f"{leaf}__*_step*.png")):
        found[int(path.stem.rsplit("_step", 1)[1])] = path
    return found


# -- one 3-epoch run with every visualization (module scope: trained once) ---------------
VIS_LEAVES = {
    # leaf name: (figure names, figsize)
    "heatmap": (("image_0", "image_1"), AnomalyHeatmap.figsize_default),
    "histogram": (("histogram",), ScoreHistogram.figsize_default),
    "pca3d": (("scatter",), PCAVisualization.figsize_default),
    "pca2d": (("scatter",), PCAVisualization.figsize_default),
    "temperature": (("temperature",), SelectorTemperaturePlot.figsize_default),
    "channels": (("channels",), SelectorChannelMaskPlot.figsize_default),
    "stability": (("stability",), SelectorStabilityPlot.figsize_default),
}
EPOCHS = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis_run")
    graph = Graph("vis")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    sel = graph.add_node(StandInSelector(), parent=norm, name="sel")
    rx = graph.add_node(RXGlobal(), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(AnomalyHeatmap(log_frequency=1, max_images=2), parent=rx, name="heatmap")
    graph.add_leaf_node(ScoreHistogram(log_frequency=1, log_scale=True), parent=rx, name="histogram")
    graph.add_leaf_node(PCAVisualization(log_frequency=1), parent=norm, name="pca3d")
    graph.add_leaf_node(PCAVisualization(log_frequency=1, n_components=2, color_by="score"), parent=sel,
                        name="pca2d")
    graph.add_leaf_node(SelectorTemperaturePlot(log_frequency=1), parent=sel, name="temperature")
    graph.add_leaf_node(SelectorChannelMaskPlot(log_frequency=1), parent=sel, name="channels")
    graph.add_leaf_node(SelectorStabilityPlot(log_frequency=1), parent=sel, name="stability")
    graph.add_leaf_node(AnomalyHeatmap(log_frequency=2), parent=rx, name="heat_every2")
    graph.add_leaf_node(SelectorTemperaturePlot(log_frequency=2), parent=sel, name="temp_every2")
    monitor = graph.register_monitor(FileMonitor(root))
    result = graph.train(_datamodule(), _config(EPOCHS), callbacks=[Anneal(sel)], run_dir=False)
    return graph, result, root, monitor


def test_every_visualization_is_registered() -> None:
    names = registered()
    for cls in (AnomalyHeatmap, ScoreHistogram, PCAVisualization, SelectorTemperaturePlot,
                SelectorChannelMaskPlot, SelectorStabilityPlot):
        assert names[cls.__name__] is cls


def test_training_ran_without_visualization_failures(trained) -> None:
    _, result, _, _ = trained
    assert result.failures == []
    assert result.trainer.current_epoch == EPOCHS
    assert math.isfinite(result.metrics["train/loss"])


@pytest.mark.parametrize("leaf", sorted(VIS_LEAVES))
def test_visualization_writes_decodable_png_of_expected_size(trained, leaf: str) -> None:
    _, _, root, monitor = trained
    figure_names, (width_in, height_in) = VIS_LEAVES[leaf]
    for fig_name in figure_names:
        paths = sorted((root / "artifacts" / "val").glob(f"{leaf}__{fig_name}_step*.png"))
        assert [int(p.stem.rsplit("_step", 1)[1]) for p in paths] == list(range(EPOCHS)), paths
        for path in paths:
            assert path.stat().st_size > 1000
            image = mpimg.imread(path)
            height_px, width_px = image.shape[:2]
            assert image.shape[2] in (3, 4)
            # bbox_inches="tight": the constrained layout fills the canvas up to ~0.04 in pads;
            # tight cropping keeps the artists' extent plus 0.1 in padding per side, and
            # equal-aspect images may leave some empty band that is cropped away. So:
            # (size - 25%) <= saved <= size + 2 * 0.1 in.
            for got, inches in ((width_px, width_in), (height_px, height_in)):
                full = inches * monitor.dpi
                assert 0.75 * full <= got <= full + 0.2 * monitor.dpi, (path.name, image.shape, full)
            # not a blank canvas: a good share of pixels differs from white
            rgb = image[..., :3]
            assert (rgb < 0.95).any(axis=-1).mean() > 0.02


def test_log_frequency_two_draws_exactly_epochs_zero_and_two(trained) -> None:
    graph, _, root, _ = trained
    assert sorted(_pngs(root, "heat_every2")) == [0, 2]
    assert sorted(_pngs(root, "temp_every2")) == [0, 2]
    # the leaf ran only at those epochs (its history is keyed by the epoch it ran at)
    assert list(graph["temp_every2"].history) == [0, 2]


def test_temperature_history_follows_the_schedule(trained) -> None:
    graph, _, _, _ = trained
    history = graph["temperature"].history
    assert list(history) == list(range(EPOCHS))
    for epoch, value in history.items():
        assert value == pytest.approx(temperature_at(epoch))


def test_stability_history_is_jaccard_of_top_k_sets(trained) -> None:
    graph, _, _, _ = trained
    leaf = graph["stability"]
    sets = list(leaf.history.values())
    assert len(sets) == EPOCHS and all(len(s) == 4 for s in sets)
    epochs, values = leaf.jaccard_series()
    assert epochs == [1, 2]
    for (a, b), value in zip(zip(sets[:-1], sets[1:], strict=True), values, strict=True):
        assert value == pytest.approx(len(a & b) / len(a | b))


def test_failing_visualization_is_disabled_and_training_completes(tmp_path) -> None:
    graph = Graph("broken_vis")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    broken = graph.add_leaf_node(Broken(), parent=rx, name="broken")
    graph.add_leaf_node(ScoreHistogram(), parent=head, name="histogram")
    graph.register_monitor(FileMonitor(tmp_path))
    result = graph.train(_datamodule(), _config(2), run_dir=False)
    assert result.trainer.current_epoch == 2
    assert broken.calls == 1
    assert [(f["name"], f["kind"]) for f in result.failures] == [("broken", "visualization")]
    assert "drawing failed on purpose" in result.failures[0]["error"]
    assert sorted(_pngs(tmp_path, "histogram")) == [0, 1]
    assert _pngs(tmp_path, "broken") == {}


def test_selector_plots_need_a_selector_parent() -> None:
    graph = Graph("wrong_parent")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.add_leaf_node(SelectorTemperaturePlot(), parent=rx, name="temperature")
    graph.add_leaf_node(SelectorChannelMaskPlot(), parent=rx, name="channels")
    with pytest.raises(CompileError) as info:
        graph.validate(_datamodule())
    text = str(info.value)
    assert "'temperature'" in text and "'channel_weights'" in text and "'selected_channels'" in text


# -- direct calls: the numbers the figures show ---------------------------------------------
def test_rgb_bands_nearest_640_550_460_nm_or_fallbacks() -> None:
    wl = np.linspace(400, 1000, 31)  # 20 nm steps
    assert rgb_band_indices(31, wl) == (12, 7, 3)  # 640, 540 (550 ties 540/560: first wins), 460
    assert rgb_band_indices(31, np.linspace(700, 1000, 31)) == (30, 15, 0)  # no visible band: spread
    # no wavelengths: 640/550/460 nm on a 365-2500 nm (AVIRIS) grid of 224 bands, ~9.5 nm apart
    aviris = np.linspace(365, 2500, 224)
    step = aviris[1] - aviris[0]
    for i, nm in zip(rgb_band_indices(224, None), (640, 550, 460), strict=True):
        assert abs(aviris[i] - nm) <= step / 2
    assert rgb_band_indices(31, wl, rgb_bands=(5, -1, 0)) == (5, 30, 0)
    with pytest.raises(ValueError, match="out of range"):
        rgb_band_indices(4, None, rgb_bands=(0, 1, 4))


def test_default_threshold_is_mean_plus_three_std() -> None:
    scores = np.random.default_rng(1).gamma(2.0, size=(3, 8, 8))
    scores[0, 0, 0] = np.nan
    finite = scores[np.isfinite(scores)]
    assert default_threshold(scores) == pytest.approx(finite.mean() + 3 * finite.std())


def test_heatmap_panels_and_threshold_titles() -> None:
    scores = torch.zeros(1, 8, 8, 1)
    scores[0, 2, 3, 0] = 10.0
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2, 3] = 1
    batch = {"cube": torch.rand(1, 8, 8, 5), "mask": mask, "wavelengths": torch.linspace(450, 650, 5)}
    fig = AnomalyHeatmap(threshold=5.0).visualize(scores, batch, RXGlobal(name="rx"))["image_0"]
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4  # three panels and the colorbar
    assert "score > 5 (fixed): 1.6% px" in titles[2] and "IoU with labels 1.00" in titles[2]
    assert "650, 550, 450 nm" in titles[1]


def test_pca_axis_labels_show_explained_variance() -> None:
    class FakePCA(Node):
        explained_variance_ratio = torch.tensor([0.6, 0.25, 0.1])

    z = torch.randn(2, 6, 6, 3)
    fig = PCAVisualization(n_components=2).visualize(z, {}, FakePCA())["scatter"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC 1 (60.0% var.)" and ax.get_ylabel() == "PC 2 (25.0% var.)"
    assert "85.0%" in ax.get_title()
    fig3 = PCAVisualization().visualize(z, {}, Node())["scatter"]
    assert fig3.axes[0].name == "3d" and fig3.axes[0].get_zlabel() == "component 3"


def test_subsample_is_deterministic_and_keeps_anomalies() -> None:
    labels = np.zeros(10_000, dtype=bool)
    labels[::500] = True
    a = subsample_pixels(10_000, 1000, labels)
    assert np.array_equal(a, subsample_pixels(10_000, 1000, labels))
    assert a.size == 1000 and labels[a].sum() == 20 and np.all(np.diff(a) > 0)


def test_jaccard() -> None:
    assert jaccard(frozenset({1, 2, 3}), frozenset({2, 3, 4})) == 0.5
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_history_plots_key_by_epoch_and_replace_repeats() -> None:
    selector = StandInSelector()
    leaf = SelectorTemperaturePlot(log_frequency=2)
    # validation before training (epoch 0), then the validations of epochs 0, 1, 2
    for epoch, temperature in ((0, 9.0), (0, 2.0), (1, 1.0), (2, 0.5)):
        selector.temperature = temperature
        if leaf.should_run(epoch):
            leaf.visualize(None, {}, selector)
    assert leaf.history == {0: 2.0, 2: 0.5}
    # called directly (no should_run): the next drawn epoch
    leaf.visualize(None, {}, selector)
    assert list(leaf.history) == [0, 2, 4]


def test_explicit_label_source_resolves_labels_for_the_outline() -> None:
    graph = Graph("labels")
    rx = graph.add_node(RXGlobal(), name="rx")
    graph.add_leaf_node(AnomalyHeatmap(label_source="mask"), parent=rx, name="with_labels")
    graph.add_leaf_node(AnomalyHeatmap(), parent=rx, name="plain")
    plan = graph.validate(_datamodule())
    targets = {b.name: b.target for b in plan.leaves}
    assert str(targets["with_labels"]) == "batch.mask" and targets["plain"] is None


def test_with_the_real_selector_and_pca(tmp_path) -> None:
    """The selector plots and the PCA scatter on ``SoftChannelSelector`` / ``TrainablePCA``."""
    from cuvis_graph.nodes import SoftChannelSelector, TrainablePCA

    graph = Graph("real_parents")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    sel = graph.add_node(SoftChannelSelector(n_select=4, temperature_init=2.0, temperature_decay=0.5, hard=True),
                         parent=norm, name="sel")
    pca = graph.add_node(TrainablePCA(n_components=3), parent=sel, name="pca")
    rx = graph.add_node(RXGlobal(), parent=pca, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    for leaf in (SelectorTemperaturePlot(), SelectorChannelMaskPlot(), SelectorStabilityPlot(), PCAVisualization()):
        graph.add_leaf_node(leaf, parent=pca if isinstance(leaf, PCAVisualization) else sel,
                            name=type(leaf).__name__.lower())
    graph.register_monitor(FileMonitor(tmp_path))
    result = graph.train(_datamodule(), _config(2), run_dir=False)
    assert result.failures == []
    for leaf in ("selectortemperatureplot", "selectorchannelmaskplot", "selectorstabilityplot", "pcavisualization"):
        assert sorted(_pngs(tmp_path, leaf)) == [0, 1], leaf
    temperatures = graph["selectortemperatureplot"].history
    assert temperatures == pytest.approx({e: sel.temperature_at(e) for e in (0, 1)})
    assert all(len(s) == 4 for s in graph["selectorstabilityplot"].history.values())
    fig = PCAVisualization().visualize(torch.randn(1, 4, 4, 3), {}, pca)["scatter"]
    ratios = pca.explained_variance_ratio
    assert fig.axes[0].get_xlabel() == f"PC 1 ({100 * float(ratios[0]):.1f}% var.)"
