"""Canaries: no file the user reads can import or run code (principle 12).

Each case plants modules on ``sys.path`` whose import creates a CANARY file (and a shell
command that would create one), runs ``validate`` and ``train`` (``predict`` for a saved
model), and asserts that the canary never appears, that nothing else was written, and that
the one error line names the file and the place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

from cuvis_graph import Graph, GraphDataModule
from cuvis_graph.io.saving import save_graph

from .conftest import QUIET, TreeSnapshot, cli
from .test_yaml_cli import BASE as YAML_BASE

MODULES = ("cg_canary", "cg_canary_pkg", "cg_canary_pkg.__main__", "cg_canary_pkg._private")
PLANT = "from pathlib import Path\nPath({canary!r}).write_text({who!r})\n\nclass Node:\n    pass\n"

BASE = YAML_BASE.replace("name: base", "name: canary", 1)


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Plant ``cg_canary`` and ``cg_canary_pkg`` (with ``__main__`` and ``_private``) on sys.path."""
    plants = tmp_path / "plants"
    (plants / "cg_canary_pkg").mkdir(parents=True)
    target = tmp_path / "CANARY"
    for module in MODULES:
        file = plants / (module.replace(".", "/") + ".py")
        if module == "cg_canary_pkg":
            file = plants / "cg_canary_pkg" / "__init__.py"
        file.write_text(PLANT.format(canary=str(target), who=module))
    monkeypatch.syspath_prepend(str(plants))
    for module in MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    yield target
    for module in MODULES:
        sys.modules.pop(module, None)


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def shell(canary: str) -> str:
    return f"touch {canary}"


# id -> (pipeline text with CANARY for the canary path, extra argv, parts of the error line)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "target_not_allowlisted": (edit("type: RXGlobal", "_target_: cg_canary.Node"), [],
                               ["nodes.rx._target_", "not allowlisted"]),
    "target_into_dunder_main": (edit("type: RXGlobal", "_target_: cg_canary_pkg.__main__.Node"),
                                ["--allow-module", "cg_canary_pkg"], ["nodes.rx._target_", "'__main__'"]),
    "target_into_private_module": (edit("type: RXGlobal", "_target_: cg_canary_pkg._private.Node"),
                                   ["--allow-module", "cg_canary_pkg"], ["nodes.rx._target_", "'_private'"]),
    "allow_modules_in_yaml": (edit("type: RXGlobal", "_target_: cg_canary.Node") + "allow_modules: [cg_canary]\n", [],
                              ["allow_modules", "cannot widen its own allowlist"]),
    "python_object_apply_os_system": (edit("eps: 1.0e-9", "eps: !!python/object/apply:os.system ['touch CANARY']"), [],
                                      ["line 4", "python/object/apply:os.system' is refused"]),
    "python_name": (edit("eps: 1.0e-9", "eps: !!python/name:cg_canary.Node ''"), [],
                    ["line 4", "python/name:cg_canary.Node' is refused"]),
    "python_object_new": (edit("eps: 1.0e-9", "eps: !!python/object/new:cg_canary.Node []"), [],
                          ["line 4", "python/object/new:cg_canary.Node' is refused"]),
    "python_module": (edit("name: canary", "name: !!python/module:cg_canary"), [],
                      ["line 1", "python/module:cg_canary' is refused"]),
    "nested_target_in_params": (edit("eps: 1.0e-9", "eps: {_target_: cg_canary.Node}"),
                                ["--allow-module", "cg_canary"], ["nodes.rx.params.eps", "valid number"]),
    "hydra_searchpath_pkg": (BASE + "hydra: {searchpath: ['pkg://cg_canary']}\n", [], ["hydra: Hydra's own settings"]),
    "hydra_callbacks": (BASE + "hydra: {callbacks: {c: {_target_: cg_canary.Node}}}\n", [],
                        ["hydra: Hydra's own settings"]),
    "hydra_job_logging_default": ("defaults:\n  - override hydra/job_logging: canary\n  - _self_\n" + BASE, [],
                                  ["defaults[0]", "Hydra's own config groups"]),
}


def _assert_no_canary(canary: Path) -> None:
    assert not canary.exists(), f"code ran: {canary.read_text()}"
    assert not set(MODULES) & set(sys.modules), "a planted module was imported"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_pipeline_runs_nothing(case: str, canary: Path, tmp_path: Path, workdir: Path, capsys) -> None:
    text, extra, parts = CASES[case]
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.replace("touch CANARY", shell(str(canary))))
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        runs = ["--runs-dir", tmp_path / "runs", *QUIET] if command == "train" else []
        cli([command, path, *extra, *runs], capsys).fails_naming("pipeline.yaml", *parts)
        _assert_no_canary(canary)
    snapshot.assert_unchanged()


def test_hydra_searchpath_override_is_refused(canary: Path, tmp_path: Path, workdir: Path, capsys) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE)
    snapshot = TreeSnapshot(tmp_path)
    for override in ("hydra.searchpath=[pkg://cg_canary]", "+hydra.searchpath=[pkg://cg_canary]",
                     "++hydra.searchpath=[pkg://cg_canary]"):
        cli(["validate", path, override], capsys).fails_naming(f"override '{override}'", "not used by cuvis-graph")
    _assert_no_canary(canary)
    snapshot.assert_unchanged()


def test_config_group_file_runs_nothing(canary: Path, tmp_path: Path, workdir: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "evil.yaml").write_text("# @package _global_\nhydra: {searchpath: ['pkg://cg_canary']}\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text("defaults:\n  - data: evil\n  - _self_\n" + BASE)
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        cli([command, path, "--runs-dir", tmp_path / "runs"][: 2 + 2 * (command == "train")],
            capsys).fails_naming("evil.yaml", "hydra: Hydra's own settings")
        _assert_no_canary(canary)
    snapshot.assert_unchanged()


# -- a saved model ----------------------------------------------------------------------------------
@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[Path, Path]:
    """A fitted RX model and one cube to score (both in tmp_path)."""
    rng = np.random.default_rng(0)
    cubes = (rng.normal(size=(2, 8, 8, 6)) * 20 + 1000).astype(np.float32)
    graph = Graph("rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    graph.train(GraphDataModule.from_arrays(cubes, batch_size=2),
                {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}}, run_dir=False)
    model = save_graph(graph, tmp_path / "model")
    cube = tmp_path / "cube.npy"
    np.save(cube, cubes[0])
    return model, cube


TAMPERED: dict[str, tuple[str, str, list[str], list[str]]] = {
    "target_not_allowlisted": ("type: RXGlobal", "_target_: cg_canary.Node", [], ["nodes.rx._target_"]),
    "allow_modules_in_the_model": ("type: RXGlobal", "_target_: cg_canary.Node\nallow_modules: [cg_canary]", [],
                                   ["allow_modules"]),
    "target_into_dunder_main": ("type: RXGlobal", "_target_: cg_canary_pkg.__main__.Node",
                                ["--allow-module", "cg_canary_pkg"], ["nodes.rx._target_", "'__main__'"]),
    "python_object_apply": ("type: RXGlobal", "type: !!python/object/apply:os.system ['touch CANARY']", [],
                            ["python/object/apply:os.system' is refused"]),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_tampered_saved_model_runs_nothing(case: str, canary: Path, saved_model: tuple[Path, Path], tmp_path: Path,
                                           workdir: Path, capsys) -> None:
    model, cube = saved_model
    old, new, extra, parts = TAMPERED[case]
    file = model / "pipeline.yaml"
    text = file.read_text()
    assert old in text
    new = new.replace("touch CANARY", shell(str(canary)))
    if "\nallow_modules" in new:  # a top-level key, not inside the node's mapping
        new, tail = new.split("\n", 1)
        text = text + tail + "\n"
    file.write_text(text.replace(old, new, 1))
    snapshot = TreeSnapshot(tmp_path)
    out = tmp_path / "predictions"
    cli(["predict", model, cube, "--out", out, "--no-progress", *extra], capsys).fails_naming("pipeline.yaml", *parts)
    _assert_no_canary(canary)
    snapshot.assert_unchanged()


def test_the_canary_fires_when_the_user_allows_the_module(canary: Path, tmp_path: Path, workdir: Path,
                                                          capsys) -> None:
    """Control: the plant works; only the command line's --allow-module imports it."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(edit("type: RXGlobal", "_target_: cg_canary.Node"))
    cli(["validate", path, "--allow-module", "cg_canary"], capsys).fails_naming(
        "nodes.rx._target_", "only node, leaf, monitor and datamodule classes")
    assert canary.read_text() == "cg_canary"
