"""Metric leaves against scikit-learn / numpy on the concatenated data of unequal batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyDetectionMetrics,
    ComponentOrthogonalityMetric,
    ExplainedVarianceMetric,
    MinMaxNormalizer,
    ScoreStatisticsMetric,
    TrainablePCA,
)
from cuvis_graph.nodes.metrics import quantile_key
from cuvis_graph.nodes.sketch import LogBucketGrid, merge_moments, moments_of
from sklearn.decomposition import PCA
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule
from cuvis_graph.errors import CompileError

SIZES = [(1, 5, 7), (3, 4, 4), (2, 9, 3), (1, 1, 2)]  # batches of unequal size


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch) -> None:
    """Run directories that graph.train writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)


def random_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for shape in SIZES:
        labels = rng.random(shape) < 0.3
        scores = rng.normal(size=shape) + 1.5 * labels
        out.append((torch.tensor(scores, dtype=torch.float32)[..., None], torch.tensor(labels, dtype=torch.int64)))
    return out


def test_anomaly_metrics_equal_sklearn_on_concatenated_batches() -> None:
    batches = random_batches()
    leaf = AnomalyDetectionMetrics(threshold=0.4, from_logits=False)
    metrics = leaf.create_metrics()
    for scores, labels in batches:
        leaf.update_metrics(metrics, scores, {"target": labels})
    values = leaf.compute_metrics(metrics)
    scores = np.concatenate([s.numpy().reshape(-1) for s, _ in batches]).astype(np.float64)
    labels = np.concatenate([y.numpy().reshape(-1) for _, y in batches])
    predicted = scores > 0.4
    assert values["precision"] == pytest.approx(precision_score(labels, predicted), abs=1e-12)
    assert values["recall"] == pytest.approx(recall_score(labels, predicted), abs=1e-12)
    assert values["f1"] == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    assert values["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert values["average_precision"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    tn = np.sum(~predicted & (labels == 0))
    assert values["specificity"] == pytest.approx(tn / np.sum(labels == 0), abs=1e-12)
    assert values["iou"] == pytest.approx(np.sum(predicted & (labels == 1)) / np.sum(predicted | (labels == 1)))


def test_anomaly_metrics_threshold_zero_on_logits_is_probability_half() -> None:
    leaf = AnomalyDetectionMetrics()  # logits, threshold 0
    metrics = leaf.create_metrics()
    logits = torch.tensor([[-3.0, -0.1, 0.2, 5.0]])
    leaf.update_metrics(metrics, logits, {"target": torch.tensor([[0, 0, 1, 1]])})
    values = leaf.compute_metrics(metrics)
    assert values["precision"] == 1.0 and values["recall"] == 1.0


def test_metric_needing_labels_fails_at_compile_without_mask() -> None:
    cubes = np.ones((2, 8, 8, 3), dtype=np.float32)
    graph = Graph("no_labels")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=norm, name="metrics")
    with pytest.raises(CompileError, match="needs batch key 'mask'"):
        graph.compile(GraphDataModule.from_arrays(cubes))


def quantile_bound(values: np.ndarray, q: float, alpha: float, min_abs: float) -> float:
    """The documented bound: alpha * max(|x_(lo)|, |x_(hi)|) + min_abs around numpy's value."""
    ordered = np.sort(values)
    h = (len(ordered) - 1) * q
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    return alpha * max(abs(ordered[lo]), abs(ordered[hi])) + min_abs


@pytest.mark.parametrize("alpha", [0.005, 0.02])
def test_score_statistics_equal_numpy_within_bound(alpha: float) -> None:
    rng = np.random.default_rng(3)
    parts = [rng.lognormal(2.0, 1.5, size=(2, 50, 60, 1)),  # heavy-tailed positive scores
             rng.normal(-3.0, 2.0, size=(1, 33, 7, 1)),  # negative values
             np.zeros((1, 4, 4, 1)),  # exact zeros
             1e4 + rng.normal(size=(3, 11, 5, 1))]  # a far-away cluster
    leaf = ScoreStatisticsMetric(relative_accuracy=alpha)
    metrics = leaf.create_metrics()
    for part in parts:
        leaf.update_metrics(metrics, torch.tensor(part, dtype=torch.float32), {})
    values = leaf.compute_metrics(metrics)
    data = np.concatenate([p.astype(np.float32).astype(np.float64).reshape(-1) for p in parts])
    assert values["count"] == data.size
    assert values["mean"] == pytest.approx(data.mean(), rel=1e-12)
    assert values["std"] == pytest.approx(data.std(), rel=1e-12)
    assert values["min"] == data.min() and values["max"] == data.max()
    for q in (0.25, 0.5, 0.75, 0.95, 0.99):
        reference = np.quantile(data, q)
        error = abs(values[quantile_key(q)] - reference)
        assert error <= quantile_bound(data, q, alpha, 1e-12) * (1 + 1e-9), (q, values[quantile_key(q)], reference)


def test_score_statistics_states_merge_like_ranks() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(5.0, 2.0, size=1000), rng.normal(-1.0, 0.5, size=77)
    leaf = ScoreStatisticsMetric()
    one, two, both = leaf.create_metrics(), leaf.create_metrics(), leaf.create_metrics()
    one.update(torch.tensor(a))
    two.update(torch.tensor(b))
    both.update(torch.tensor(np.concatenate([a, b])))
    merged = merge_moments(torch.stack([one.moments, two.moments]))
    torch.testing.assert_close(merged, both.moments, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(one.pos_counts + two.pos_counts, both.pos_counts, rtol=0, atol=0)
    torch.testing.assert_close(one.neg_counts + two.neg_counts, both.neg_counts, rtol=0, atol=0)
    x = torch.tensor(a)
    n, mean, m2 = moments_of(x)
    assert (int(n), float(mean), float(m2)) == (1000, pytest.approx(a.mean()), pytest.approx(((a - a.mean()) ** 2).sum()))


def test_quantile_sketch_grid_and_large_counts() -> None:
    grid = LogBucketGrid(0.01)
    reps = grid.representatives()
    assert torch.all(reps[1:] > reps[:-1])
    x = torch.tensor([1e-3, 0.5, 2.0, 1e6, 3e38])
    rel = (reps[grid.bucket(x)] - x.double()).abs() / x.double()
    assert float(rel.max()) <= 0.01 * (1 + 1e-9)
    state = ScoreStatisticsMetric(quantiles=[0.5]).create_metrics()
    state.CHUNK = 1000  # exercise chunking
    values = torch.arange(1, 5002, dtype=torch.float32)
    state.update(values)
    result = state.compute()
    assert float(result["q50"]) == pytest.approx(2501.0, rel=0.005)
    assert float(result["count"]) == 5001


def pca_cubes() -> np.ndarray:
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    pixels = (rng.normal(size=(4 * 9 * 9, 6)) * (10.0 * 1.8 ** -np.arange(6))) @ rotation.T + 500.0
    return pixels.reshape(4, 9, 9, 6).astype(np.float32)


@pytest.mark.parametrize("whiten", [False, True])
def test_explained_variance_metric_equals_sklearn_on_fitted_data(whiten: bool) -> None:
    cubes = pca_cubes()
    graph = Graph("ev")
    pca = graph.add_node(TrainablePCA(n_components=3, whiten=whiten), name="pca")
    graph.add_leaf_node(ExplainedVarianceMetric(), parent=pca, name="ev")
    graph.add_leaf_node(ComponentOrthogonalityMetric(), parent=pca, name="ortho")
    dm = GraphDataModule.from_arrays(cubes, batch_size=3, val_on_train=True)  # batches of 3 and 1 cubes
    result = graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    ref = PCA(n_components=3).fit(cubes.reshape(-1, 6).astype(np.float64)).explained_variance_ratio_
    got = [result.metrics[f"val/ev/component_{k}"] for k in range(3)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert result.metrics["val/ev/total"] == pytest.approx(ref.sum(), rel=1e-5)
    assert result.metrics["val/ortho/frobenius"] < 1e-12
    assert result.metrics["val/ortho/max_abs"] < 1e-12


def test_component_orthogonality_metric_equals_numpy() -> None:
    pca = TrainablePCA(n_components=2, trainable=True)
    w = np.array([[1.0, 0.2, 0.0], [0.1, 0.9, 0.3]])
    pca.components = torch.nn.Parameter(torch.tensor(w))
    leaf = ComponentOrthogonalityMetric()
    leaf.bind_parent(pca)
    metrics = leaf.create_metrics()
    leaf.update_metrics(metrics, torch.zeros(1), {})
    leaf.update_metrics(metrics, torch.zeros(1), {})
    values = leaf.compute_metrics(metrics)
    gram = w @ w.T - np.eye(2)
    assert values["frobenius"] == pytest.approx(np.linalg.norm(gram), rel=1e-12)
    assert values["max_abs"] == pytest.approx(np.abs(gram).max(), rel=1e-12)


def test_pca_metrics_reject_parents_without_components() -> None:
    cubes = np.ones((2, 8, 8, 3), dtype=np.float32)
    graph = Graph("bad_parent")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_leaf_node(ExplainedVarianceMetric(), parent=norm, name="ev")
    graph.add_leaf_node(ComponentOrthogonalityMetric(), parent=norm, name="ortho")
    with pytest.raises(CompileError) as info:
        graph.compile(GraphDataModule.from_arrays(cubes))
    assert "leaf 'ev'" in str(info.value) and "leaf 'ortho'" in str(info.value)


def test_raw_scores_get_the_mean_plus_three_sigma_threshold() -> None:
    """RX scores around 200: a 0.5 threshold would call every pixel anomalous; 'auto' uses
    mean + 3 std of the evaluated scores (numpy float64 reference) and reports it."""
    from cuvis_graph.nodes import AnomalyDetectionMetrics
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels = rng.random((2, 20, 20)) < 0.02
    scores = rng.chisquare(30, (2, 20, 20)) * 7 + labels * 400
    leaf = AnomalyDetectionMetrics(from_logits=False)
    state = leaf.create_metrics()
    for s, y in zip(scores, labels, strict=True):  # two batches
        leaf.update_metrics(state, torch.tensor(s[None, ..., None], dtype=torch.float32), {"target": torch.tensor(y[None])})
    out = {k: float(v) for k, v in state.compute().items()}
    flat = scores.astype(np.float32).astype(np.float64).ravel()
    expected = flat.mean() + 3 * flat.std()
    assert out["threshold"] == pytest.approx(expected, rel=1e-6)
    assert out["f1"] == pytest.approx(f1_score(labels.ravel(), flat > expected), abs=1e-12)
    assert out["f1"] > 0.9


def test_probabilities_keep_the_half_threshold() -> None:
    from cuvis_graph.nodes import AnomalyDetectionMetrics

    leaf = AnomalyDetectionMetrics(from_logits=False)
    state = leaf.create_metrics()
    probs = torch.tensor([[[0.1, 0.6], [0.4, 0.9]]])
    leaf.update_metrics(state, probs, {"target": torch.tensor([[[0, 1], [1, 1]]])})
    out = state.compute()
    assert float(out["threshold"]) == 0.5 and float(out["recall"]) == pytest.approx(2 / 3)


def test_auto_threshold_needs_the_scores() -> None:
    from cuvis_graph.nodes import AnomalyDetectionMetrics

    with pytest.raises(ValueError, match="'auto' needs the evaluated scores"):
        AnomalyDetectionMetrics(from_logits=False, ranking=False)
    assert AnomalyDetectionMetrics(from_logits=False, ranking=False, threshold=0.5).threshold == 0.5
