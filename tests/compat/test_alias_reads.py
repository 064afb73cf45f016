"""The alternative names of ARGUMENT_ALIASES read back the primary attribute."""

from __future__ import annotations

from pathlib import Path

import cuvis_graph.nodes as nodes
import pytest

import cuvis_graph.monitors as monitors


def test_an_alternative_name_reads_the_value_given_under_it(tmp_path, alias_cases):
    checked = 0
    for cls_name, cls, alternative, primary, value in alias_cases:
        if cls_name == "TensorBoardMonitor" and alternative == "log_dir":
            continue  # its own property: the event-file folder of the logger
        value = str(tmp_path / "m") if primary == "root" else value
        obj = cls(**{alternative: value})
        expected = Path(value) if primary == "root" else value
        assert getattr(obj, alternative) == expected, (cls_name, alternative)
        checked += 1
    assert checked >= 7


def test_the_read_alias_is_read_only_and_follows_the_primary():
    viz = nodes.PCAVisualization(max_samples=11)
    assert (viz.max_samples, viz.subsample, viz.max_points) == (11, 11, 11)
    viz.max_points = 20
    assert viz.max_samples == 20
    with pytest.raises(AttributeError):
        viz.max_samples = 5


def test_an_attribute_the_class_defines_is_not_replaced():
    from cuvis_graph.core.leaves import VisualizationNode

    tensorboard_log_dir = monitors.TensorBoardMonitor.__dict__["log_dir"].fget
    assert tensorboard_log_dir.__qualname__ == "TensorBoardMonitor.log_dir"
    log_every = VisualizationNode.__dict__["log_every_n_epochs"].fget
    assert log_every.__qualname__ == "VisualizationNode.log_every_n_epochs"
