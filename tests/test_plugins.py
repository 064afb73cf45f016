"""``--plugin``: the user's own registered classes, imported only because the command line asked.

A plugin file in a fresh working directory holds a node and a loss; ``validate``, ``nodes``,
``train`` and ``predict`` use them by name with ``--plugin``. A saved model records the
plugin module, so ``predict`` without it names the ``--plugin`` to pass and imports nothing.
The plugin writes a canary file when imported: it must never appear unless asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import cuvis_graph.core.registry as registry
from cuvis_graph.cli.app import main
from cuvis_graph.io.plugins import PluginError, load_plugin

MODULE = "cg_my_nodes"
PLUGIN = """\
from pathlib import Path

import torch
from torch import nn

from cuvis_graph import LossNode, Node, PortSpec, register

with Path("canary.txt").open("a") as fh:  # proof that this file was imported
    fh.write("imported\\n")


@register
class CgEnergy(Node):
    \"\"\"Per-pixel energy s = mean over channels of (g * x)^2, with a trainable gain g.\"\"\"

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}
    OUTPUTS = {"scores": PortSpec(("B", "H", "W", 1))}

    def __init__(self, gain: float = 1.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gain * x).pow(2).mean(dim=-1, keepdim=True)


@register
class CgMeanScore(LossNode):
    \"\"\"The mean score, L = mean(s).\"\"\"

    def compute_loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return output.mean()
"""

PIPELINE = """\
name: energy
nodes:
  energy: {type: CgEnergy, params: {gain: 2.0}}
leaves:
  loss: {type: CgMeanScore, parent: energy}
data:
  type: SyntheticHSIDataModule
  params: {n_train: 2, n_val: 1, n_test: 0, height: 8, width: 8, n_bands: 6}
training:
  trainer: {max_epochs: 1}
  optimizer: {name: sgd, lr: 0.1}
"""


def forget_plugin() -> None:
    """As in a fresh process: the plugin module and its classes are gone."""
    sys.modules.pop(MODULE, None)
    for key, cls in list(registry._CLASSES.items()):
        if cls.__module__ == MODULE:
            del registry._CLASSES[key]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with the plugin file and a pipeline using its types."""
    registry.registered()  # built-ins first, so that restoring keeps them
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    forget_plugin()
    yield tmp_path
    forget_plugin()


def canary(folder: Path) -> bool:
    return (folder / "canary.txt").exists()


def test_validate_and_nodes_know_the_plugin_types(workdir: Path, capsys) -> None:
    assert main(["validate", "pipeline.yaml"]) == 1
    err = capsys.readouterr().err
    assert "unknown node type 'CgEnergy'" in err and "--plugin" in err
    assert not canary(workdir) and MODULE not in sys.modules

    assert main(["validate", "pipeline.yaml", "--plugin", f"{MODULE}.py"]) == 0
    assert "is valid" in capsys.readouterr().out
    assert canary(workdir)

    assert main(["nodes", "--plugin", f"{MODULE}.py"]) == 0
    out = capsys.readouterr().out
    for cls in (registry.get_class("CgEnergy"), registry.get_class("CgMeanScore")):
        summary = cls.__doc__.strip().splitlines()[0]
        assert any(line.split()[0] == cls.__name__ and line.endswith(f" - {summary}") for line in out.splitlines()
                   if line.strip())


def test_a_dotted_module_name_is_imported_from_the_working_directory(workdir: Path) -> None:
    path_before = list(sys.path)
    assert str(workdir) not in sys.path
    module = load_plugin(MODULE)
    assert Path(module.__file__).resolve() == (workdir / f"{MODULE}.py").resolve()
    assert sys.path == path_before  # the working directory was on the path for that import only
    assert registry.get_class("CgEnergy").__module__ == MODULE
    assert load_plugin(f"{MODULE}.py") is module  # the same file again: the module already imported


def test_train_then_predict_needs_the_plugin_by_name(workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    assert main(["train", "pipeline.yaml", "--plugin", f"{MODULE}.py", "--runs-dir", str(runs)]) == 0
    (model,) = runs.glob("energy/*/model")
    meta = json.loads((model / "meta.json").read_text())
    classes = [registry.get_class("CgEnergy"), registry.get_class("CgMeanScore")]
    assert meta["plugins"] == [{"module": classes[0].__module__, "types": sorted(c.__name__ for c in classes)}]
    gain = float(load_file(str(model / "weights.safetensors"))["energy.gain"])
    assert 0 < gain < 2.0  # one epoch of SGD on mean((g x)^2) shrinks the gain

    cube = np.random.default_rng(0).random((5, 4, 6), dtype=np.float32)
    np.save(workdir / "scene.npy", cube)
    forget_plugin()
    (workdir / "canary.txt").unlink()
    capsys.readouterr()
    assert main(["predict", str(model), "scene.npy", "--out", "pred", "--no-progress"]) == 1
    err = capsys.readouterr().err
    types = ", ".join(repr(c.__name__) for c in sorted(classes, key=lambda c: c.__name__))
    assert err.strip() == (f"error: model {model} needs types {types} from plugin module '{MODULE}': "
                           f"pass --plugin {MODULE}.py (or install it)")
    assert not canary(workdir) and MODULE not in sys.modules and not (workdir / "pred").exists()
    for command in (["export", str(model), "-o", "m.onnx"], ["test", str(model)]):
        assert main(command) == 1
        assert f"--plugin {MODULE}.py" in capsys.readouterr().err
    assert not canary(workdir)

    assert main(["predict", str(model), "scene.npy", "--out", "pred", "--no-progress",
                 "--plugin", f"{MODULE}.py"]) == 0
    scores = np.load(workdir / "pred" / "scene" / "scores.npy")
    reference = ((np.float64(gain) * cube.astype(np.float64)) ** 2).mean(axis=-1)
    np.testing.assert_allclose(scores.reshape(reference.shape), reference, rtol=1e-5)


def test_a_pipeline_cannot_load_a_plugin_by_itself(workdir: Path, capsys) -> None:
    by_target = PIPELINE.replace("type: CgEnergy", f"_target_: {MODULE}.CgEnergy")
    (workdir / "target.yaml").write_text(by_target)
    (workdir / "allow.yaml").write_text(by_target + f"allow_modules: [{MODULE}]\n")
    for pipeline in ("pipeline.yaml", "target.yaml", "allow.yaml"):
        assert main(["validate", pipeline]) == 1
    err = capsys.readouterr().err
    assert "is not allowlisted" in err and "cannot widen its own allowlist" in err
    assert not canary(workdir) and MODULE not in sys.modules


def test_the_cli_in_a_fresh_process_imports_the_plugin_only_when_asked(workdir: Path) -> None:
    cli = Path(sys.executable).parent / "cuvis-graph"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(cli), *args], cwd=workdir, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": ""})

    refused = run("validate", "pipeline.yaml", "--allow-module", MODULE)
    assert refused.returncode == 1 and not canary(workdir)
    done = run("validate", "pipeline.yaml", "--plugin", f"{MODULE}.py")
    assert done.returncode == 0, done.stderr
    assert canary(workdir)


@pytest.mark.parametrize(("body", "wanted"), [
    ("x = 1\ndef broken(:\n    pass\n", "syntax error at line 2"),
    ("x = 1\n\nraise RuntimeError('no licence server')\n", "importing it raised RuntimeError: no licence server "
                                                            "(line 3)"),
])
def test_a_failing_plugin_is_named_in_one_line(workdir: Path, capsys, body: str, wanted: str) -> None:
    (workdir / "broken_nodes.py").write_text(body)
    assert main(["validate", "pipeline.yaml", "--plugin", "broken_nodes.py"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: plugin broken_nodes.py: ") and wanted in err
    assert "broken_nodes" not in sys.modules


def test_a_missing_plugin_is_named(workdir: Path, capsys) -> None:
    assert main(["nodes", "--plugin", "nope.py"]) == 1
    assert capsys.readouterr().err == "error: plugin nope.py: no such file\n"
    assert main(["nodes", "--plugin", "nope_module"]) == 1
    assert "plugin nope_module: no module named 'nope_module'" in capsys.readouterr().err


def test_a_plugin_that_fails_half_way_leaves_no_registered_types(workdir: Path) -> None:
    (workdir / "half_nodes.py").write_text(PLUGIN + "\nraise ValueError('late')\n")
    before = dict(registry._CLASSES)
    with pytest.raises(PluginError, match="half_nodes.py: importing it raised ValueError: late"):
        load_plugin("half_nodes.py")
    assert before == registry._CLASSES and "half_nodes" not in sys.modules


def test_a_plugin_may_not_shadow_another_module(workdir: Path, tmp_path_factory, monkeypatch) -> None:
    installed = tmp_path_factory.mktemp("site") / "cg_installed"
    installed.mkdir()
    (installed / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(installed.parent))
    (workdir / "cg_installed.py").write_text("")
    with pytest.raises(PluginError, match="would shadow the installed module 'cg_installed'") as info:
        load_plugin("cg_installed.py")
    assert str((installed / "__init__.py").resolve()) in str(info.value) and "cg_installed" not in sys.modules

    (workdir / "json.py").write_text("")
    with pytest.raises(PluginError, match="its module name 'json' is already imported from") as info:
        load_plugin("json.py")
    assert json.__file__ in str(info.value)

    load_plugin(f"{MODULE}.py")
    other = tmp_path_factory.mktemp("elsewhere") / f"{MODULE}.py"
    other.write_text(PLUGIN)
    with pytest.raises(PluginError) as info:
        load_plugin(other)
    message = str(info.value)
    assert str(other) in message and str((workdir / f"{MODULE}.py").resolve()) in message
