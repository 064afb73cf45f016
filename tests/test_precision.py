"""Mixed precision (``training.trainer.precision: bf16-mixed``) on the CPU.

Statistics are fitted outside autocast in float64 (equal to a ``32-true`` run, bit for bit);
RX's float32 training path runs with autocast disabled, so selector -> RX -> head + BCE trains
under bf16-mixed to the same weights as under 32-true (measured: bit-identical on this
graph, as none of its trainable operations is one autocast lowers).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import AnomalyBCEWithLogits, RXGlobal, RXLogitHead, SoftChannelSelector

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule

#: largest relative difference allowed between the heads trained under bf16-mixed and 32-true
#: (measured: 0, the runs are bit-identical; the margin leaves room for autocast-lowered ops)
HEAD_RTOL = 1e-3


def _datamodule() -> GraphDataModule:
    rng = np.random.default_rng(3)
    cubes = 1000.0 + rng.normal(size=(6, 8, 8, 10)) @ rng.normal(size=(10, 10))
    masks = np.zeros((6, 8, 8), dtype=np.int64)
    masks[:, 2, 5] = 1
    cubes[:, 2, 5] += 4.0
    return GraphDataModule.from_arrays(cubes.astype(np.float32), masks, batch_size=2, val_fraction=1 / 3, seed=0)


def _graph() -> Graph:
    graph = Graph("precision")
    sel = graph.add_node(SoftChannelSelector(n_select=5), name="sel")
    rx = graph.add_node(RXGlobal(), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    return graph


def _train(precision: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Graph, dict[str, list]]:
    """Train 2 epochs; record the autocast state seen by RX's statistics and training paths."""
    seen: dict[str, list] = {"fit": [], "train": []}
    update, score = RXGlobal.update_statistics, RXGlobal._score_float32

    def recording_update(self, accumulators, x, mask=None):
        seen["fit"].append((torch.is_autocast_enabled("cpu"), x.dtype))
        return update(self, accumulators, x, mask)

    def recording_score(self, x):
        out = score(self, x)
        seen["train"].append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(RXGlobal, "update_statistics", recording_update)
    monkeypatch.setattr(RXGlobal, "_score_float32", recording_score)
    graph = _graph()
    graph.train(_datamodule(), {"seed": 1, "optimizer": {"lr": 0.05},
                                "trainer": {"max_epochs": 2, "accelerator": "cpu", "precision": precision,
                                            "enable_progress_bar": False}}, run_dir=False)
    monkeypatch.undo()
    return graph, seen


def test_bf16_mixed_training_keeps_float64_statistics_and_matches_32_true(monkeypatch):
    full, seen_full = _train("32-true", monkeypatch)
    mixed, seen_mixed = _train("bf16-mixed", monkeypatch)
    # the training steps ran under autocast, the statistics pass never did
    assert seen_mixed["train"] and all(on for on, _ in seen_mixed["train"])
    assert not any(on for on, _ in seen_full["train"])
    assert seen_mixed["fit"] and not any(on for on, _ in seen_mixed["fit"])
    assert {dtype for _, dtype in seen_mixed["train"]} == {torch.float32}  # RX's GEMM stayed float32
    for name in ("mean", "whitening"):
        value = getattr(mixed.nodes["rx"], name)
        assert value.dtype == torch.float64
        assert torch.equal(value, getattr(full.nodes["rx"], name)), name
    for name in ("score_center", "score_unit"):  # the head's fitted statistics
        assert torch.equal(getattr(mixed.nodes["head"], name), getattr(full.nodes["head"], name)), name
    trained = {k: v for k, v in full.nodes["sel"].state_dict().items() if v.is_floating_point()}
    assert not torch.equal(trained["logits"], torch.zeros_like(trained["logits"]))  # training moved them
    for node in ("sel", "head"):
        for key, ref in full.nodes[node].state_dict().items():
            if ref.is_floating_point():
                value = mixed.nodes[node].state_dict()[key]
                scale = float(ref.abs().max().clamp_min(1e-6))
                assert float((value - ref).abs().max()) <= HEAD_RTOL * scale, (node, key)


def _fitted_rx(trainable_stats: bool = False) -> RXGlobal:
    rng = np.random.default_rng(0)
    x = torch.as_tensor(1e4 + rng.normal(size=(1, 16, 16, 6)) @ rng.normal(size=(6, 6)), dtype=torch.float32)
    rx = RXGlobal(trainable_stats=trainable_stats, name="rx")
    accumulators = rx.create_accumulators(x)
    rx.update_statistics(accumulators, x)
    rx.finalize_statistics(accumulators)
    rx.mark_fitted(True)
    return rx


@pytest.mark.parametrize("trainable_stats", [False, True])
def test_rx_training_scores_and_gradients_are_unchanged_by_autocast(trainable_stats):
    """Under a bf16 autocast, RX's differentiable scores and input gradients equal those
    without autocast (float32 path with autocast disabled; float64 operands are never cast)."""
    rx = _fitted_rx(trainable_stats)
    rng = np.random.default_rng(1)
    x = torch.as_tensor(1e4 + rng.normal(size=(2, 5, 5, 6)) * 30, dtype=torch.float32)

    def scores_and_grad(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            scores = rx(leaf)
        scores.sum().backward()
        return scores.detach(), leaf.grad

    (plain, plain_grad), (cast, cast_grad) = scores_and_grad(False), scores_and_grad(True)
    assert cast.dtype == plain.dtype == torch.float32
    assert torch.equal(cast, plain)
    assert torch.equal(cast_grad, plain_grad)
    # float64 reference of the same scores
    mu, w = rx.mean, rx.whitening
    ref = (((x.double() - mu) @ w.T) ** 2).sum(-1, keepdim=True)
    assert torch.allclose(plain.double(), ref, rtol=1e-4)


def test_rx_scores_a_bfloat16_input_in_float32_under_autocast():
    rx = _fitted_rx()
    x = torch.full((1, 2, 2, 6), 1e4, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = rx(x)
    assert scores.dtype == torch.float32
    ref = (((x.detach().double() - rx.mean) @ rx.whitening.T) ** 2).sum(-1, keepdim=True)
    assert torch.allclose(scores.detach().double(), ref, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_is_refused_naming_the_field(precision):
    """Lightning's ``*-true`` half precisions cast the module, float64 statistics included."""
    from cuvis_graph.errors import ConfigError
    from cuvis_graph.train.config import TrainingConfig, parse_config

    with pytest.raises(ConfigError, match=r"training\.trainer\.precision.*float64 statistics"):
        parse_config(TrainingConfig, {"trainer": {"precision": precision, "accelerator": "cpu"}})
