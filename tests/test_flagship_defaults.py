"""Defaults that train a good detector: the fitted logit head, RX's eps modes, the logged
temperature schedule and the weights a run ships."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    BinaryLabelMapper,
    RXGlobal,
    RXLogitHead,
    SoftChannelSelector,
)

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule, SyntheticHSIDataModule

ABU = Path(__file__).resolve().parents[2] / "shared" / "data" / "abu" / "abu-beach-3.mat"
QUIET = {"enable_progress_bar": False}


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)


def _synthetic() -> SyntheticHSIDataModule:
    return SyntheticHSIDataModule(n_train=4, n_val=2, n_test=0, height=24, width=24, n_bands=16, batch_size=2)


def _cubes(loader) -> tuple[np.ndarray, np.ndarray]:
    batches = list(loader)
    return (np.concatenate([b["cube"].numpy() for b in batches]),
            np.concatenate([b["mask"].numpy() for b in batches]))


def _rx_scores(train: np.ndarray, x: np.ndarray, delta: float | None = None, relative: float | None = None) -> np.ndarray:
    """float64 reference: ``(x - mu)^T (Sigma + delta I)^{-1} (x - mu)``."""
    rows = train.reshape(-1, train.shape[-1]).astype(np.float64)
    mu, cov = rows.mean(0), np.cov(rows, rowvar=False)
    c = cov.shape[0]
    delta = relative * np.trace(cov) / c if relative is not None else (delta or 0.0)
    d = x.reshape(-1, c).astype(np.float64) - mu
    return np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov + delta * np.eye(c)), d)


def _fit_head(dm: GraphDataModule, **rx_kwargs) -> tuple[Graph, RXGlobal, RXLogitHead]:
    graph = Graph("head_init")
    rx = graph.add_node(RXGlobal(**rx_kwargs), name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.train(dm, {"trainer": {"max_epochs": 0, **QUIET}}, run_dir=False)
    return graph, rx, head


@pytest.mark.parametrize("rx_kwargs", [{}, {"eps": 1e-6, "eps_mode": "absolute"}, {"eps": 1e-2}],
                         ids=["exact", "absolute-1e-6", "relative-1e-2"])
def test_initial_logits_put_background_below_zero_on_synthetic_data(rx_kwargs) -> None:
    dm = _synthetic()
    dm.setup("fit")
    graph, _, head = _fit_head(dm, **rx_kwargs)
    train, _ = _cubes(dm.train_dataloader())
    # head fitted from the training scores: bias = Q(0.995), scale = logit(0.995) / (Q(0.995) - Q(0.5))
    scores = graph.predict(torch.from_numpy(train), output="rx").numpy().astype(np.float64).ravel()
    q_hi, q_med = np.quantile(scores, [0.995, 0.5])
    assert float(head.bias.detach()) == pytest.approx(q_hi, rel=0.011)
    assert float(head.scale.detach()) == pytest.approx(math.log(0.995 / 0.005) / (q_hi - q_med), rel=0.05)
    for cubes, masks in (_cubes(dm.train_dataloader()), _cubes(dm.val_dataloader())):
        logits = graph.predict(torch.from_numpy(cubes), output="head").numpy()[..., 0]
        assert (logits[masks == 0] < 0).mean() >= 0.99


@pytest.mark.skipif(not ABU.exists(), reason=f"real ABU scene not found at {ABU}")
def test_initial_logits_put_background_below_zero_on_an_abu_scene() -> None:
    mat = scipy.io.loadmat(ABU)
    cube, mask = mat["data"].astype(np.float32), mat["map"].astype(np.int64)
    dm = GraphDataModule.from_arrays(cube[None], mask[None], batch_size=1, val_on_train=True)
    for kwargs in ({}, {"eps": 1e-6, "eps_mode": "absolute"}):
        graph, _, _ = _fit_head(dm, **kwargs)
        logits = graph.predict(cube, output="head").numpy()[..., 0]
        assert (logits[mask == 0] < 0).mean() >= 0.99, kwargs


def test_explicit_head_values_win_over_fitted_ones() -> None:
    graph = Graph("explicit")
    rx = graph.add_node(RXGlobal(), name="rx")
    head = graph.add_node(RXLogitHead(init_scale=0.1, init_bias=100.0), parent=rx)
    assert not head.statistical
    partial = graph.add_node(RXLogitHead(init_scale=0.25), parent=rx)
    graph.train(_synthetic(), {"trainer": {"max_epochs": 0, **QUIET}}, run_dir=False)
    assert float(head.scale) == pytest.approx(0.1) and float(head.bias) == pytest.approx(100.0)
    assert float(partial.scale) == pytest.approx(0.25)
    scores = torch.tensor([[[[0.0], [100.0], [110.0]]]])
    torch.testing.assert_close(head(scores), 0.1 * (scores - 100.0))


@pytest.mark.parametrize("eps_mode, eps", [("relative", 1e-3), ("absolute", 1e-3), ("absolute", 0.5)])
def test_eps_modes_match_numpy_float64_whitening(eps_mode: str, eps: float) -> None:
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6))
    train = (rng.normal(size=(2, 20, 20, 6)) @ mixing * 3.0 + 5.0).astype(np.float32)
    test = (rng.normal(size=(1, 8, 8, 6)) @ mixing * 3.0 + 5.0).astype(np.float32)
    graph = Graph("eps")
    rx = graph.add_node(RXGlobal(eps=eps, eps_mode=eps_mode), name="rx")
    graph.train(GraphDataModule.from_arrays(train, batch_size=1), {"trainer": {"max_epochs": 0, **QUIET}},
                run_dir=False)
    rows = train.reshape(-1, 6).astype(np.float64)
    cov = np.cov(rows, rowvar=False)
    delta = eps * np.trace(cov) / 6 if eps_mode == "relative" else eps
    np.testing.assert_allclose(rx.covariance_inverse.numpy(), np.linalg.inv(cov + delta * np.eye(6)),
                               rtol=1e-9, atol=1e-12)
    expected = _rx_scores(train, test, relative=eps) if eps_mode == "relative" else _rx_scores(train, test, delta=eps)
    np.testing.assert_allclose(graph.predict(test, output="rx").numpy().ravel(), expected, rtol=1e-5)


def test_unknown_eps_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eps_mode"):
        RXGlobal(eps_mode="percent")


def _labelled_scenes() -> tuple[np.ndarray, np.ndarray]:
    """Correlated 5-band pixels with class ids 0 (background), 1 and 2; class 1 pixels sit far away."""
    rng = np.random.default_rng(11)
    cubes = (rng.normal(size=(3, 12, 12, 5)) @ rng.normal(size=(5, 5)) + 2.0).astype(np.float32)
    ids = rng.choice(3, size=(3, 12, 12), p=[0.8, 0.1, 0.1]).astype(np.int64)
    cubes[ids == 1] += np.float32(20.0)
    return cubes, ids


def _rx_with(leaves: str, rx_setting: bool | str = "auto") -> Graph:
    graph = Graph("modes")
    kwargs = {} if rx_setting == "auto" else {"use_background_mask": rx_setting}
    if leaves in ("mapped loss, rx on batch.mask", "mapped loss, rx on mapper"):
        mapper = graph.add_node(BinaryLabelMapper(normal_class_ids=[0, 2]), name="mapper")
        parent = {"x": "batch.cube", "mask": mapper} if leaves.endswith("mapper") else None
        rx = graph.add_node(RXGlobal(**kwargs), parent=parent, name="rx")
    else:
        rx = graph.add_node(RXGlobal(**kwargs), name="rx")
    if leaves == "metric":
        graph.add_leaf_node(AnomalyDetectionMetrics(from_logits=False), parent=rx, name="metrics")
    elif leaves != "none":
        head = graph.add_node(RXLogitHead(), parent=rx, name="head")
        graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    return graph


@pytest.mark.parametrize("leaves, rx_setting, used", [
    ("none", "auto", "all"),                          # statistics only: exact, unsupervised RX
    ("metric", "auto", "all"),                        # a metric reads the labels, no loss trains on them
    ("loss", "auto", "background"),                   # supervised: the loss reads batch.mask, so does RX
    ("loss", False, "all"),                           # explicit settings win
    ("none", True, "background"),
    ("mapped loss, rx on batch.mask", "auto", "all"),  # the loss trains on other labels than RX reads
    ("mapped loss, rx on mapper", "auto", "mapped background"),
])
def test_statistics_pixels_follow_use_background_mask(leaves: str, rx_setting, used: str) -> None:
    """``use_background_mask="auto"`` fits on the background exactly when a loss leaf is trained on
    the labels RX's mask port reads; the fitted mean and covariance equal numpy float64 ones of
    those pixels (``np.cov``, N - 1) to 1e-10 relative."""
    cubes, ids = _labelled_scenes()
    graph = _rx_with(leaves, rx_setting)
    graph.train(GraphDataModule.from_arrays(cubes, ids, batch_size=2), {"trainer": {"max_epochs": 0, **QUIET}},
                run_dir=False)
    rx = graph["rx"]
    keep = {"all": np.ones(ids.shape, bool), "background": ids == 0, "mapped background": np.isin(ids, [0, 2])}[used]
    pixels = cubes[keep].astype(np.float64)
    mean, cov = pixels.mean(axis=0), np.cov(pixels, rowvar=False)
    np.testing.assert_allclose(rx.mean.numpy(), mean, rtol=1e-10, atol=0)
    delta = 1e-12 * np.trace(cov) / cov.shape[0]  # the default relative regulariser
    fitted = np.linalg.inv(rx.covariance_inverse.numpy()) - delta * np.eye(cov.shape[0])
    np.testing.assert_allclose(fitted, cov, rtol=0, atol=1e-10 * np.abs(cov).max())
    expected = f"{keep.sum()} background pixels (mask == 0) of {ids.size}" if used != "all" else f"all {ids.size} pixels"
    assert rx.fitted_on.startswith(expected) and expected in repr(rx)


def test_unknown_use_background_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="use_background_mask"):
        RXGlobal(use_background_mask="yes")


def _selector_graph(**selector_kwargs) -> Graph:
    graph = Graph("flagship")
    sel = graph.add_node(SoftChannelSelector(n_select=4, **selector_kwargs), name="selector")
    rx = graph.add_node(RXGlobal(), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    return graph


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_logged_temperature_follows_the_documented_schedule(tmp_path: Path) -> None:
    graph = _selector_graph(temperature_init=4.0, temperature_decay=0.5, temperature_min=0.6)
    result = graph.train(_synthetic(), {"trainer": {"max_epochs": 4, **QUIET}}, run_dir=tmp_path / "run")
    logged = {int(line["metrics"]["epoch"]): line["metrics"]["train/selector/temperature"]
              for line in _lines(result.run_dir) if "train/selector/temperature" in line["metrics"]}
    # T(e) = max(T_min, T_init * decay ** e)
    assert logged == pytest.approx({e: max(0.6, 4.0 * 0.5 ** e) for e in range(4)})


def _node_weights(graph: Graph) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, node in graph.nodes.items()
            for k, v in node.state_dict().items()}


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key


def test_a_run_that_gets_worse_ships_its_statistical_start(tmp_path: Path) -> None:
    start = _selector_graph()
    start.train(_synthetic(), {"trainer": {"max_epochs": 0, **QUIET}}, run_dir=False)
    graph = _selector_graph()
    result = graph.train(_synthetic(), {"trainer": {"max_epochs": 2, **QUIET}, "optimizer": {"lr": 20.0}},
                         run_dir=tmp_path / "run")
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["best"]["score"] > record["initial_metrics"]["val/loss"]  # training made it worse
    assert record["model_weights"]["source"] == "initial"
    _assert_equal(_node_weights(Graph.load(result.run_dir / "model")), _node_weights(start))
    final = _node_weights(graph)  # the graph in memory keeps its final weights
    assert not torch.equal(final["head.alpha"], _node_weights(start)["head.alpha"])


def test_a_run_ships_its_best_checkpoint(tmp_path: Path) -> None:
    graph = _selector_graph()
    result = graph.train(_synthetic(), {"trainer": {"max_epochs": 3, **QUIET}, "optimizer": {"lr": 0.05}},
                         run_dir=tmp_path / "run")
    record = json.loads((result.run_dir / "run.json").read_text())
    weights = record["model_weights"]
    assert weights["source"] == "best" and weights["checkpoint"] == record["best"]["checkpoint"]
    assert record["best"]["score"] <= record["initial_metrics"]["val/loss"]
    saved = torch.load(result.run_dir / weights["checkpoint"], weights_only=True, map_location="cpu")
    expected = {k[len("graph_nodes."):]: v for k, v in saved["state_dict"].items() if k.startswith("graph_nodes.")}
    _assert_equal(_node_weights(Graph.load(result.run_dir / "model")), expected)
