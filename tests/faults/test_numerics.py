"""Fault catalogue, numerics: non-finite parameters and statistics that cannot be right.

Non-finite hyperparameters are refused where they enter (the pydantic config, every node's
and leaf's constructor), through YAML and the Python API alike. Statistics fitted from
too few pixels, or from degenerate bands, name the node and the numbers. Expected values
come from numpy float64, not from the code under test.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import AnomalyBCEWithLogits, RXGlobal, TrainablePCA, WeightedMultiLoss
from cuvis_graph.nodes.rx import whitening_from_covariance
from pydantic import ValidationError

from cuvis_graph import Graph, OptimizerConfig, TrainingConfig
from cuvis_graph.core.leaves import LeafNode
from cuvis_graph.core.node import Node
from cuvis_graph.core.registry import registered
from cuvis_graph.core.statistics import StatisticsError
from cuvis_graph.data import GraphDataModule
from cuvis_graph.errors import ConfigError

from .conftest import PIPELINES, QUIET, TINY_SYNTHETIC, TreeSnapshot, cli
from .test_data import pipeline, scene

STATISTICAL = PIPELINES / "rx_statistical.yaml"
TRAINED = PIPELINES / "selector_rx_bce.yaml"
NAN, INF = float("nan"), float("inf")
FIT_ONLY = {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}}


# -- non-finite hyperparameters ------------------------------------------------------------------
def test_nan_eps_in_yaml_is_refused_before_anything_runs(workdir: Path, capsys) -> None:
    snapshot = TreeSnapshot(workdir)
    started = time.perf_counter()
    out = cli(["train", STATISTICAL, "nodes.rx.params.eps=nan", *TINY_SYNTHETIC, *QUIET], capsys)
    out.fails_naming("nodes.rx.params.eps", "nan is not a finite number", "RXGlobal")
    assert time.perf_counter() - started < 60
    snapshot.assert_unchanged()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_learning_rate_is_refused(workdir: Path, capsys, value: str) -> None:
    snapshot = TreeSnapshot(workdir)
    out = cli(["train", TRAINED, f"training.optimizer.lr={value}", *TINY_SYNTHETIC, *QUIET], capsys)
    out.fails_naming("training.optimizer.lr", "finite number")
    snapshot.assert_unchanged()


def test_non_finite_config_values_are_refused_in_python() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        OptimizerConfig(lr=INF)
    with pytest.raises(ValidationError, match="finite number"):
        TrainingConfig(optimizer={"betas": (0.9, NAN)})
    config = OptimizerConfig()
    with pytest.raises(ValidationError, match="finite number"):
        config.weight_decay = NAN  # assignment is validated too


def _float_parameters(cls: type) -> list[str]:
    """Constructor parameters of ``cls`` whose default is a float (the float hyperparameters)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if isinstance(p.default, float) and not isinstance(p.default, bool)]


CATALOG = sorted((name, param) for name, cls in registered().items()
                 if isinstance(cls, type) and issubclass(cls, Node | LeafNode)
                 and all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                         for p in list(inspect.signature(cls.__init__).parameters.values())[1:])
                 for param in _float_parameters(cls))


def test_the_catalog_has_float_parameters_to_check() -> None:
    assert len(CATALOG) >= 5, CATALOG
    assert ("RXGlobal", "eps") in CATALOG and ("AnomalyBCEWithLogits", "weight") in CATALOG


@pytest.mark.parametrize(("type_name", "param"), CATALOG, ids=lambda v: str(v))
@pytest.mark.parametrize("value", [NAN, INF])
def test_every_catalog_node_refuses_non_finite_parameters(type_name: str, param: str, value: float) -> None:
    cls = registered()[type_name]
    with pytest.raises(ConfigError, match=rf"^{param}: {value} is not a finite number; {cls.__name__} 'n1'"):
        cls(**{param: value, "name": "n1"})


def test_non_finite_values_inside_containers_name_the_path() -> None:
    with pytest.raises(ConfigError, match=r"^weights\[1\]: nan is not a finite number; WeightedMultiLoss"):
        WeightedMultiLoss([AnomalyBCEWithLogits(), AnomalyBCEWithLogits()], weights=[1.0, NAN])
    with pytest.raises(ConfigError, match=r"^pos_weight: inf is not a finite number; AnomalyBCEWithLogits"):
        AnomalyBCEWithLogits(pos_weight=np.float32("inf"))


@pytest.mark.parametrize("where", ["yaml", "python"])
def test_negative_pos_weight_is_refused(workdir: Path, capsys, where: str) -> None:
    if where == "python":
        with pytest.raises(ValueError, match=r"^pos_weight: must be >= 0 .* got -2.0"):
            AnomalyBCEWithLogits(pos_weight=-2.0)
        return
    snapshot = TreeSnapshot(workdir)
    out = cli(["train", TRAINED, "leaves.bce.params.pos_weight=-2", *TINY_SYNTHETIC, *QUIET], capsys)
    out.fails_naming("leaves.bce.params.pos_weight", "must be >= 0", "-2")
    snapshot.assert_unchanged()


# -- the RX regulariser loop is bounded --------------------------------------------------------------
def test_rx_regulariser_loop_ends_on_a_non_finite_covariance() -> None:
    cov = torch.eye(3, dtype=torch.float64)
    cov[1, 1] = NAN
    started = time.perf_counter()
    with pytest.raises(StatisticsError, match=r"^node 'rx': the covariance has 1 non-finite entries of 9"):
        whitening_from_covariance(cov, 1e-9, where="node 'rx'")
    with pytest.raises(ValueError, match="eps must be a finite number"):
        whitening_from_covariance(torch.eye(3, dtype=torch.float64), NAN)
    assert time.perf_counter() - started < 5


def test_rx_regulariser_gives_up_on_an_indefinite_covariance() -> None:
    cov = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3 and -1
    assert np.linalg.eigvalsh(cov.numpy()).min() < 0
    with pytest.raises(StatisticsError, match=r"^node 'rx': covariance of C=2 channels is not positive definite "
                                              r"even with regulariser 1e-03"):
        whitening_from_covariance(cov, 0.0, where="node 'rx'")


# -- covariances that cannot be right --------------------------------------------------------------
def test_fewer_pixels_than_bands_names_the_node_and_numbers(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    np.save(folder / "tiny.npy", scene(h=2, w=3, c=8))  # n = 6 pixels, C = 8 bands
    path = pipeline(tmp_path, folder, leaves={})
    snapshot = TreeSnapshot(tmp_path)
    out = cli(["train", path, "--runs-dir", tmp_path / "runs"], capsys)
    out.fails_naming("node 'rx' (RXGlobal)", "at least 9 samples", "n=6", "C=8")
    snapshot.assert_unchanged(allowed=("runs",))


def test_exactly_c_plus_one_pixels_fit(workdir: Path) -> None:
    cube = scene(h=3, w=3, c=8).astype(np.float64)  # n = 9 = C + 1
    graph = Graph("rx")
    rx = graph.add_node(RXGlobal(eps=1e-9), name="rx")
    graph.train(GraphDataModule.from_arrays(cube), FIT_ONLY)
    rows = cube.reshape(-1, 8)
    reference = np.cov(rows.T)
    reference += 1e-9 * np.trace(reference) / 8 * np.eye(8)
    expected = np.linalg.inv(reference)
    np.testing.assert_allclose(rx.covariance_inverse.numpy(), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())


def test_pca_from_too_few_pixels_names_the_node(workdir: Path) -> None:
    graph = Graph("pca")
    graph.add_node(TrainablePCA(n_components=5), name="pca")
    with pytest.raises(StatisticsError, match=r"^node 'pca' \(TrainablePCA\): 5 principal components needs at least 6 "
                                              r"samples \(pixels\), got n=4 for C=6"):
        graph.train(GraphDataModule.from_arrays(scene(h=2, w=2, c=6)), FIT_ONLY)


@pytest.mark.parametrize(("edit", "words"), [
    ("constant", ("band 2 is constant (variance 0)",)),
    ("duplicate", ("bands 1 and 3 are duplicates (correlation 1)",)),
])
def test_degenerate_bands_are_named_when_the_covariance_is_singular(workdir: Path, caplog, edit, words) -> None:
    cube = scene(h=10, w=10, c=5).astype(np.float64)
    if edit == "constant":
        cube[..., 2] = 7.0
    else:
        cube[..., 3] = cube[..., 1]
    rows = cube.reshape(-1, 5)
    assert np.linalg.matrix_rank(np.cov(rows.T)) == 4  # singular: the cause is in the data
    graph = Graph("rx")
    graph.add_node(RXGlobal(eps=0.0), name="rx")
    with caplog.at_level(logging.WARNING):
        graph.train(GraphDataModule.from_arrays(cube), FIT_ONLY)
    notes = [r.getMessage() for r in caplog.records if "covariance" in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in caplog.records]
    assert notes[0].startswith("node 'rx'") and "the cause is upstream" in notes[0]
    assert "not positive definite" in notes[0] or "singular" in notes[0]
    for word in words:
        assert word in notes[0], notes[0]


def test_non_finite_synthetic_noise_is_caught_in_the_data(workdir: Path, capsys) -> None:
    snapshot = TreeSnapshot(workdir)
    out = cli(["train", STATISTICAL, "data.params.noise=nan", *TINY_SYNTHETIC, *QUIET, "--runs-dir", "runs"], capsys)
    out.fails_naming("sample 0", "non-finite values")
    snapshot.assert_unchanged(allowed=("runs",))
