"""Pay only for what you use: importing the package, building and validating a graph, and the
``--help``, ``validate``, ``show`` and ``nodes`` commands import no Lightning, TensorBoard,
W&B or matplotlib. Each case runs in a fresh interpreter and lists the heavy modules it loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lightning", "pytorch_lightning", "lightning_fabric", "tensorboard", "wandb", "matplotlib")

PIPELINE = ROOT / "pipelines" / "selector_rx_staged.yaml"
#: a pipeline with an AnomalyHeatmap leaf (its colormap is checked without matplotlib)
HEATMAP_PIPELINE = ROOT / "pipelines" / "selector_rx_bce.yaml"


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy top-level packages then in sys.modules."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print("LOADED=" + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED="))
    return json.loads(line.removeprefix("LOADED="))


def _cli(*argv: str) -> str:
    return f"""
        from cuvis_graph.cli import main
        try:
            status = main({list(argv)!r})
        except SystemExit as exc:
            status = exc.code
        assert status in (0, None), status
    """


@pytest.mark.parametrize("code", [
    "import cuvis_graph",
    "import cuvis_graph.nodes",
    "from cuvis_graph import Graph, GraphDataModule, TrainingConfig, SyntheticHSIDataModule",
], ids=["import", "import-nodes", "public-names"])
def test_importing_loads_nothing_heavy(code: str) -> None:
    assert _loaded_after(code) == []


def test_building_and_validating_a_graph_loads_nothing_heavy() -> None:
    code = """
        from cuvis_graph import Graph, SyntheticHSIDataModule
        from cuvis_graph.nodes import (AnomalyBCEWithLogits, AnomalyDetectionMetrics, MinMaxNormalizer, RXGlobal,
                                       RXLogitHead, ScoreHistogram, SoftChannelSelector)
        graph = Graph("lazy")
        norm = graph.add_node(MinMaxNormalizer())
        sel = graph.add_node(SoftChannelSelector(n_select=4), parent=norm)
        rx = graph.add_node(RXGlobal(), parent=sel)
        head = graph.add_node(RXLogitHead(), parent=rx)
        graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head)
        graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head)
        graph.add_leaf_node(ScoreHistogram(), parent=rx)
        graph.validate(SyntheticHSIDataModule(n_train=2, n_val=1, n_test=0, n_bands=12))
    """
    assert _loaded_after(code) == []


@pytest.mark.parametrize("argv", [
    ("--help",),
    ("validate", "--help"),
    ("validate", str(PIPELINE)),
    ("validate", str(HEATMAP_PIPELINE)),
    ("show", str(PIPELINE)),
    ("show", str(HEATMAP_PIPELINE)),
    ("show", str(ROOT / "pipelines" / "pca_gradient.yaml"), "--format", "mermaid"),
    ("nodes",),
    ("nodes", "--markdown"),
], ids=["help", "validate-help", "validate", "validate-heatmap", "show", "show-heatmap", "show-mermaid", "nodes",
        "nodes-markdown"])
def test_commands_that_do_not_train_load_nothing_heavy(argv: tuple[str, ...]) -> None:
    assert _loaded_after(_cli(*argv)) == []


def test_a_heatmap_with_a_builtin_colormap_is_built_without_matplotlib() -> None:
    code = """
        from cuvis_graph.nodes import AnomalyHeatmap
        for cmap in ("inferno", "viridis_r", "gray", "twilight_shifted"):
            assert AnomalyHeatmap(cmap=cmap).cmap == cmap
    """
    assert _loaded_after(code) == []


def test_validating_the_heatmap_pipeline_generates_no_scene_and_imports_no_scipy() -> None:
    code = f"""
        import sys
        from cuvis_graph.io.spec import load_pipeline
        load_pipeline({str(HEATMAP_PIPELINE)!r})
        assert not any(m.split(".")[0] == "scipy" for m in sys.modules)  # scenes are drawn with scipy
    """
    assert _loaded_after(code) == []


def test_graph_datamodule_is_still_public_and_becomes_a_lightning_datamodule_for_training() -> None:
    code = """
        import numpy as np
        from cuvis_graph import GraphDataModule
        dm = GraphDataModule.from_arrays(np.zeros((2, 8, 8, 3), dtype=np.float32))
        assert dm.data_spec().n_channels == 3
        import lightning.pytorch as pl
        view = dm.to_lightning()
        assert isinstance(view, pl.LightningDataModule) and view.data is dm
        assert view.data_spec() == dm.data_spec()  # attributes are the datamodule's
        assert len(list(view.train_dataloader())) == 1  # batch_size 4 over 2 cubes
    """
    assert "lightning" in _loaded_after(code)


def test_quiet_lightning_leaves_the_callers_warning_filters_and_loggers_as_they_were() -> None:
    import logging
    import os

    from cuvis_graph.train.quiet import QUIET_LOGGERS, quiet_lightning

    before_filters = list(warnings.filters)
    before_levels = [logging.getLogger(name).level for name in QUIET_LOGGERS]
    before_env = os.environ.get("POSSIBLE_USER_WARNINGS")
    with quiet_lightning():
        assert len(warnings.filters) > len(before_filters)
        with pytest.warns(UserWarning, match="something else"):
            warnings.warn("something else", UserWarning, stacklevel=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1)
        assert caught == []
        assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)
    assert warnings.filters == before_filters
    assert [logging.getLogger(name).level for name in QUIET_LOGGERS] == before_levels
    assert os.environ.get("POSSIBLE_USER_WARNINGS") == before_env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1)
    assert len(caught) == 1  # outside the block the warning reaches the caller again


def test_training_restores_the_callers_warning_filters() -> None:
    code = """
        import warnings
        import numpy as np
        from cuvis_graph import Graph, GraphDataModule
        from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal
        import cuvis_graph.train.training  # torch, numpy and Lightning add their own filters on import
        before = list(warnings.filters)
        graph = Graph("quiet")
        graph.add_node(RXGlobal(), parent=graph.add_node(MinMaxNormalizer()))
        cubes = np.random.default_rng(0).random((2, 8, 8, 4)).astype(np.float32)
        graph.train(GraphDataModule.from_arrays(cubes, batch_size=1), {"trainer": {"max_epochs": 0}}, run_dir=False)
        assert warnings.filters == before, (len(warnings.filters), len(before))
    """
    assert "lightning" in _loaded_after(code)
