"""Loss leaves against hand-computed numpy values; parent checks by the compiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    MinMaxNormalizer,
    MSEReconstructionLoss,
    OrthogonalityLoss,
    RXGlobal,
    RXLogitHead,
    SelectorDiversityRegularizer,
    SelectorEntropyRegularizer,
    SoftChannelSelector,
    TrainablePCA,
    WeightedMultiLoss,
)

from cuvis_graph import Graph
from cuvis_graph.core.executor import Executor
from cuvis_graph.data import GraphDataModule, SyntheticHSIDataModule
from cuvis_graph.errors import CompileError


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def synthetic() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16, n_bands=12, batch_size=2)


def selector_with_logits(logits: list[float], n_select: int = 3, temperature: float = 2.0) -> SoftChannelSelector:
    sel = SoftChannelSelector(n_select=n_select, temperature_init=temperature)
    sel.build(len(logits))
    with torch.no_grad():
        sel.logits.copy_(torch.tensor(logits))
    return sel


LOGITS = [0.5, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25]


def numpy_weights(n_select: int = 3, temperature: float = 2.0) -> np.ndarray:
    z = np.asarray(LOGITS, dtype=np.float64) / temperature
    return n_select * np.exp(z) / np.exp(z).sum()


def test_entropy_regularizer_equals_numpy() -> None:
    sel = selector_with_logits(LOGITS)
    p = numpy_weights() / numpy_weights().sum()
    entropy = -(p * np.log(p)).sum()
    plain = SelectorEntropyRegularizer(weight=0.3)
    plain.bind_parent(sel)
    assert float(plain.weight * plain.compute_loss(None, {}).detach()) == pytest.approx(-0.3 * entropy, rel=1e-6)
    targeted = SelectorEntropyRegularizer(weight=0.3, target_entropy=1.0)
    targeted.bind_parent(sel)
    assert float(targeted.weight * targeted.compute_loss(None, {}).detach()) == pytest.approx(0.3 * (entropy - 1.0) ** 2, rel=1e-5)
    targeted.compute_loss(None, {}).backward()
    assert sel.logits.grad is not None and torch.count_nonzero(sel.logits.grad) > 0


def test_diversity_regularizer_equals_numpy() -> None:
    sel = selector_with_logits(LOGITS)
    leaf = SelectorDiversityRegularizer(weight=0.5)
    leaf.bind_parent(sel)
    assert float(leaf.weight * leaf.compute_loss(None, {}).detach()) == pytest.approx(-0.5 * np.var(numpy_weights()), rel=1e-6)


def test_orthogonality_loss_equals_numpy_and_reaches_components() -> None:
    pca = TrainablePCA(n_components=3, trainable=True)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5))
    pca.components = torch.nn.Parameter(torch.tensor(w))
    leaf = OrthogonalityLoss(weight=2.0)
    leaf.bind_parent(pca)
    value = leaf.compute_loss(None, {})
    assert float(leaf.weight * value.detach()) == pytest.approx(2.0 * np.sum((w @ w.T - np.eye(3)) ** 2), rel=1e-12)
    value.backward()
    assert pca.components.grad is not None


def test_orthogonality_loss_trains_pca_components_back_to_orthonormal() -> None:
    graph = Graph("ortho")
    pca = graph.add_node(TrainablePCA(n_components=3, trainable=True))
    graph.add_leaf_node(OrthogonalityLoss(), parent=pca)
    dm = synthetic()
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    with torch.no_grad():
        pca.components.mul_(1.3)
    before = float(_bound(pca).compute_loss(None, {}).detach())
    graph.train(dm, {"trainer": {"max_epochs": 3, "enable_progress_bar": False},
                     "optimizer": {"lr": 0.01}})
    after = float(_bound(pca).compute_loss(None, {}).detach())
    assert after < 0.5 * before


def _bound(pca: TrainablePCA) -> OrthogonalityLoss:
    leaf = OrthogonalityLoss()
    leaf.bind_parent(pca)
    return leaf


def test_compiler_rejects_wrong_parents() -> None:
    graph = Graph("wrong")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_leaf_node(OrthogonalityLoss(), parent=norm, name="ortho")
    graph.add_leaf_node(SelectorEntropyRegularizer(), parent=norm, name="entropy")
    graph.add_leaf_node(WeightedMultiLoss([SelectorDiversityRegularizer()]), parent=norm, name="multi")
    with pytest.raises(CompileError) as info:
        graph.compile(synthetic())
    text = str(info.value)
    assert "leaf 'ortho'" in text and "'components'" in text
    assert "leaf 'entropy'" in text and "'channel_weights'" in text
    assert "leaf 'multi'" in text and "child 'selector_diversity_regularizer_0'" in text


def test_mse_reconstruction_against_batch_key_and_node() -> None:
    dm = synthetic()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    graph = Graph("mse")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_leaf_node(MSEReconstructionLoss(target="cube"), parent=norm, name="to_cube")
    graph.add_leaf_node(MSEReconstructionLoss(target="norm", reduction="sum"), parent="norm", name="to_self")
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    plan = graph.compile(dm)
    executor = Executor(plan)
    outputs = executor.run(batch)
    values = {}
    for binding in plan.leaves:
        output, leaf_batch = executor.leaf_inputs(binding, batch, outputs)
        values[binding.name] = float(binding.leaf.compute_loss(output, leaf_batch))
    normed = outputs["norm"]["out"].numpy().astype(np.float64)
    expected = np.mean((normed - batch["cube"].numpy().astype(np.float64)) ** 2)
    assert values["to_cube"] == pytest.approx(expected, rel=1e-5)
    assert values["to_self"] == 0.0
    no_val = GraphDataModule.from_arrays(batch["cube"].numpy(), batch_size=2)
    wrong = Graph("wrong_shape")
    wrong.add_node(TrainablePCA(n_components=2), name="pca")
    wrong.add_leaf_node(MSEReconstructionLoss(target="cube"), parent="pca", name="mse")
    wrong.train(no_val, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    plan = wrong.compile(no_val)
    out, leaf_batch = Executor(plan).leaf_inputs(plan.leaves[0], batch, Executor(plan).run(batch))
    with pytest.raises(ValueError, match="differ"):
        plan.leaves[0].leaf.compute_loss(out, leaf_batch)


def test_weighted_multi_loss_sums_and_logs_components() -> None:
    graph = Graph("multi")
    sel = graph.add_node(SoftChannelSelector(n_select=4), name="sel")
    rx = graph.add_node(RXGlobal(), parent=sel)
    head = graph.add_node(RXLogitHead(), parent=rx)
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    multi = graph.add_leaf_node(WeightedMultiLoss({"entropy": SelectorEntropyRegularizer(weight=1.0),
                                                   "diversity": {"type": "SelectorDiversityRegularizer"}},
                                                  weights={"entropy": 0.2, "diversity": 3.0}, weight=0.5),
                                parent=sel, name="reg")
    result = graph.train(synthetic(), {"trainer": {"max_epochs": 1, "enable_progress_bar": False}})
    for key in ("train/loss/reg", "train/loss/reg/entropy", "train/loss/reg/diversity", "val/loss/reg/entropy"):
        assert key in result.metrics, sorted(result.metrics)
    ent = SelectorEntropyRegularizer()
    div = SelectorDiversityRegularizer()
    ent.bind_parent(sel)
    div.bind_parent(sel)
    total = multi.compute_loss(None, {}).detach()
    expected = 0.2 * float(ent.compute_loss(None, {}).detach()) + 3.0 * float(div.compute_loss(None, {}).detach())
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert set(multi.last_components) == {"entropy", "diversity"}
    assert float(sum(multi.last_components.values())) == pytest.approx(expected, rel=1e-6)
    assert result.metrics["val/loss/reg"] == pytest.approx(
        0.5 * (result.metrics["val/loss/reg/entropy"] + result.metrics["val/loss/reg/diversity"]), rel=1e-5)
    params = multi.hparams()
    assert params["losses"]["diversity"]["type"] == "SelectorDiversityRegularizer"
    assert params["weights"] == {"entropy": 0.2, "diversity": 3.0}


def test_weighted_multi_loss_rejects_conflicting_targets() -> None:
    with pytest.raises(ValueError, match="different targets"):
        WeightedMultiLoss([MSEReconstructionLoss(target="cube"), AnomalyBCEWithLogits(label_source="mask")])
    with pytest.raises(ValueError, match="2 weights for 1"):
        WeightedMultiLoss([OrthogonalityLoss()], weights=[1.0, 2.0])


def test_mse_on_array_datamodule_requires_target_key() -> None:
    cubes = np.ones((2, 8, 8, 3), dtype=np.float32)
    graph = Graph("missing")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_leaf_node(MSEReconstructionLoss(target="reference"), parent=norm, name="mse")
    with pytest.raises(CompileError, match="needs batch key 'reference'"):
        graph.compile(GraphDataModule.from_arrays(cubes))
