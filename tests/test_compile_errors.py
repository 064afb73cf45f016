"""Malformed graphs fail at compile time, before data flows, naming the node/port/leaf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    ConcatChannels,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    StandardNormalizer,
)

from cuvis_graph import CompileError, Graph, GraphDataModule, LeafNode, Node, PortSpec
from cuvis_graph.core.plan import DataSpec


# -- tiny test nodes ----------------------------------------------------------------------
class FiveChannels(Node):
    """Reads the cube but insists on exactly 5 channels."""

    INPUTS = {"x": PortSpec(("B", "H", "W", 5), batch_key="cube")}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", 5))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ThreeScores(Node):
    """Expects a 3-channel input."""

    INPUTS = {"x": PortSpec(("B", "H", "W", 3))}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", 3))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Image(Node):
    """Expects a rank-3 ``[B, H, W]`` input."""

    INPUTS = {"x": PortSpec(("B", "H", "W"))}
    OUTPUTS = {"out": PortSpec(("B", "H", "W"))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SameChannels(Node):
    """Two inputs that must share the channel count ``C``."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C")), "y": PortSpec(("B", "H", "W", "C"))}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "C"))}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class TwoOutputs(Node):
    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}
    OUTPUTS = {"low": PortSpec(("B", "H", "W", "C")), "high": PortSpec(("B", "H", "W", "C"))}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"low": x.clamp(max=0), "high": x.clamp(min=0)}


class NeedsRX(LeafNode):
    """A leaf for RX parents with a ``temperature`` attribute."""

    compatible_parent_types = (RXGlobal,)
    required_parent_attributes = ("temperature",)


class NeedsRank3(LeafNode):
    parent_output_rank = 3


# -- helpers ------------------------------------------------------------------------------
def cubes(c: int = 7, masks: bool = False) -> GraphDataModule:
    x = np.zeros((2, 3, 3, c), np.float32)
    return GraphDataModule.from_arrays(x, masks=np.zeros((2, 3, 3), np.int64) if masks else None)


def compile_error(graph: Graph, datamodule=None, for_training: bool = False) -> CompileError:
    with pytest.raises(CompileError) as info:
        graph.compile(datamodule, for_training=for_training)
    err = info.value
    assert str(err).startswith(f"graph '{graph.name}': {len(err.problems)} problem")
    return err


def only_problem(err: CompileError) -> str:
    assert len(err.problems) == 1, str(err)
    return str(err.problems[0])


# -- wiring -------------------------------------------------------------------------------
def test_unknown_parent_with_hint():
    g = Graph("g")
    g.add_node(RXGlobal(), name="rx_global")
    g.add_node(RXLogitHead(), parent="rx_globl", name="head")
    msg = only_problem(compile_error(g))
    assert "node 'head' port 'scores'" in msg
    assert "unknown parent 'rx_globl'" in msg
    assert "(did you mean 'rx_global'?)" in msg


def test_unknown_parent_without_close_name_has_no_hint():
    g = Graph("g")
    g.add_node(RXGlobal(), name="rx_global")
    g.add_node(RXLogitHead(), parent="zzz", name="head")
    msg = only_problem(compile_error(g))
    assert "unknown parent 'zzz'" in msg and "did you mean" not in msg


def test_cycle_names_the_loop():
    g = Graph("g")
    g.add_node(StandardNormalizer(), parent="b", name="a")
    g.add_node(MinMaxNormalizer(), parent="a", name="b")
    msg = only_problem(compile_error(g))
    assert "cycle" in msg
    assert "a -> b -> a" in msg or "b -> a -> b" in msg


def test_three_node_cycle():
    g = Graph("g")
    g.add_node(StandardNormalizer(), parent="c", name="a")
    g.add_node(StandardNormalizer(), parent="a", name="b")
    g.add_node(StandardNormalizer(), parent="b", name="c")
    g.add_node(RXGlobal(), parent="c", name="rx")  # outside the loop
    msg = only_problem(compile_error(g))
    assert any(loop in msg for loop in ("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"))
    assert "rx" not in msg


def test_parent_that_is_a_leaf():
    g = Graph("g")
    head = g.add_node(RXLogitHead(), parent=g.add_node(RXGlobal(), name="rx"), name="head")
    g.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    g.add_node(StandardNormalizer(), parent="bce", name="norm")
    msg = only_problem(compile_error(g))
    assert "node 'norm' port 'x'" in msg and "'bce' is a leaf" in msg


def test_unknown_input_port_in_dict_parent():
    g = Graph("g")
    norm = g.add_node(StandardNormalizer(), name="norm")
    g.add_node(RXGlobal(), parent={"xx": norm}, name="rx")
    msg = only_problem(compile_error(g))
    assert "node 'rx' port 'xx'" in msg
    assert "no input port 'xx'" in msg and "did you mean 'x'" in msg
    assert "['mask', 'x']" in msg


def test_duplicate_node_name():
    g = Graph("g")
    g.add_node(StandardNormalizer(), name="norm")
    g.add_node(MinMaxNormalizer(), name="norm")
    msg = only_problem(compile_error(g))
    assert "node 'norm'" in msg and "duplicate name" in msg


def test_reserved_name():
    g = Graph("g")
    g.add_node(StandardNormalizer(), name="batch")
    msg = only_problem(compile_error(g))
    assert "node 'batch'" in msg and "invalid name" in msg


def test_node_not_added_to_the_graph():
    g = Graph("g")
    stray = RXGlobal(name="stray")
    g.add_node(RXLogitHead(), parent=stray, name="head")
    msg = only_problem(compile_error(g))
    assert "node 'head' port 'scores'" in msg
    assert "'stray' is not a node of this graph" in msg


def test_several_outputs_are_ambiguous():
    g = Graph("g")
    two = g.add_node(TwoOutputs(), name="two")
    g.add_node(StandardNormalizer(), parent=two, name="norm")
    g.add_node(MinMaxNormalizer(), parent=(two, "middle"), name="mm")
    err = compile_error(g)
    assert len(err.problems) == 2
    msg = str(err)
    assert "node 'norm' port 'x': parent 'two' has several outputs ['high', 'low']; name one as 'two.<port>'" in msg
    assert "node 'mm' port 'x': parent 'two' has no output port 'middle'" in msg


def test_naming_the_output_port_resolves_the_ambiguity():
    g = Graph("g")
    two = g.add_node(TwoOutputs(), name="two")
    g.add_node(StandardNormalizer(), parent=(two, "high"), name="norm")
    g.add_node(MinMaxNormalizer(), parent="two.low", name="mm")
    plan = g.compile(cubes())
    assert str(plan.step("norm").inputs["x"]) == "two.high"
    assert str(plan.step("mm").inputs["x"]) == "two.low"


def test_required_input_not_connected():
    g = Graph("g")
    g.add_node(ThreeScores(), name="three")  # no parent and no batch_key default
    msg = only_problem(compile_error(g))
    assert "node 'three' port 'x'" in msg and "required input is not connected" in msg


def test_several_parents_on_a_single_port():
    g = Graph("g")
    a = g.add_node(StandardNormalizer(), name="a")
    b = g.add_node(MinMaxNormalizer(), name="b")
    g.add_node(RXGlobal(), parent={"x": [a, b]}, name="rx")
    msg = only_problem(compile_error(g))
    assert "node 'rx' port 'x'" in msg and "takes one parent, got 2" in msg


# -- shapes -------------------------------------------------------------------------------
def test_channel_mismatch_with_declared_cube():
    g = Graph("g")
    g.add_node(FiveChannels(), name="five")
    msg = only_problem(compile_error(g, cubes(c=7)))
    assert "node 'five'" in msg and "port 'x'" in msg
    assert "expects size 5, got 7" in msg
    g.compile(cubes(c=5))  # the same graph is fine on 5-channel data
    g.compile()  # and unknown channel counts are not an error


def test_fixed_size_mismatch_after_rx():
    g = Graph("g")
    rx = g.add_node(RXGlobal(), name="rx")
    g.add_node(ThreeScores(), parent=rx, name="three")
    msg = only_problem(compile_error(g))  # RX scores are [B,H,W,1] whatever the data
    assert "node 'three'" in msg and "expects size 3, got 1" in msg


def test_rank_mismatch():
    g = Graph("g")
    norm = g.add_node(StandardNormalizer(), name="norm")
    g.add_node(Image(), parent=norm, name="img")
    msg = only_problem(compile_error(g, cubes()))
    assert "node 'img'" in msg and "expects rank 3" in msg and "rank 4" in msg


def test_symbolic_channels_must_agree_across_ports():
    g = Graph("g")
    norm = g.add_node(StandardNormalizer(), name="norm")
    rx = g.add_node(RXGlobal(), parent=norm, name="rx")
    g.add_node(SameChannels(), parent={"x": norm, "y": rx}, name="both")
    msg = only_problem(compile_error(g, cubes(c=7)))
    assert "node 'both'" in msg and "C=1 disagrees with C=7" in msg


def test_concat_channels_feed_the_declared_size():
    g = Graph("g")
    a = g.add_node(StandardNormalizer(), name="a")
    b = g.add_node(MinMaxNormalizer(), name="b")
    cat = g.add_node(ConcatChannels(), parent=[a, b], name="cat")
    g.add_node(FiveChannels(), parent=cat, name="five")
    assert "expects size 5, got 6" in only_problem(compile_error(g, cubes(c=3)))
    with pytest.raises(CompileError, match="got 14"):  # 7 + 7 channels: also wrong
        g.compile(cubes(c=7))


# -- leaves -------------------------------------------------------------------------------
def test_leaf_on_incompatible_parent_type_and_missing_attribute():
    g = Graph("g")
    norm = g.add_node(StandardNormalizer(), name="norm")
    rx = g.add_node(RXGlobal(), parent=norm, name="rx")
    g.add_leaf_node(NeedsRX(), parent=norm, name="on_norm")
    g.add_leaf_node(NeedsRX(), parent=rx, name="on_rx")
    err = compile_error(g)
    msgs = [str(p) for p in err.problems]
    assert len(msgs) == 3, msgs
    assert any("leaf 'on_norm'" in m and "is a StandardNormalizer" in m and "RXGlobal" in m for m in msgs)
    assert any("leaf 'on_norm'" in m and "no attribute 'temperature'" in m for m in msgs)
    assert any("leaf 'on_rx'" in m and "'rx' (RXGlobal) has no attribute 'temperature'" in m for m in msgs)


def test_leaf_parent_rank():
    g = Graph("g")
    rx = g.add_node(RXGlobal(), name="rx")
    g.add_leaf_node(NeedsRank3(), parent=rx, name="r3")
    msg = only_problem(compile_error(g))
    assert "leaf 'r3'" in msg and "rank 3" in msg and "rx.scores" in msg


def test_leaf_with_unknown_parent():
    g = Graph("g")
    g.add_node(RXGlobal(), name="rx_global")
    g.add_leaf_node(AnomalyBCEWithLogits(), parent="rx_glob", name="bce")
    msg = only_problem(compile_error(g))
    assert "leaf 'bce' (AnomalyBCEWithLogits)" in msg and "did you mean 'rx_global'" in msg


def test_leaf_needs_mask_the_datamodule_lacks():
    g = Graph("g")
    head = g.add_node(RXLogitHead(), parent=g.add_node(RXGlobal(), name="rx"), name="head")
    g.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    msg = only_problem(compile_error(g, cubes(masks=False)))
    assert "leaf 'bce'" in msg and "needs batch key 'mask'" in msg and "['cube']" in msg
    g.compile(cubes(masks=True))  # fine once masks are declared


# -- training -----------------------------------------------------------------------------
def test_loss_without_trainable_parameters():
    g = Graph("g")
    head = g.add_node(RXLogitHead(trainable=False), parent=g.add_node(RXGlobal(), name="rx"), name="head")
    g.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    dm = cubes(masks=True)
    g.compile(dm)  # statistics only: fine
    msg = only_problem(compile_error(g, dm, for_training=True))
    assert msg.startswith("training:") and "no node has trainable parameters" in msg
    with pytest.raises(CompileError, match="no node has trainable parameters"):
        g.train(dm, {"trainer": {"max_epochs": 1, "enable_progress_bar": False}})
    assert not g["rx"].is_fitted  # raised before any data was read


def test_trainable_parameters_without_loss():
    g = Graph("g")
    g.add_node(RXLogitHead(), parent=g.add_node(RXGlobal(), name="rx"), name="head")
    msg = only_problem(compile_error(g, cubes(), for_training=True))
    assert "['head'] have trainable parameters" in msg and "no loss leaf" in msg


# -- all problems at once -----------------------------------------------------------------
def test_three_independent_problems_are_reported_together():
    g = Graph("three")
    g.add_node(StandardNormalizer(), name="norm")
    g.add_node(MinMaxNormalizer(), name="norm")  # 1: duplicate name
    g.add_node(RXGlobal(), name="rx_global")
    g.add_node(RXLogitHead(), parent="rx_globl", name="head")  # 2: unknown parent
    g.add_node(FiveChannels(), name="five")  # 3: 7 channels into a 5-channel port
    err = compile_error(g, cubes(c=7))
    assert len(err.problems) == 3, str(err)
    msg = str(err)
    assert msg.startswith("graph 'three': 3 problems found")
    assert "node 'norm'" in msg and "duplicate name" in msg
    assert "node 'head' port 'scores'" in msg and "did you mean 'rx_global'" in msg
    assert "node 'five'" in msg and "expects size 5, got 7" in msg


# -- validate and describe --------------------------------------------------------------
def test_validate_without_data_and_describe():
    g = Graph("ok")
    norm = g.add_node(MinMaxNormalizer(), name="norm")
    rx = g.add_node(RXGlobal(), parent=norm)  # auto-named rx_global_0
    head = g.add_node(RXLogitHead(), parent=rx, name="head")
    g.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    plan = g.validate()
    assert plan.node_names == ["norm", "rx_global_0", "head"]
    assert not any(g[n].is_fitted for n in plan.node_names)  # nothing was fitted or read
    assert [b.name for b in plan.leaves] == ["bce"]
    assert str(plan.leaves[0].target) == "batch.mask"

    table = g.describe()
    lines = table.splitlines()
    assert lines[0] == "graph 'ok'"
    for name, typ in [("norm", "MinMaxNormalizer"), ("rx_global_0", "RXGlobal"), ("head", "RXLogitHead"),
                      ("bce", "AnomalyBCEWithLogits")]:
        row = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert row is not None, (name, table)
        assert row.split()[1] == typ
    assert "does not compile" not in table
    assert "out[?,?,?,?]" in table  # no data: channels unknown
    assert "out[?,?,?,7]" in g.describe(DataSpec(n_channels=7, batch_keys=frozenset({"cube", "mask"})))


def test_describe_of_a_broken_graph_still_lists_nodes():
    g = Graph("broken")
    g.add_node(RXLogitHead(), parent="nowhere", name="head")
    table = g.describe()
    assert "head" in table and "RXLogitHead" in table
    assert "does not compile: 1 problem(s)" in table


def test_a_graph_fitted_for_other_channels_is_refused_once_naming_both_counts() -> None:
    """A fitted normalizer -> RX, validated or run on data of another channel count: one problem
    at the first fitted node (its children are checked as if it had got its C)."""
    from cuvis_graph import TrainerConfig, TrainingConfig
    from cuvis_graph.data import SyntheticHSIDataModule

    graph = Graph("fitted")
    graph.add_node(RXGlobal(), parent=graph.add_node(MinMaxNormalizer(), name="norm"), name="rx")
    data = SyntheticHSIDataModule(n_train=2, n_val=1, n_test=0, height=8, width=8, n_bands=6)
    graph.train(data, TrainingConfig(trainer=TrainerConfig(max_epochs=0, enable_progress_bar=False)), run_dir=False)
    graph.validate(DataSpec(n_channels=6))  # its own C: no problem
    with pytest.raises(CompileError) as info:
        graph.validate(DataSpec(n_channels=4))
    assert [p.where for p in info.value.problems] == ["node 'norm' port 'x'"]
    assert "fitted for 6 input channels, here it gets 4" in str(info.value)
    with pytest.raises(CompileError, match="fitted for 6 input channels, here it gets 5"):
        graph.predict(torch.rand(8, 8, 5))
