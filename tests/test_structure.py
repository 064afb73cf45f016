"""The graph's public structure view, the pure compile, the one serializer, and graph + stage
problems reported together."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    SelectorEntropyRegularizer,
    SoftChannelSelector,
)

from cuvis_graph import Graph, Node, TrainingConfig
from cuvis_graph.core.plan import DataSpec
from cuvis_graph.core.structure import ParentRef
from cuvis_graph.errors import CompileError
from cuvis_graph.io.run_config import pipeline_summary
from cuvis_graph.io.spec import SpecError

DATA = DataSpec(n_channels=12, batch_keys=frozenset({"cube", "mask"}))


def selector_graph() -> tuple[Graph, SoftChannelSelector, SelectorEntropyRegularizer]:
    graph = Graph("selector_rx")
    sel = graph.add_node(SoftChannelSelector(n_select=4), name="sel")
    rx = graph.add_node(RXGlobal(trainable_stats=True), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    entropy = graph.add_leaf_node(SelectorEntropyRegularizer(), parent=sel, name="entropy")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head, name="det")
    return graph, sel, entropy


def _state(graph: Graph) -> dict[str, dict[str, tuple]]:
    """Every node's and leaf's state dict and parameter list (name, shape, requires_grad)."""
    out = {}
    for name, obj in {**graph.nodes, **graph.leaves}.items():
        out[name] = {
            "state": {k: (tuple(v.shape), v.dtype, v.detach().clone()) for k, v in obj.state_dict().items()},
            "params": [(k, tuple(p.shape), p.requires_grad) for k, p in obj.named_parameters()],
        }
    return out


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert before[name]["params"] == after[name]["params"], name
        assert before[name]["state"].keys() == after[name]["state"].keys(), name
        for key, (shape, dtype, value) in before[name]["state"].items():
            shape2, dtype2, value2 = after[name]["state"][key]
            assert (shape, dtype) == (shape2, dtype2), f"{name}.{key}"
            assert torch.equal(value, value2), f"{name}.{key}"


# -- compile is pure -------------------------------------------------------------------------------
def test_validate_leaves_state_dicts_parameters_and_leaf_parents_unchanged():
    graph, sel, entropy = selector_graph()
    before = _state(graph)
    for _ in range(2):
        plan = graph.validate(DATA)
        graph.validate()
        graph.describe(DATA)
    assert plan.output_dims["sel"]["out"] == (None, None, None, 12)  # it did see the channels
    _assert_same(before, _state(graph))
    assert sel.logits.numel() == 0 and sel.n_channels is None
    with pytest.raises(Exception, match="has no parent node"):
        _ = entropy.parent


def test_the_build_step_after_compile_creates_the_logits_and_binds_parents():
    graph, sel, entropy = selector_graph()
    before = _state(graph)
    graph.compile(DATA)
    after = _state(graph)
    assert before["sel"]["params"] == [("logits", (0,), True)]
    assert after["sel"]["params"] == [("logits", (12,), True)]  # uniform init: zeros
    assert torch.equal(sel.logits.detach(), torch.zeros(12))
    assert entropy.parent is sel
    graph.compile(DATA)  # once built, building again changes nothing
    _assert_same(after, _state(graph))


def test_validate_still_reports_what_building_would_refuse():
    graph = Graph("too_many")
    sel = graph.add_node(SoftChannelSelector(n_select=20), name="sel")
    with pytest.raises(CompileError, match="node 'sel': shape mismatch: n_select=20 exceeds the C=12"):
        graph.validate(DATA)
    assert sel.logits.numel() == 0


# -- the structure view ---------------------------------------------------------------------------
def test_structure_lists_nodes_with_wiring_leaves_monitors_and_problems():
    graph, sel, _ = selector_graph()
    graph.add_node(MinMaxNormalizer(), parent={"x": "batch.cube"}, name="rx")  # a duplicate name
    s = graph.structure
    assert list(s.nodes) == ["sel", "rx", "head", "rx#1"] and s.name == "selector_rx"
    assert s.nodes["sel"].node is sel and dict(s.nodes["sel"].wiring) == {}
    assert s.nodes["rx"].labels() == {"x": ["sel"]}
    assert s.nodes["rx#1"].labels() == {"x": ["batch.cube"]}
    assert {n: e.parent.label() for n, e in s.leaves.items()} == {"bce": "head", "entropy": "sel", "det": "head"}
    assert s.monitors == () and [str(p) for p in s.problems] == [
        "node 'rx': duplicate name: another node or leaf has it"]


def test_structure_view_is_immutable_and_a_snapshot():
    graph, sel, _ = selector_graph()
    s = graph.structure
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nodes["rx"].node = sel
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.leaves["bce"].parent = ParentRef(name="sel")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nodes["rx"].wiring["x"][0].name = "sel"
    with pytest.raises(TypeError):
        s.nodes["extra"] = s.nodes["rx"]
    with pytest.raises(TypeError):
        del s.leaves["bce"]
    with pytest.raises(TypeError):
        s.nodes["rx"].wiring["x"] = ()
    with pytest.raises(AttributeError):
        s.nodes["rx"].wiring["x"].append(ParentRef(name="sel"))  # a tuple
    with pytest.raises(AttributeError):
        s.problems.append(None)
    graph.add_node(MinMaxNormalizer(), parent="head", name="late")
    assert "late" not in s.nodes and "late" in graph.structure.nodes
    assert graph.compile(DATA).node_names == ["sel", "rx", "head", "late"]  # the graph itself is unchanged


# -- one serializer ----------------------------------------------------------------------------------
def test_yaml_writer_and_run_record_are_one_serializer():
    graph, _, _ = selector_graph()
    graph.add_node(MinMaxNormalizer(), parent={"x": ["batch.cube"]}, name="norm")
    written = yaml.safe_load(graph.to_yaml())
    assert pipeline_summary(graph) == written
    assert written["nodes"]["rx"] == {"type": "RXGlobal", "params": RXGlobal(trainable_stats=True).hparams(),
                                      "parent": "sel"}
    assert written["leaves"]["entropy"]["parent"] == "sel" and "sel" not in written["nodes"]["sel"]
    rebuilt = Graph.from_yaml(written)
    assert pipeline_summary(rebuilt) == written


class Unregistered(Node):
    def __init__(self, scale: object = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_run_record_stands_in_for_what_a_pipeline_file_cannot_hold():
    graph = Graph("custom")
    graph.add_node(Unregistered(scale=complex(1, 2)), name="odd")
    with pytest.raises(SpecError, match="nodes.odd: Unregistered is not registered"):
        graph.to_yaml()
    assert pipeline_summary(graph) == {"name": "custom", "nodes": {"odd": {"type": "Unregistered",
                                                                          "params": {"scale": "(1+2j)"}}}}


def test_run_record_of_a_graph_trained_from_python_is_its_yaml(tmp_path):
    graph, _, _ = selector_graph()
    from cuvis_graph.data import SyntheticHSIDataModule

    data = SyntheticHSIDataModule(n_train=2, n_val=0, n_test=0, height=8, width=8, n_bands=12, batch_size=2)
    result = graph.train(data, {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}},
                         run_dir=tmp_path / "run")
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())["pipeline"]
    assert recorded == yaml.safe_load(graph.to_yaml())


# -- graph and stage problems together -------------------------------------------------------------
def test_train_reports_graph_and_stage_problems_in_one_compile_error(tmp_path):
    graph, _, _ = selector_graph()
    graph.add_node(MinMaxNormalizer(), parent="haed", name="norm")
    config = TrainingConfig.model_validate({"stages": [
        {"name": "warmup", "max_epochs": 1, "trainable": ["sle"], "losses": ["det"]},
        {"name": "refit", "max_epochs": 0, "refit": ["sel"]}]})
    with pytest.raises(CompileError) as err:
        graph.train(None, config, runs_root=tmp_path)
    assert [str(p) for p in err.value.problems] == [
        "node 'norm' port 'x': unknown parent 'haed' (did you mean 'head'?)",
        "training.stages.0.trainable: no node 'sle' in graph 'selector_rx' (did you mean 'sel'?)",
        "training.stages.0.losses: leaf 'det' is a AnomalyDetectionMetrics, not a loss",
        "training.stages.1.refit: node 'sel' (SoftChannelSelector) has no statistics to fit",
    ]
    assert str(err.value).startswith("graph 'selector_rx': 4 problems found")
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_resume_check_reads_the_python_record_as_every_parameter(tmp_path):
    """A parameter on one side only of a graph trained from Python is a field a newer version
    added (its record lists every parameter); in a pipeline file's record it is a change."""
    from types import SimpleNamespace

    from cuvis_graph.io.resume_check import ResumeError, check_continuation

    graph, _, _ = selector_graph()
    training = TrainingConfig().model_dump(mode="json")
    summary = pipeline_summary(graph)
    recorded = yaml.safe_load(yaml.safe_dump(summary))
    del recorded["nodes"]["rx"]["params"]["eps"]
    run = SimpleNamespace(path=tmp_path, resuming=True, record={"status": "running"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pipeline": recorded, "training": training}))
    check_continuation(run, training, summary)  # continues
    from_file = {**summary, "training": training}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pipeline": {**recorded, "training": training},
                                                          "training": training}))
    with pytest.raises(ResumeError, match=r"nodes.rx.params.eps: '\(absent\)' -> "):
        check_continuation(run, training, from_file)
