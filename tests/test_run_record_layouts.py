"""Runs recorded by earlier versions: a graph trained from Python was recorded in ``config.yaml``
as lists (``nodes: [{name, type, params, parents: {port: [labels]}}]``); such a run resumes
as if it had been recorded in today's layout (``nodes: {name: {type, params, parent}}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from runs_helpers import build_graph, config, datamodule

from cuvis_graph import Graph
from cuvis_graph.core.node import Node
from cuvis_graph.io.plain import plain
from cuvis_graph.io.resume_check import ResumeError
from cuvis_graph.io.run_config import pipeline_summary, recorded_pipeline
from cuvis_graph.io.runs import read_run_json


class Scaled(Node):
    """A node class of the user's script, never registered."""

    def __init__(self, factor: float = 2.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _params(obj: Any) -> dict[str, Any]:
    return plain(obj.hparams())


def test_the_list_layout_reads_as_todays_layout(tmp_path: Path) -> None:
    from cuvis_graph import nodes
    from cuvis_graph.monitors.file import FileMonitor

    graph = Graph("layouts")
    norm = graph.add_node(nodes.MinMaxNormalizer(), name="norm")
    scaled = graph.add_node(Scaled(3.0), parent=norm, name="scaled")
    graph.add_node(nodes.ConcatChannels(), parent=[norm, scaled], name="cat")
    rx = graph.add_node(nodes.RXGlobal(eps=1e-6), parent={"x": "cat", "mask": "batch.mask"}, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.register_monitor(FileMonitor(root=tmp_path / "monitor"))
    n = graph.nodes
    # what cuvis-graph wrote for this graph before the pipeline-file layout (class names as types,
    # every port's parents as a list, leaves' parent as "parents", monitors without names)
    old = {"name": "layouts",
           "nodes": [{"name": "norm", "type": "MinMaxNormalizer", "params": _params(n["norm"]), "parents": {}},
                     {"name": "scaled", "type": "Scaled", "params": {"factor": 3.0}, "parents": {"x": ["norm"]}},
                     {"name": "cat", "type": "ConcatChannels", "params": {}, "parents": {"x": ["norm", "scaled"]}},
                     {"name": "rx", "type": "RXGlobal", "params": _params(n["rx"]),
                      "parents": {"x": ["cat"], "mask": ["batch.mask"]}},
                     {"name": "head", "type": "RXLogitHead", "params": _params(n["head"]),
                      "parents": {"scores": ["rx"]}}],
           "leaves": [{"name": "bce", "type": "AnomalyBCEWithLogits", "params": _params(graph.leaves["bce"]),
                       "parents": "head"}],
           "monitors": [{"type": "FileMonitor", "params": _params(graph.monitors[0])}]}
    today = yaml.safe_load(yaml.safe_dump(pipeline_summary(graph)))
    assert today["nodes"]["cat"] == {"type": "ConcatChannels", "parent": ["norm", "scaled"]}  # the layout compared to
    assert today["nodes"]["rx"]["parents"] == {"x": "cat", "mask": "batch.mask"}
    assert recorded_pipeline(old, today) == today
    assert recorded_pipeline(today, today) == today  # today's layout is read as it is
    without = recorded_pipeline(old, None)  # nothing to take the monitor's name from
    assert list(without["monitors"]) == ["filemonitor_0"] and without["nodes"] == today["nodes"]


def _old_layout(graph: Graph) -> dict[str, Any]:
    """The record of ``graph`` as cuvis-graph wrote it before the pipeline-file layout."""
    structure = graph.structure

    def entry(name: str, obj: Any, parents: Any) -> dict[str, Any]:
        return {"name": name, "type": type(obj).__name__, "params": _params(obj), "parents": parents}

    return {"name": graph.name,
            "nodes": [entry(n, e.node, e.labels()) for n, e in structure.nodes.items()],
            "leaves": [entry(n, e.leaf, e.parent.label()) for n, e in structure.leaves.items()],
            "monitors": [{"type": type(m).__name__, "params": _params(m)} for m in structure.monitors]}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A 2-epoch Python-trained run whose ``config.yaml`` holds the list layout."""
    run_dir = tmp_path / "run"
    graph = build_graph()
    graph.train(datamodule(), config(2), run_dir=run_dir)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    recorded["pipeline"] = _old_layout(graph)
    assert isinstance(recorded["pipeline"]["nodes"], list) and recorded["pipeline"]["monitors"] == []
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    return run_dir


def test_a_run_recorded_in_the_list_layout_resumes(old_run: Path) -> None:
    result = build_graph().train(datamodule(), config(3), resume=old_run)
    assert result.run_dir == old_run
    assert result.fit.passes == 0 and result.trainer.current_epoch == 3  # continued from its checkpoint
    record = read_run_json(old_run)
    assert [a["status"] for a in record["attempts"]] == ["completed", "completed"]
    assert isinstance(yaml.safe_load((old_run / "config.yaml").read_text())["pipeline"]["nodes"], dict)


def test_a_changed_graph_is_still_refused_against_a_list_layout_record(old_run: Path) -> None:
    from cuvis_graph import nodes

    changed = Graph("tiny_rx")  # build_graph() but RX's eps: the record says 1e-12
    norm = changed.add_node(nodes.MinMaxNormalizer(), name="norm")
    rx = changed.add_node(nodes.RXGlobal(eps=1e-3, trainable_stats=True), parent=norm, name="rx")
    head = changed.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    changed.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    changed.add_leaf_node(nodes.AnomalyDetectionMetrics(), parent=head, name="det")
    before = (old_run / "run.json").read_bytes()
    with pytest.raises(ResumeError, match=r"nodes\.rx\.params\.eps: 1e-12 -> 0\.001"):
        changed.train(datamodule(), config(4), resume=old_run)
    assert (old_run / "run.json").read_bytes() == before  # refused before anything was written
