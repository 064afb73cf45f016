"""Leaf protocols and constructor arguments as cuvis.ai documents (and releases) them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    ComponentOrthogonalityMetric,
    ExplainedVarianceMetric,
    MinMaxNormalizer,
    MSEReconstructionLoss,
    OrthogonalityLoss,
    RXGlobal,
    SelectorDiversityRegularizer,
    SelectorEntropyRegularizer,
    SoftChannelSelector,
    TrainablePCA,
    WeightedMultiLoss,
)

from cuvis_graph import Graph, TrainerConfig, TrainingConfig
from cuvis_graph.core.leaves import LossNode, MetricNode, VisualizationNode


def test_loss_constructors_and_compute_loss_with_labels():
    bce = AnomalyBCEWithLogits(weight=1.0, pos_weight=10.0)
    assert (bce.weight, bce.pos_weight) == (1.0, 10.0)
    assert MSEReconstructionLoss(reduction="sum").reduction == "sum"
    assert SelectorEntropyRegularizer(weight=0.01).weight == 0.01
    assert SelectorDiversityRegularizer(weight=0.02).weight == 0.02
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    labels = torch.tensor([[[1, 0], [0, 1]]])
    loss = bce.compute_loss(logits, labels=labels)
    z, y = logits.double().numpy(), labels.numpy()
    p = 1 / (1 + np.exp(-z))
    expected = -np.mean(10.0 * y * np.log(p) + (1 - y) * np.log(1 - p))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(bce.compute_loss((logits, labels, None))) == pytest.approx(expected, rel=1e-6)  # (x, y, m)
    with pytest.raises(ValueError, match="labels are required"):
        bce.compute_loss(logits, labels=None)
    recon, target = torch.ones(1, 2, 2, 3), torch.zeros(1, 2, 2, 3)
    assert float(MSEReconstructionLoss().compute_loss(recon, labels=target)) == 1.0
    assert float(MSEReconstructionLoss().compute_loss(recon, metadata={"cube": target})) == 1.0


def test_weighted_multi_loss_empty_add_loss_and_loss_weights():
    multi = WeightedMultiLoss(loss_weights={"a": 1.0, "b": 0.5})
    assert multi.loss_weights == {"a": 1.0, "b": 0.5}
    multi.add_loss("a", MSEReconstructionLoss())
    multi.add_loss("b", MSEReconstructionLoss())
    multi.add_loss("c", MSEReconstructionLoss(), weight=2.0)
    assert set(multi.loss_nodes) == {"a", "b", "c"} and multi.loss_weights["c"] == 2.0
    total = multi.compute_loss(torch.ones(1, 2, 2, 3), labels=torch.zeros(1, 2, 2, 3))
    assert float(total) == pytest.approx(1.0 + 0.5 + 2.0)
    assert float(WeightedMultiLoss().compute_loss(torch.ones(2))) == 0.0


class CuvisLoss(LossNode):
    def compute_loss(self, parent_output, labels=None, metadata=None):
        value = ((parent_output[..., 0] - labels.float()) ** 2).mean()
        return value, {"mse": float(value.detach())}


class CuvisMetric(MetricNode):
    def compute_metric(self, parent_output, batch):
        return {"mean": float(parent_output.mean())}


class CuvisPlot(VisualizationNode):
    def visualize(self, parent_output, batch, step, stage):
        from matplotlib.figure import Figure

        fig = Figure()
        fig.suptitle(f"{stage} {step}")
        return {"figure": fig, "type": "mean_image", "step": step}


class Neither(MetricNode):
    pass


def test_user_leaves_in_the_cuvis_style_train(datamodule, tmp_path):
    graph = Graph("user_leaves")
    norm = TrainablePCA(n_components=2, trainable=True)
    graph.add_node(norm)
    graph.add_leaf_node(CuvisLoss(), parent=norm, name="fit_mask")
    graph.add_leaf_node(CuvisMetric(), parent=norm, name="level")
    graph.add_leaf_node(CuvisPlot(log_frequency=1), parent=norm, name="plot")
    from cuvis_graph.monitors import DummyMonitor

    monitor = graph.register_monitor(DummyMonitor(output_dir=tmp_path / "out"))
    result = graph.train(datamodule=datamodule, training_config=TrainingConfig(
        trainer=TrainerConfig(max_epochs=1, enable_progress_bar=False)), run_dir=False)
    assert "train/loss/fit_mask" in result.metrics and "val/level/mean" in result.metrics
    # batch-averaged: the mean over the validation batches of the per-batch means
    graph_out = [graph.predict(b["cube"]) for b in datamodule.val_dataloader()]
    per_batch = [float(next(iter(o.values())).mean()) for o in graph_out]
    assert result.metrics["val/level/mean"] == pytest.approx(np.mean(per_batch), rel=1e-5)
    assert any(p.name.startswith("plot__mean_image") for p in monitor.artifacts)
    assert graph.leaves["fit_mask"].last_info.keys() == {"mse"}


def test_a_leaf_without_a_protocol_says_what_to_implement():
    with pytest.raises(TypeError, match=r"create_metrics\(\).*compute_metric\(parent_output, batch\)"):
        Neither().create_metrics()
    with pytest.raises(TypeError, match="define visualize"):
        VisualizationNode().visualize(torch.zeros(1), {}, None)


@pytest.fixture
def fitted_pca():
    pca = TrainablePCA(n_components=3, trainable=True)
    graph = Graph("pca")
    graph.add_node(pca)
    dm_cubes = torch.rand(6, 6, 6, 5, generator=torch.Generator().manual_seed(1))
    from cuvis_graph.data import GraphDataModule

    graph.train(GraphDataModule.from_arrays(dm_cubes.numpy()), TrainingConfig(trainer=TrainerConfig(max_epochs=0)),
                run_dir=False)
    return pca, dm_cubes


def test_compute_metric_on_every_metric_leaf(fitted_pca):
    pca, cubes = fitted_pca
    variance = ExplainedVarianceMetric()
    variance.bind_parent(pca)
    values = variance.compute_metric(pca(cubes), {"cube": cubes})
    ratios = pca.explained_variance_ratio.numpy()
    for k in range(3):
        assert values[f"comp_{k}"] == pytest.approx(ratios[k], rel=1e-6)
    assert values["cumulative"] == pytest.approx(ratios.sum(), rel=1e-6)
    orth = ComponentOrthogonalityMetric()
    orth.bind_parent(pca)
    w = pca.components.detach().double().numpy()
    expected = np.linalg.norm(w @ w.T - np.eye(3))
    assert orth.compute_metric(pca(cubes), batch={})["orthogonality_error"] == pytest.approx(expected, abs=1e-12)
    detection = AnomalyDetectionMetrics(threshold=0.0)
    scores, labels = torch.tensor([[[1.0, -1.0], [2.0, -2.0]]]), torch.tensor([[[1, 0], [0, 0]]])
    got = detection.compute_metric((scores, labels, None))
    assert got["precision"] == 0.5 and got["recall"] == 1.0
    with pytest.raises(ValueError, match="labels are required"):
        detection.compute_metric(scores, labels=None)
    loss = OrthogonalityLoss(weight=1.0)
    loss.bind_parent(pca)
    assert float(loss.compute_loss(pca(cubes)).detach()) == pytest.approx(expected ** 2, abs=1e-10)


def test_soft_channel_selector_arguments_and_state_aliases(fitted_pca):
    selector = SoftChannelSelector(n_select=2, init_method="variance", trainable=False, eps=1e-3)
    graph = Graph("sel")
    graph.add_node(selector)
    cubes = torch.rand(4, 6, 6, 5, generator=torch.Generator().manual_seed(2))
    from cuvis_graph.data import GraphDataModule

    graph.train(GraphDataModule.from_arrays(cubes.numpy()), TrainingConfig(trainer=TrainerConfig(max_epochs=0)),
                run_dir=False)
    var = cubes.reshape(-1, 5).double().numpy().var(axis=0, ddof=1)
    log_var = np.log(var + 1e-3)
    np.testing.assert_allclose(selector.channel_logits.detach().double().numpy(), log_var - log_var.mean(),
                               rtol=1e-5)
    assert not selector.logits.requires_grad
    assert not selector.is_trainable and selector.is_trainable() is False
    pca, _ = fitted_pca
    assert pca.is_trainable and pca.is_trainable() is True
    rx = RXGlobal()
    assert not rx.is_trainable  # a flag and a method: `if rx.is_trainable:` is safe
    norm = MinMaxNormalizer()
    norm.min, norm.max = torch.tensor([1.0]), torch.tensor([2.0])
    assert norm.running_min is norm.min and norm.running_max is norm.max


def test_every_alias_of_the_table_reaches_its_primary_argument(alias_cases):
    checked = 0
    for cls_name, cls, alternative, primary, value in alias_cases:
        obj = cls(**{alternative: value})
        assert obj.hparams()[primary] == value, (cls_name, alternative)
        with pytest.raises(TypeError, match="name the same argument"):
            cls(**{alternative: value, primary: value})
        checked += 1
    assert checked >= 8
