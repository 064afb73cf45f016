"""The conventions the core reads from nodes and leaves are declared in their contract.

``Node.is_decider``, ``Node.input_channels()``, ``LossNode.components()`` and the class
flags (``statistical``, ``needs_labels``, ``folds_affine_inputs``...) are what the compiler,
training and prediction read; a subclass that declares them is taken as such without the
attribute or port names the core used to guess from, and no catalog class sets a class
flag on its instances (a flag that follows from constructor arguments is a computed flag).
Validation / test losses are epoch means weighted by batch size, checked against numpy
float64 over the batches as the loader cuts them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    MinMaxNormalizer,
    MSEReconstructionLoss,
    RXLogitHead,
    SoftChannelSelector,
    StandardNormalizer,
    WeightedMultiLoss,
)

from cuvis_graph import Graph, Node
from cuvis_graph.core.flags import computed_flag
from cuvis_graph.core.leaves import LeafNode, LossNode
from cuvis_graph.core.node import PortSpec
from cuvis_graph.core.registry import registered
from cuvis_graph.data import ArrayDataModule
from cuvis_graph.io.prediction import score_outputs
from cuvis_graph.io.saving import infer_n_channels

PIXEL = ("B", "H", "W", 1)
#: constructor arguments of catalog classes that have required parameters
REQUIRED_ARGS = {"TrainablePCA": {"n_components": 3}, "SoftChannelSelector": {"n_select": 3}}


class ChannelMean(Node):
    """``[B,H,W,C] -> [B,H,W,1]``: the mean over channels (a score)."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}
    OUTPUTS = {"out": PortSpec(PIXEL)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1, keepdim=True)


class AboveZero(Node):
    """A decider whose port is not named ``decisions``: the class flag says what it is."""

    INPUTS = {"scores": PortSpec(PIXEL)}
    OUTPUTS = {"mask": PortSpec(PIXEL)}
    is_decider = True

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores > 0).to(scores.dtype)


class Negate(Node):
    """A per-pixel node with a port named ``decisions`` but no decider flag: a score."""

    INPUTS = {"scores": PortSpec(PIXEL)}
    OUTPUTS = {"decisions": PortSpec(PIXEL)}

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return -scores


class SizedByContract(Node):
    """Reports C through ``input_channels()`` only (no ``n_channels``, no ``mean`` buffer)."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "C"))}

    def input_channels(self) -> int | None:
        return 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MeanBufferOnly(SizedByContract):
    """A per-channel ``mean`` buffer without declaring ``input_channels()``."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.register_buffer("mean", torch.zeros(5))

    def input_channels(self) -> int | None:
        return None


class SquareWithParts(LossNode):
    """``L = mean(s^2)`` with parts ``{"mean": mean(s), "max": max(s)}`` through ``components()``."""

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight=weight, name=name)
        self._parts: dict[str, torch.Tensor] = {}

    def components(self) -> dict[str, torch.Tensor]:
        return dict(self._parts)

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        self._parts = {"mean": output.mean().detach(), "max": output.max().detach()}
        return (output ** 2).mean()


class NaNOnLargeScores(SquareWithParts):
    """NaN for a batch whose scores exceed 3 (the last, large-scale cube's batch)."""

    def compute_loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        loss = super().compute_loss(output, batch)
        return loss * math.nan if bool(output.abs().max() > 3) else loss


def _flag_names(cls: type) -> set[str]:
    """Class flags of ``cls``: ``ClassVar`` declarations and computed flags along its MRO."""
    names = set()
    for klass in cls.__mro__:
        names |= {k for k, v in vars(klass).get("__annotations__", {}).items() if "ClassVar" in str(v)}
        names |= {k for k, v in vars(klass).items() if isinstance(v, computed_flag)}
    return names


def _catalog() -> list[tuple[str, type]]:
    return sorted((n, c) for n, c in registered().items()
                  if isinstance(c, type) and issubclass(c, (Node, LeafNode)))


# -- class flags ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), _catalog(), ids=[n for n, _ in _catalog()])
def test_no_catalog_class_sets_a_class_flag_on_its_instances(name: str, cls: type) -> None:
    instance = cls(**REQUIRED_ARGS.get(name, {}))
    flags = _flag_names(cls)
    assert {"statistical", "is_decider", "folds_affine_inputs"} <= flags or "needs_labels" in flags
    assert not flags & set(vars(instance)), f"{name} sets {sorted(flags & set(vars(instance)))} on the instance"


def test_flags_that_follow_constructor_arguments_are_computed_and_read_only() -> None:
    assert MinMaxNormalizer.statistical is True and MinMaxNormalizer().statistical is True
    batchwise = MinMaxNormalizer(use_running_stats=False)
    assert batchwise.statistical is False and batchwise.is_fitted  # nothing to fit: runs at once
    assert MinMaxNormalizer(per_channel=False).folds_affine_inputs == ()
    assert StandardNormalizer().folds_affine_inputs == ("x",)
    assert SoftChannelSelector.statistical is False
    variance = SoftChannelSelector(n_select=2, init_method="variance")
    assert variance.statistical is True and not variance.is_fitted
    assert RXLogitHead().statistical is True
    given = RXLogitHead(init_bias=0.5, init_scale=2.0)
    assert given.statistical is False and given.is_fitted
    with pytest.raises(AttributeError, match="MinMaxNormalizer.statistical follows from the constructor"):
        batchwise.statistical = True


def test_weighted_multi_loss_needs_labels_follows_its_children() -> None:
    multi = WeightedMultiLoss()
    assert WeightedMultiLoss.needs_labels is False and multi.needs_labels is False
    multi.add_loss("reconstruction", MSEReconstructionLoss(target="cube"))
    assert multi.needs_labels is True and multi.label_source == "cube"
    assert MSEReconstructionLoss.needs_labels is True  # it reads its target as batch["target"]


# -- deciders and channels --------------------------------------------------------------------
def test_a_node_declaring_is_decider_is_the_decider_whatever_its_port_is_called() -> None:
    graph = Graph("decide")
    graph.add_node(ChannelMean(), name="score")
    graph.add_node(AboveZero(), parent="score", name="threshold")
    assert score_outputs(graph, 3) == (("score", "out"), ("threshold", "mask"))


def test_a_port_named_decisions_does_not_make_a_decider() -> None:
    graph = Graph("negated")
    graph.add_node(ChannelMean(), name="score")
    graph.add_node(Negate(), parent="score", name="negated")
    assert score_outputs(graph, 3) == (("negated", "decisions"), None)


def test_input_channels_tells_the_model_channel_count() -> None:
    graph = Graph("sized")
    graph.add_node(SizedByContract(), name="sized")
    assert infer_n_channels(graph) == 7
    undeclared = Graph("undeclared")
    undeclared.add_node(MeanBufferOnly(), name="node")
    assert infer_n_channels(undeclared) is None  # a buffer's size alone is no longer read


def test_catalog_nodes_report_their_input_channels() -> None:
    selector = SoftChannelSelector(n_select=2)
    assert selector.input_channels() is None
    selector.build(6)
    assert selector.input_channels() == 6
    norm = StandardNormalizer()
    assert norm.input_channels() is None
    norm.mean = torch.zeros(5)
    assert norm.input_channels() == 5
    flat = MinMaxNormalizer(per_channel=False)
    flat.min = torch.zeros(1)
    assert flat.input_channels() is None  # one statistic for all channels says nothing of C


# -- evaluation losses ------------------------------------------------------------------------
def _cubes() -> np.ndarray:
    """5 cubes 4x4x3; the last, alone in its batch of 2-2-1, on a much larger scale."""
    rng = np.random.default_rng(11)
    cubes = rng.normal(size=(5, 4, 4, 3)).astype(np.float32)
    cubes[4] = cubes[4] * 10 + 5
    return cubes


def _evaluate(cubes: np.ndarray, loss: type[SquareWithParts] = SquareWithParts) -> dict[str, float]:
    graph = Graph("parts")
    graph.add_node(ChannelMean(), name="score")
    graph.add_leaf_node(loss(weight=2.0), parent="score", name="square")
    dm = ArrayDataModule(cubes, batch_size=2, val_on_train=True)
    return graph.test(dm, split="val", accelerator="cpu")


def test_evaluation_losses_and_components_are_means_weighted_by_batch_size() -> None:
    cubes = _cubes()
    values = _evaluate(cubes)
    scores = cubes.astype(np.float64).mean(axis=-1)
    batches = [scores[0:2], scores[2:4], scores[4:5]]
    sizes = np.array([len(b) for b in batches], dtype=np.float64)

    def weighted(per_batch: list[float]) -> float:
        return float(np.dot(sizes, per_batch) / sizes.sum())

    loss = weighted([2.0 * np.mean(b ** 2) for b in batches])
    assert values["val/loss"] == pytest.approx(loss, rel=1e-6)
    assert values["val/loss/square"] == pytest.approx(loss, rel=1e-6)
    assert values["val/loss/square/mean"] == pytest.approx(weighted([b.mean() for b in batches]), rel=1e-5)
    assert values["val/loss/square/max"] == pytest.approx(weighted([b.max() for b in batches]), rel=1e-6)
    unweighted = float(np.mean([2.0 * np.mean(b ** 2) for b in batches]))
    assert abs(unweighted - loss) > 1e-3 * loss  # the weighting matters on this data


def test_a_non_finite_evaluation_loss_stays_in_the_mean() -> None:
    values = _evaluate(_cubes(), NaNOnLargeScores)
    assert math.isnan(values["val/loss"]) and math.isnan(values["val/loss/square"])


def test_contract_methods_have_defaults_on_the_base_classes() -> None:
    node = ChannelMean()
    assert node.input_channels() is None and node.logged_values() == {}
    assert node.affine_coefficients() is None and node.is_decider is False
    assert Node.folds_affine_inputs == () and LossNode.components(SquareWithParts()) == {}
    assert "components" in inspect.getdoc(LossNode) and "is_decider" in inspect.getdoc(Node)
