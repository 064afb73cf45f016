"""SoftChannelSelector: annealing schedule, hard top-k, init, laziness and determinism."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from cuvis_graph.nodes import AnomalyBCEWithLogits, RXGlobal, RXLogitHead, SoftChannelSelector

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule, SyntheticHSIDataModule
from cuvis_graph.errors import CompileError


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def synthetic() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=16, width=16, n_bands=12, batch_size=2)


def config(epochs: int) -> dict:
    return {"seed": 7, "trainer": {"max_epochs": epochs, "enable_progress_bar": False}}


def selector_graph(**kwargs) -> tuple[Graph, SoftChannelSelector]:
    graph = Graph("selector_rx")
    sel = graph.add_node(SoftChannelSelector(**{"n_select": 4, **kwargs}), name="sel")
    rx = graph.add_node(RXGlobal(), parent=sel)
    head = graph.add_node(RXLogitHead(), parent=rx)
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head)
    return graph, sel


class TemperatureRecorder(pl.Callback):
    def __init__(self, node: SoftChannelSelector) -> None:
        self.node, self.seen = node, []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seen.append(self.node.temperature)


def schedule(epoch: int, t_init: float, decay: float, t_min: float) -> float:
    return max(t_min, t_init * decay ** epoch)


def test_temperature_follows_the_schedule_every_epoch() -> None:
    graph, sel = selector_graph(temperature_init=5.0, temperature_decay=0.7, temperature_min=0.1)
    recorder = TemperatureRecorder(sel)
    graph.train(synthetic(), config(3), callbacks=[recorder])
    expected = [schedule(e, 5.0, 0.7, 0.1) for e in range(3)]
    assert recorder.seen == pytest.approx(expected, rel=1e-12)
    # after k epochs the node holds T(k - 1), the temperature of its last training epoch
    assert sel.temperature == pytest.approx(schedule(2, 5.0, 0.7, 0.1), rel=1e-12)
    assert sel.temperature_at(10) == pytest.approx(5.0 * 0.7**10)


def test_temperature_floor() -> None:
    graph, sel = selector_graph(temperature_init=2.0, temperature_decay=0.1, temperature_min=0.25)
    graph.train(synthetic(), config(3))
    assert sel.temperature == 0.25
    restored = SoftChannelSelector(n_select=4, temperature_init=2.0, temperature_decay=0.1, temperature_min=0.25)
    restored.load_state_dict(sel.state_dict())
    assert restored.temperature == 0.25 and int(restored.annealing_epoch) == 2


def test_hard_selects_exactly_n_select_channels_at_eval() -> None:
    dm = synthetic()
    graph, sel = selector_graph(hard=True, n_select=5)
    graph.train(dm, config(2))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    out = graph.predict(batch, output="sel")
    nonzero = torch.nonzero(out.abs().sum(dim=(0, 1, 2))).reshape(-1).tolist()
    assert nonzero == sel.selected_channels() and len(nonzero) == 5
    np.testing.assert_array_equal(out[..., nonzero].numpy(), batch["cube"][..., nonzero].numpy())
    top = torch.argsort(sel.logits.detach(), descending=True)[:5].sort().values.tolist()
    assert sel.selected_channels() == top
    expected_nm = [float(dm.wavelengths[i]) for i in top]
    assert sel.selected_wavelengths(batch["wavelengths"]) == pytest.approx(expected_nm)
    sel.train()
    soft = sel(batch["cube"])
    assert torch.count_nonzero(soft.abs().sum(dim=(0, 1, 2))) == 12


def test_soft_weights_formula_and_sum() -> None:
    sel = SoftChannelSelector(n_select=3, temperature_init=2.0)
    sel.build(6)
    with torch.no_grad():
        sel.logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5]))
    logits = sel.logits.detach().numpy().astype(np.float64)
    expected = 3 * np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    np.testing.assert_allclose(sel.channel_weights().detach().numpy(), expected, rtol=1e-6)
    x = torch.ones(1, 2, 2, 6)
    sel.eval()
    np.testing.assert_allclose(sel(x)[0, 0, 0].detach().numpy(), expected, rtol=1e-6)
    assert float(sel.channel_weights().detach().sum()) == pytest.approx(3.0)


def test_variance_init_from_streaming_variance() -> None:
    rng = np.random.default_rng(1)
    scales = np.array([0.5, 1.0, 2.0, 4.0, 8.0], dtype=np.float64)
    cubes = (rng.normal(size=(3, 8, 8, 5)) * scales + 100.0).astype(np.float32)
    graph = Graph("var")
    sel = graph.add_node(SoftChannelSelector(n_select=2, init_method="variance"))
    assert sel.statistical
    graph.train(GraphDataModule.from_arrays(cubes, batch_size=2), {"trainer": {"max_epochs": 0}})
    log_var = np.log(cubes.reshape(-1, 5).astype(np.float64).var(axis=0, ddof=1))
    np.testing.assert_allclose(sel.logits.detach().numpy(), log_var - log_var.mean(), rtol=1e-5, atol=1e-6)
    assert sel.selected_channels() == [3, 4]


def test_logits_are_created_when_channels_are_known() -> None:
    graph, sel = selector_graph()
    assert sel.logits.numel() == 0 and sel.is_trainable()
    graph.compile(synthetic())
    assert sel.logits.shape == (12,) and sel.logits.requires_grad
    too_many = Graph("too_many")
    too_many.add_node(SoftChannelSelector(n_select=20), name="sel")
    with pytest.raises(CompileError, match="n_select=20 exceeds the C=12"):
        too_many.compile(synthetic())
    fresh = SoftChannelSelector(n_select=4)
    fresh.load_state_dict(sel.state_dict())
    assert fresh.logits.shape == (12,)
    fresh.freeze()
    assert not fresh.is_trainable()


def test_gumbel_noise_only_in_gradient_training() -> None:
    sel = SoftChannelSelector(n_select=2, gumbel=True)
    x = torch.ones(1, 1, 1, 6)
    sel.build(6)
    sel.train()
    a, b = sel(x), sel(x)
    assert not torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(sel(x), sel(x))
    sel.eval()
    assert torch.equal(sel(x), sel(x))


def test_training_without_gumbel_is_deterministic_under_a_seed() -> None:
    first, sel_a = selector_graph()
    second, sel_b = selector_graph()
    first.train(synthetic(), config(2))
    second.train(synthetic(), config(2))
    assert not torch.all(sel_a.logits == 0), "training did not move the logits"
    assert torch.equal(sel_a.logits, sel_b.logits)
    assert torch.equal(sel_a.channel_weights(), sel_b.channel_weights())
