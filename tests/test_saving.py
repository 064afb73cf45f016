"""Saved models: save -> load round trips, safety (registry only, never unpickle), checks."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal
from safetensors.torch import load, save_file

from cuvis_graph import Graph, GraphDataModule
from cuvis_graph.core.compiler import compile_graph
from cuvis_graph.core.plan import DataSpec
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.model_channels import ChannelMismatchError, check_channels
from cuvis_graph.io.model_meta import ModelFormatError, read_meta
from cuvis_graph.io.saving import load_graph, save_graph
from cuvis_graph.io.spec import SpecError, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.yaml"))
TINY = ["data.params.n_train=4", "data.params.n_val=1", "data.params.n_test=0", "data.params.height=16",
        "data.params.width=16", "data.params.batch_size=2", "training.trainer.accelerator=cpu",
        "training.trainer.enable_progress_bar=false"]
C = 6
WAVELENGTHS = np.linspace(400.0, 1000.0, C)


def cubes(n: int = 4, h: int = 8, w: int = 9, c: int = C, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2.0 * np.eye(c)
    return (rng.normal(size=(n * h * w, c)) @ mixing * 20.0 + 1000.0).reshape(n, h, w, c).astype(np.float32)


def fit(graph: Graph, data: np.ndarray, wavelengths: np.ndarray | None = WAVELENGTHS) -> Graph:
    dm = GraphDataModule.from_arrays(data, wavelengths=wavelengths, batch_size=2)
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}},
                run_dir=False)
    return graph


def rx_graph() -> Graph:
    graph = Graph("rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    return fit(graph, cubes())


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The saved tensors, in memory (a memory map would break when the file is rewritten)."""
    return load((model_dir / "weights.safetensors").read_bytes())


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_graph(rx_graph(), tmp_path / "model")


# -- round trips -----------------------------------------------------------------------------
def _tiny_pipeline(path: Path):
    raw = yaml.safe_load(path.read_text())
    groups = [next(iter(d)) for d in raw.get("defaults") or [] if isinstance(d, dict)]
    overrides = list(TINY)
    if "data" in groups:
        overrides.insert(0, "data=synthetic")  # pipelines on a real .mat scene run on synthetic scenes here
    elif (raw.get("data") or {}).get("type", "SyntheticHSIDataModule") != "SyntheticHSIDataModule":
        pytest.skip(f"{path.name}: its data section is not swappable for synthetic scenes")
    pipeline = load_pipeline(path, overrides)
    config = pipeline.training.model_dump()
    config["trainer"]["max_epochs"] = min(1, config["trainer"]["max_epochs"])
    for stage in config.get("stages") or []:
        if stage.get("max_epochs") is not None:
            stage["max_epochs"] = min(1, stage["max_epochs"])
    pipeline.graph.train(pipeline.datamodule, config, run_dir=False)
    return pipeline


def _all_outputs(graph: Graph, cube: torch.Tensor) -> dict[str, torch.Tensor]:
    plan = compile_graph(graph, DataSpec(n_channels=int(cube.shape[-1])), with_leaves=False)
    return {f"{s.name}.{port}": graph.predict(cube, output=f"{s.name}.{port}")
            for s in plan.steps for port in s.node.output_specs}


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=[p.stem for p in PIPELINE_FILES])
def test_every_pipeline_round_trips_bit_identically(path: Path, tmp_path: Path) -> None:
    pipeline = _tiny_pipeline(path)
    graph = pipeline.graph
    saved = graph.save(tmp_path / "model")
    loaded = Graph.load(saved)

    batch = next(iter(pipeline.datamodule.val_dataloader()))
    fresh = torch.rand(2, 12, 10, batch["cube"].shape[-1]) * batch["cube"].max()
    for cube in (batch["cube"], fresh):
        expected, got = graph.predict(cube), loaded.predict(cube)
        assert list(got) == list(expected)
        for name in expected:
            assert torch.equal(got[name], expected[name]), name
        every, every_loaded = _all_outputs(graph, cube), _all_outputs(loaded, cube)
        for key, value in every.items():
            assert torch.equal(every_loaded[key], value), key
    # structure, state and metadata survive
    assert list(loaded.nodes) == list(graph.nodes) and list(loaded.leaves) == list(graph.leaves)
    for name, node in graph.nodes.items():
        assert type(loaded.nodes[name]) is type(node)
        for key, value in node.state_dict().items():
            other = loaded.nodes[name].state_dict()[key]
            assert other.dtype == value.dtype and torch.equal(other, value), f"{name}.{key}"
    assert all(not m.training for m in [*loaded.nodes.values(), *loaded.leaves.values()])
    spec = pipeline.datamodule.data_spec()
    assert loaded.data_spec.n_channels == spec.n_channels
    assert loaded.data_spec.wavelengths == spec.wavelengths
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["n_channels"] == spec.n_channels
    assert meta["fitted"] == {n: node.is_fitted for n, node in graph.nodes.items()}
    assert meta["sinks"] == compile_graph(graph, spec, with_leaves=False).sinks()
    assert meta["torch_version"] == torch.__version__


def test_files_and_meta(model_dir: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == ["meta.json", "pipeline.yaml", "weights.safetensors"]
    meta = read_meta(model_dir)
    import cuvis_graph

    assert meta["library_version"] == cuvis_graph.__version__
    assert meta["n_channels"] == C and meta["wavelengths"] == pytest.approx(list(WAVELENGTHS))
    assert meta["fitted"] == {"norm": True, "rx": True} and meta["sinks"] == ["rx"]
    assert meta["created_at"]
    weights = read_weights(model_dir)
    assert {"norm.min", "norm.max", "norm._fitted", "rx.mean", "rx.whitening", "rx._fitted"} <= set(weights)
    config = yaml.safe_load((model_dir / "pipeline.yaml").read_text())
    assert config["nodes"]["rx"] == {"type": "RXGlobal", "params": {"eps": 1e-9, "trainable_stats": False,
                                                                    "use_background_mask": "auto", "eps_mode": "relative"},
                                     "parent": "norm"}


def test_unfitted_graph_round_trips_unfitted(tmp_path: Path) -> None:
    graph = Graph("raw")
    graph.add_node(RXGlobal(), name="rx")
    loaded = load_graph(save_graph(graph, tmp_path / "m"))
    assert not loaded.nodes["rx"].is_fitted
    assert read_meta(tmp_path / "m")["n_channels"] is None


def test_shared_tensors_are_saved(tmp_path: Path) -> None:
    graph = rx_graph()
    norm = graph.nodes["norm"]
    norm.register_buffer("alias", norm.max, persistent=True)  # two state-dict entries, one storage
    saved = save_graph(graph, tmp_path / "m")  # safetensors refuses shared storage unless cloned
    weights = read_weights(saved)
    assert torch.equal(weights["norm.alias"], norm.max) and torch.equal(weights["norm.max"], norm.max)


# -- atomic writes ------------------------------------------------------------------------------
def test_save_replaces_a_model_and_refuses_other_folders(tmp_path: Path) -> None:
    target = tmp_path / "model"
    save_graph(rx_graph(), target)
    other = Graph("other")
    other.add_node(RXGlobal(), name="solo")
    save_graph(fit(other, cubes(seed=1)), target)
    assert list(load_graph(target).nodes) == ["solo"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CuvisGraphError, match="not empty"):
        save_graph(other, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    (precious / "meta.json").write_text('{"camera": "x"}')  # a meta.json that is not ours
    (precious / "notes.txt").unlink()
    with pytest.raises(CuvisGraphError, match="not a saved model"):
        save_graph(other, precious)
    save_graph(other, target)  # our model with a stray file beside it is not replaced either
    (target / "scene.npy").write_bytes(b"data")
    with pytest.raises(CuvisGraphError, match="not a saved model"):
        save_graph(other, target)
    assert (target / "scene.npy").read_bytes() == b"data"


def test_failed_save_keeps_the_old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_graph(rx_graph(), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_graph(rx_graph(), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# -- safety -------------------------------------------------------------------------------------
def _tamper(model_dir: Path, old: str, new: str) -> None:
    path = model_dir / "pipeline.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "evil_saving_probe.Evil"])
def test_unregistered_target_is_refused_before_anything_runs(model_dir: Path, tmp_path: Path, target: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "evil_saving_probe.py"
    module.write_text("raise SystemExit('imported!')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _tamper(model_dir, "type: RXGlobal", f"_target_: {target}")
    created = []
    original = MinMaxNormalizer.__init__

    def spy(self, *args, **kwargs):
        created.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(MinMaxNormalizer, "__init__", spy)
    with pytest.raises(SpecError) as info:
        load_graph(model_dir)
    message = str(info.value)
    assert str(model_dir / "pipeline.yaml") in message and "nodes.rx._target_" in message
    assert target in message and "refused" in message
    assert "evil_saving_probe" not in sys.modules
    assert created == []  # nothing was instantiated


def test_a_saved_model_cannot_allowlist_modules(model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "evil_allow_probe.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _tamper(model_dir, "type: RXGlobal", "_target_: evil_allow_probe.Evil")
    with (model_dir / "pipeline.yaml").open("a") as fh:
        fh.write("allow_modules: [evil_allow_probe]\n")
    with pytest.raises(SpecError, match=r"allow_modules\[0\].*cannot allowlist module 'evil_allow_probe'"):
        load_graph(model_dir)
    assert "evil_allow_probe" not in sys.modules


def test_unknown_type_is_named(model_dir: Path) -> None:
    _tamper(model_dir, "type: RXGlobal", "type: RXGlobl")
    with pytest.raises(SpecError, match=r"nodes\.rx\.type: unknown node type 'RXGlobl' \(did you mean 'RXGlobal'"):
        load_graph(model_dir)


def test_loading_never_unpickles(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_graph(model_dir).predict(cubes(n=1)[0])

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_graph")

    for target in ("pickle.load", "pickle.loads", "torch.load"):
        monkeypatch.setattr(target, forbidden)
    loaded = load_graph(model_dir)
    got = loaded.predict(cubes(n=1)[0])
    assert torch.equal(got["rx"], expected["rx"])


def test_pickled_weights_are_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = read_weights(model_dir)
    torch.save(state, model_dir / "weights.safetensors")  # a pickle archive under the safetensors name
    (model_dir / "extra.pkl").write_bytes(pickle.dumps({"x": 1}))

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_graph")

    for target in ("pickle.load", "pickle.loads", "torch.load"):
        monkeypatch.setattr(target, forbidden)
    with pytest.raises(ModelFormatError, match=r"weights\.safetensors: not a valid safetensors file.*never unpickled"):
        load_graph(model_dir)


# -- checks -------------------------------------------------------------------------------------
def test_channel_mismatch_is_explained(model_dir: Path) -> None:
    lo, hi = WAVELENGTHS.min(), WAVELENGTHS.max()
    expected = f"model expects C={C} channels (wavelengths {lo:g}–{hi:g} nm), the data has {C + 44}"
    with pytest.raises(ChannelMismatchError) as info:
        load_graph(model_dir, n_channels=C + 44)
    assert expected in str(info.value) and str(model_dir) in str(info.value)
    graph = load_graph(model_dir, n_channels=C)
    with pytest.raises(ChannelMismatchError, match=f"scene.npy: model expects C={C} channels"):
        check_channels(graph, 3, "scene.npy")
    check_channels(graph, C, "scene.npy")  # no error


def test_channel_mismatch_without_wavelengths(tmp_path: Path) -> None:
    graph = Graph("nowl")
    graph.add_node(RXGlobal(), name="rx")
    fit(graph, cubes(), wavelengths=None)
    with pytest.raises(ChannelMismatchError, match=f"model expects C={C} channels, the data has 2$"):
        load_graph(save_graph(graph, tmp_path / "m"), n_channels=2)


def test_missing_and_unexpected_weight_keys_are_named(model_dir: Path) -> None:
    path = model_dir / "weights.safetensors"
    state = read_weights(model_dir)
    del state["rx.whitening"]
    state["rx.bogus"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(ModelFormatError) as info:
        load_graph(model_dir)
    assert "missing key rx.whitening" in str(info.value) and "unexpected key rx.bogus" in str(info.value)


def test_wrongly_shaped_weight_is_named(model_dir: Path) -> None:
    path = model_dir / "weights.safetensors"
    state = read_weights(model_dir)
    state["norm._fitted"] = torch.ones(3, dtype=torch.bool)
    save_file(state, str(path))
    with pytest.raises(ModelFormatError, match=r"norm\._fitted has shape \[3\], MinMaxNormalizer 'norm' has \[\]"):
        load_graph(model_dir)


def _edit_meta(model_dir: Path, **fields) -> None:
    path = model_dir / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def test_versions(model_dir: Path) -> None:
    import cuvis_graph

    major, minor, *_ = (int(x) for x in cuvis_graph.__version__.split("."))
    _edit_meta(model_dir, format_version=99)
    with pytest.raises(ModelFormatError, match="format_version 99 is newer"):
        load_graph(model_dir)
    _edit_meta(model_dir, format_version=1, library_version=f"{major + 1}.0.0")
    with pytest.raises(ModelFormatError, match="incompatible with this major version"):
        load_graph(model_dir)
    _edit_meta(model_dir, library_version=f"{major}.{minor + 1}.0")
    with pytest.warns(UserWarning, match=f"saved with cuvis-graph {major}.{minor + 1}.0"):
        load_graph(model_dir)
    with pytest.raises(ModelFormatError, match="strict_version"):
        load_graph(model_dir, strict_version=True)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="no such model directory"):
        load_graph(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "pipeline.yaml").write_text("nodes: {}\n")
    with pytest.raises(ModelFormatError, match="missing weights.safetensors, meta.json"):
        load_graph(tmp_path / "half")


def test_model_files_share_one_mode(model_dir: Path, tmp_path: Path) -> None:
    """Every file of a model has the mode an ordinary new file gets (safetensors alone would make
    the weights private while the rest is readable)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in model_dir.iterdir()}
    assert set(modes.values()) == {plain.stat().st_mode & 0o777}, modes
