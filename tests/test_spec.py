"""Pipeline YAML <-> Graph: schema errors with YAML paths, round trips, Hydra composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    AnomalyHeatmap,
    ConcatChannels,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    StandardNormalizer,
)
from spec_helpers import write_tiny_mat

from cuvis_graph import Graph, TrainingConfig
from cuvis_graph.data import MatSceneDataModule, SyntheticHSIDataModule
from cuvis_graph.errors import ConfigError
from cuvis_graph.io.spec import SpecError, expand_sweeps, load_config, load_pipeline, read_yaml
from cuvis_graph.monitors import FileMonitor

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY = {"n_train": 2, "n_val": 1, "n_test": 0, "height": 16, "width": 16, "n_bands": 12}

BASE = """
name: base
nodes:
  norm: {type: MinMaxNormalizer}
  rx: {type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}
leaves:
  metrics: {type: AnomalyDetectionMetrics, params: {from_logits: false}, parent: rx}
data: {type: SyntheticHSIDataModule, params: {n_train: 2, n_val: 1, height: 16, width: 16, n_bands: 12}}
training: {trainer: {max_epochs: 0}}
"""


@pytest.fixture
def tiny_mat(tmp_path: Path) -> Path:
    return write_tiny_mat(tmp_path / "tiny.mat")


def problems(source, overrides=()) -> str:
    with pytest.raises(SpecError) as info:
        load_pipeline(source, overrides)
    return str(info.value)


def design_graph() -> Graph:
    """The graph of DESIGN.md's example, built in Python."""
    graph = Graph("selector_rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    std = graph.add_node(StandardNormalizer(eps=1e-5), parent=norm, name="std")
    both = graph.add_node(ConcatChannels(), parent=[norm, std], name="both")
    rx = graph.add_node(RXGlobal(eps=1e-9), parent={"x": both, "mask": "batch.mask"}, name="rx")
    head = graph.add_node(RXLogitHead(init_scale=2.0), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=10.0), parent=head, name="bce")
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=(head, "logits"), name="metrics")
    graph.add_leaf_node(AnomalyHeatmap(log_frequency=5), parent=rx, name="heatmap")
    graph.register_monitor(FileMonitor("runs/files", name="files"))
    return graph


# -- round trip ---------------------------------------------------------------------------------
def test_python_graph_round_trips_through_yaml() -> None:
    graph = design_graph()
    text = graph.to_yaml()
    data = yaml.safe_load(text)
    assert data["nodes"]["rx"] == {"type": "RXGlobal", "params": {"eps": 1e-9, "trainable_stats": False,
                                                                  "use_background_mask": "auto", "eps_mode": "relative"},
                                   "parents": {"x": "both", "mask": "batch.mask"}}
    assert data["nodes"]["both"]["parent"] == ["norm", "std"]  # variadic port
    assert data["leaves"]["metrics"]["parent"] == "head.logits"
    assert data["monitors"]["files"] == {"type": "FileMonitor", "params": {"root": "runs/files", "dpi": 100}}
    again = Graph.from_yaml(text)
    assert again.to_yaml() == text
    assert list(again.nodes) == list(graph.nodes) and list(again.leaves) == list(graph.leaves)
    assert [type(n) for n in again.nodes.values()] == [type(n) for n in graph.nodes.values()]
    assert again["head"].init_scale == 2.0 and again["bce"].pos_weight == 10.0
    assert again.monitors[0].root == Path("runs/files")


def test_round_trip_gives_the_same_scores() -> None:
    original = Graph("rx")
    original.add_node(StandardNormalizer(), name="std")
    original.add_node(RXGlobal(eps=1e-9), parent="std", name="rx")
    copy = Graph.from_yaml(original.to_yaml(training=TrainingConfig(), data={"type": "SyntheticHSIDataModule"}))
    dm = SyntheticHSIDataModule(**TINY)
    for g in (original, copy):
        g.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}, run_dir=False)
    cube = dm.val_set[0]["cube"]
    torch.testing.assert_close(original.predict(cube)["rx"], copy.predict(cube)["rx"])


def test_to_yaml_writes_file_and_sections(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    text = design_graph().to_yaml(path, training={"trainer": {"max_epochs": 2}}, data={"type": "SyntheticHSIDataModule"})
    assert path.read_text() == text
    spec = yaml.safe_load(text)
    assert spec["training"]["trainer"]["max_epochs"] == 2 and spec["data"]["type"] == "SyntheticHSIDataModule"
    assert load_pipeline(path, ["data.params.n_train=2", "data.params.n_val=1", "data.params.height=16",
                                "data.params.width=16", "monitors.files.params.root=" + str(tmp_path)]).name == "selector_rx"


def test_unregistered_class_cannot_be_written() -> None:
    class Local(RXGlobal):
        pass

    graph = Graph("g")
    graph.add_node(Local(), name="rx")
    with pytest.raises(SpecError, match=r"nodes.rx: Local is not registered"):
        graph.to_yaml()


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.stem)
def test_pipeline_files_load_and_round_trip(path: Path, tiny_mat: Path) -> None:
    overrides = [f"data.params.path={tiny_mat}"] if path.stem == "rx_real_mat" else []
    pipeline = load_pipeline(path, overrides)
    assert pipeline.name == path.stem
    text = pipeline.graph.to_yaml()
    assert Graph.from_yaml(text).to_yaml() == text
    assert Graph.from_yaml(path, overrides).to_yaml() == text


# -- schema features ----------------------------------------------------------------------------
def test_target_is_accepted_for_registered_classes() -> None:
    text = BASE.replace("type: RXGlobal", "_target_: cuvis_graph.nodes.RXGlobal")
    assert isinstance(load_pipeline(text).graph["rx"], RXGlobal)


def test_yaml_floats_without_dot_and_params_are_validated() -> None:
    pipeline = load_pipeline(BASE.replace("eps: 1.0e-9", "eps: 1e-7"))
    assert pipeline.graph["rx"].eps == pytest.approx(1e-7)
    assert isinstance(pipeline.datamodule, SyntheticHSIDataModule) and pipeline.datamodule.n_channels == 12


def test_data_defaults_to_synthetic_and_training_to_defaults() -> None:
    spec = {"nodes": {"rx": {"type": "RXGlobal"}}}
    pipeline = load_pipeline(spec, ["data.params.n_train=2", "data.params.height=16", "data.params.width=16"],
                             check=False)
    assert isinstance(pipeline.datamodule, SyntheticHSIDataModule)
    assert pipeline.training == TrainingConfig()
    assert pipeline.name == "pipeline"
    assert "nothing to train" in problems(spec)  # 5 epochs by default, and nothing trainable


def test_overrides_reach_params_and_training() -> None:
    pipeline = load_pipeline(BASE, ["nodes.rx.params.eps=1e-3", "training.trainer.max_epochs=0",
                                    "training.optimizer.lr=0.5", "nodes.rx.params.use_background_mask=true"])
    assert pipeline.graph["rx"].eps == 1e-3 and pipeline.graph["rx"].use_background_mask is True
    assert pipeline.training.optimizer.lr == 0.5
    assert pipeline.config["nodes"]["rx"]["params"]["eps"] == 1e-3  # the resolved config records it


def test_training_fields_may_drop_the_training_prefix() -> None:
    pipeline = load_pipeline(BASE, ["trainer.log_every_n_steps=3", "optimizer.lr=0.25", "seed=7"])
    assert pipeline.training.trainer.log_every_n_steps == 3
    assert pipeline.training.optimizer.lr == 0.25 and pipeline.training.seed == 7
    assert "did you mean 'max_epochs'" in problems(BASE, ["trainer.max_epoch=1"])


def test_several_problems_are_reported_together() -> None:
    text = BASE.replace("RXGlobal, params: {eps: 1.0e-9}", "RXGlobal, params: {eps: abc, epss: 1}").replace(
        "parent: norm", "parent: nrom").replace("from_logits: false", "from_logit: false")
    message = problems(text)
    assert "4 problems found" in message
    for part in ("nodes.rx.params.eps: Input should be a valid number",
                 "nodes.rx.params.epss: RXGlobal has no parameter 'epss' (did you mean 'eps'?)",
                 "nodes.rx.parent: unknown parent 'nrom' (did you mean 'norm'?)",
                 "leaves.metrics.params.from_logit: AnomalyDetectionMetrics has no parameter 'from_logit' "
                 "(did you mean 'from_logits'?)"):
        assert part in message


@pytest.mark.parametrize("change, expected", [
    (("norm: {type: MinMaxNormalizer}", "norm: {type: MinMaxNormalizer, parnet: x}"),
     "nodes.norm.parnet: unknown key 'parnet' (did you mean 'parent'?)"),
    (("training: {trainer: {max_epochs: 0}}", "training: {trainer: {max_epoch: 0}}"),
     "training.trainer.max_epoch: unknown key 'max_epoch' (did you mean 'max_epochs'?)"),
    (("name: base", "nmae: base"), "nmae: unknown key 'nmae' (did you mean 'name'?)"),
    (("type: RXGlobal", "type: AnomalyBCEWithLogits"), "nodes.rx.type: 'AnomalyBCEWithLogits' is a leaf, not a node; "
                                                      "put it under 'leaves:'"),
    (("type: AnomalyDetectionMetrics", "type: RXGlobal"), "leaves.metrics.type: 'RXGlobal' is a node, not a leaf"),
    (("type: SyntheticHSIDataModule", "type: SyntheticHSIDatamodule"),
     "data.type: unknown datamodule type 'SyntheticHSIDatamodule' (did you mean 'SyntheticHSIDataModule'?)"),
    (("params: {eps: 1.0e-9}", "params: {eps: -1.0}"), "nodes.rx.params: RXGlobal rejected its parameters: eps must be"),
    (("params: {eps: 1.0e-9}", "params: {name: x}"), "nodes.rx.params.name: a name comes from the entry's key"),
    (("params: {eps: 1.0e-9}", "params: [1, 2]"), "nodes.rx.params: params must be a mapping"),
    (("parent: rx", "parent: batch.mask"), "leaves.metrics.parent: unknown parent 'batch'"),
    (("n_bands: 12", "n_bands: twelve"), "data.params.n_bands: Input should be a valid integer"),
    (("parent: norm", "parent: metrics"), "nodes.rx.parent: 'metrics' is a leaf"),
    (("parent: norm", "{parent: norm, parents: [norm]}"), ""),
])
def test_schema_errors_name_the_yaml_path(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in BASE
    if new.startswith("{parent"):
        text = BASE.replace("{type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}",
                            "{type: RXGlobal, parent: norm, parents: [norm]}")
        expected = "nodes.rx: give 'parent' or 'parents', not both"
    else:
        text = BASE.replace(old, new, 1)
    assert expected in problems(text)


def test_duplicate_keys_are_refused_with_lines() -> None:
    text = BASE.replace("leaves:", "  rx: {type: RXGlobal, parent: norm}\nleaves:")
    message = problems(text)
    assert "nodes.rx: duplicate node name 'rx' (line 6; first defined at line 5)" in message
    nested = BASE.replace("{eps: 1.0e-9}", "{eps: 1.0e-9, eps: 2.0e-9}")
    assert "nodes.rx.params.eps: duplicate key 'eps'" in problems(nested)


def test_yaml_syntax_error_and_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  rx: {type: RXGlobal\n")
    assert f"{bad}: line 4, column 1: YAML syntax error" in problems(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert "<file>: the file is empty" in problems(empty)
    assert "a pipeline is a mapping" in problems("- a\n- b\n")
    assert "no such file" in problems(tmp_path / "missing.yaml")


def test_override_errors() -> None:
    assert ("override 'training.trainer.max_epoch=3': unknown key 'max_epoch' in training.trainer "
            "(did you mean 'max_epochs'?)") in problems(BASE, ["training.trainer.max_epoch=3"])
    assert "no entry 'rxx' in nodes (did you mean 'rx'?)" in problems(BASE, ["nodes.rxx.params.eps=1"])
    assert "RXGlobal has no parameter 'epss'" in problems(BASE, ["nodes.rx.params.epss=1"])
    assert "sweeps several values; run it with -m/--multirun" in problems(BASE, ["nodes.rx.params.eps=1,2"])
    assert "unknown key 'trainig'" in problems(BASE, ["trainig.seed=1"])
    assert "override 'a=[1'" in problems(BASE, ["a=[1"])
    # explicit additions bypass the schema pre-check and are validated afterwards
    assert "nodes.extra.type: unknown node type 'Nope'" in problems(BASE, ["+nodes.extra.type=Nope"])


def test_expand_sweeps() -> None:
    assert expand_sweeps(["a=1,2", "b=x", "c=range(0,2)"]) == [
        ["a=1", "b=x", "c=0"], ["a=1", "b=x", "c=1"], ["a=2", "b=x", "c=0"], ["a=2", "b=x", "c=1"]]
    assert expand_sweeps([]) == [[]]


def test_read_yaml_is_strict() -> None:
    assert read_yaml("a: 1\n", "x") == {"a": 1}
    with pytest.raises(SpecError, match="duplicate key 'a'"):
        read_yaml("a: 1\na: 2\n", "x")


# -- Hydra composition --------------------------------------------------------------------------
def test_config_groups_and_overrides_compose() -> None:
    config, _ = load_config(PIPELINES / "selector_rx_bce.yaml",
                            ["training=fast", "data.params.n_train=2", "nodes.selector.params.n_select=10"])
    assert config["training"]["trainer"]["max_epochs"] == 1
    assert config["training"]["trainer"]["limit_train_batches"] == 2
    assert config["data"]["params"]["n_train"] == 2
    assert config["nodes"]["selector"]["params"]["n_select"] == 10
    assert "defaults" not in config


def test_missing_group_option_is_one_message() -> None:
    message = problems(PIPELINES / "rx_statistical.yaml", ["data=nope"])
    assert "Could not find 'data/nope'" in message and "synthetic" in message
    assert "Config search path" not in message


def test_mandatory_values_and_interpolations(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "extra_root: /tmp\n")
    assert "extra_root: unknown key" in problems(path)
    path.write_text(BASE.replace("height: 16", "height: '???'"))
    assert "data.params.height: no value given" in problems(path)
    assert load_pipeline(path, ["data.params.height=16"]).datamodule.params["height"] == 16
    path.write_text(BASE.replace("height: 16", "height: '${data.params.width}'"))
    assert load_pipeline(path).datamodule.params["height"] == 16


def test_a_pipeline_cannot_allowlist_modules_itself() -> None:
    text = BASE.replace("type: RXGlobal", "_target_: cg_missing_pkg.RX") + "allow_modules: [cg_missing_pkg]\n"
    message = problems(text)
    assert "allow_modules: a pipeline cannot widen its own allowlist" in message
    assert "--allow-module cg_missing_pkg" in message
    text = BASE.replace("type: RXGlobal", "_target_: cg_missing_pkg.RX")
    with pytest.raises(SpecError) as info:  # the caller may allowlist it
        load_pipeline(text, allow_modules=["cg_missing_pkg"])
    assert "cannot import allowlisted module 'cg_missing_pkg'" in str(info.value)
    with pytest.raises(SpecError, match="--allow-module os: module 'os' can never be allowlisted"):
        load_pipeline(BASE, allow_modules=["os"])


# -- .mat datamodule ----------------------------------------------------------------------------
def test_mat_datamodule_declares_spec_from_the_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cube = rng.integers(-50, 10_000, size=(9, 8, 5)).astype(np.int16)
    mask = np.zeros((9, 8), np.uint8)
    mask[2, 3] = 1
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"data": cube, "map": mask})
    dm = MatSceneDataModule(path)
    assert dm.n_channels == 5 and dm.batch_keys == {"cube", "mask"} and dm.train_set is None
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    np.testing.assert_array_equal(batch["cube"][0].numpy(), cube.astype(np.float32))
    np.testing.assert_array_equal(batch["mask"][0].numpy(), mask)
    assert dm.train_set is dm.val_set
    assert MatSceneDataModule(path, mask_key=None).batch_keys == {"cube"}
    with pytest.raises(ConfigError, match=r"key: 'scene.mat' has no variable 'dat' \(did you mean 'data'\?\)"):
        MatSceneDataModule(path, key="dat")
    with pytest.raises(ConfigError, match=r"key: 'scene.mat' has no variable 'dat'"):
        MatSceneDataModule(path, cube_key="dat")  # the former name still works
    assert MatSceneDataModule(path, cube_key="data").key == MatSceneDataModule(path, key="data").key == "data"
    with pytest.raises(ConfigError, match=r"key: 'data' and cube_key: 'map' name two cubes"):
        MatSceneDataModule(path, key="data", cube_key="map")
    with pytest.raises(ConfigError, match="mask_key: variable 'data' has shape"):
        MatSceneDataModule(path, mask_key="data")
    with pytest.raises(ConfigError, match="path: no such file"):
        MatSceneDataModule(tmp_path / "nope.mat")
    (tmp_path / "text.mat").write_text("not a mat file")
    with pytest.raises(ConfigError, match="not a readable MATLAB"):
        MatSceneDataModule(tmp_path / "text.mat")
