"""Registry and safe instantiation: YAML creates only registered or explicitly allowlisted classes."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from cuvis_graph.nodes import RXGlobal

import cuvis_graph.core.registry as registry
from cuvis_graph import Node, register
from cuvis_graph.core.registry import (
    UnknownTypeError,
    UnsafeTargetError,
    allow_module,
    get_class,
    kind_of,
    registered,
    registered_name,
    resolve_target,
)
from cuvis_graph.data import MatSceneDataModule, SyntheticHSIDataModule
from cuvis_graph.monitors import FileMonitor


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations and allowlist entries made by a test disappear after it."""
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    monkeypatch.setattr(registry, "_ALLOWED", set(registry._ALLOWED))


@pytest.fixture
def plugin_module(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A module on sys.path that leaves a marker file when it is imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "cg_test_plugin.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from cuvis_graph import Node

        Path({str(marker)!r}).write_text("imported")

        class PluginNode(Node):
            '''A node from an allowlisted module.'''

        def not_a_class():
            return 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("cg_test_plugin", None)


def test_builtins_are_registered_with_their_kind() -> None:
    reg = registered()
    for name, kind in (("RXGlobal", "node"), ("MinMaxNormalizer", "node"), ("AnomalyBCEWithLogits", "leaf"),
                       ("AnomalyDetectionMetrics", "leaf"), ("FileMonitor", "monitor"),
                       ("SyntheticHSIDataModule", "data"), ("MatSceneDataModule", "data")):
        assert name in reg
        assert kind_of(reg[name]) == kind
    assert get_class("FileMonitor") is FileMonitor
    assert get_class("SyntheticHSIDataModule") is SyntheticHSIDataModule
    assert registered_name(MatSceneDataModule) == "MatSceneDataModule"
    assert kind_of(dict) is None


def test_unknown_type_has_a_hint() -> None:
    with pytest.raises(UnknownTypeError, match=r"unknown type 'RXGlobl' \(did you mean 'RXGlobal'\?\)"):
        get_class("RXGlobl")


def test_register_decorator_and_custom_name(clean_registry) -> None:
    @register
    class MyNode(Node):
        pass

    @register(name="Renamed")
    class Other(Node):
        pass

    assert get_class("MyNode") is MyNode
    assert get_class("Renamed") is Other
    assert registered_name(Other) == "Renamed"


@pytest.mark.parametrize("target", ["cuvis_graph.nodes.RXGlobal", "cuvis_graph.nodes.rx.RXGlobal",
                                    "cuvis_graph.RXGlobal"])
def test_target_resolving_to_a_registered_class_is_accepted(target: str) -> None:
    assert resolve_target(target) is RXGlobal


@pytest.mark.parametrize("target", ["os.system", "subprocess.Popen", "subprocess.run", "builtins.eval",
                                    "builtins.exec", "importlib.import_module", "sys.exit", "shutil.rmtree",
                                    "os.path.join", "pickle.loads"])
def test_dangerous_targets_are_refused(target: str, clean_registry) -> None:
    with pytest.raises(UnsafeTargetError, match="refused"):
        resolve_target(target)
    with pytest.raises(UnsafeTargetError, match="refused"):  # even when someone tries to allowlist the module
        resolve_target(target, allow=[target.rpartition(".")[0]])


@pytest.mark.parametrize("module", ["os", "subprocess", "builtins", "os.path", "importlib"])
def test_dangerous_modules_cannot_be_allowlisted(module: str, clean_registry) -> None:
    with pytest.raises(UnsafeTargetError, match="never be allowlisted"):
        allow_module(module)


def test_unregistered_module_is_refused_without_importing_it(plugin_module, clean_registry) -> None:
    with pytest.raises(UnsafeTargetError) as info:
        resolve_target("cg_test_plugin.PluginNode")
    message = str(info.value)
    assert "not allowlisted" in message
    assert "@cuvis_graph.register" in message and "--allow-module cg_test_plugin" in message
    assert "allow_modules=['cg_test_plugin']" in message and "allow_modules: [" not in message
    assert not plugin_module.exists(), "a module named by YAML was imported although it is not allowlisted"
    assert "cg_test_plugin" not in sys.modules


def test_allowlisted_module_resolves_node_classes_only(plugin_module, clean_registry) -> None:
    cls = resolve_target("cg_test_plugin.PluginNode", allow=["cg_test_plugin"])
    assert cls.__name__ == "PluginNode" and plugin_module.exists()
    with pytest.raises(UnsafeTargetError, match="only node, leaf, monitor and datamodule classes"):
        resolve_target("cg_test_plugin.not_a_class", allow=["cg_test_plugin"])
    with pytest.raises(UnsafeTargetError, match="has no attribute"):
        resolve_target("cg_test_plugin.Missing", allow=["cg_test_plugin"])
    allow_module("cg_test_plugin")  # process-wide allowlist
    assert resolve_target("cg_test_plugin.PluginNode") is cls


@pytest.mark.parametrize("target", ["RXGlobal", "not a path", "a..b", "1abc.Foo"])
def test_malformed_targets_are_refused(target: str) -> None:
    with pytest.raises(UnsafeTargetError, match="dotted path"):
        resolve_target(target)


def test_entry_point_plugins_are_registered(plugin_module, clean_registry, monkeypatch) -> None:
    import importlib.metadata

    points = [EntryPoint(name="plugin", value="cg_test_plugin:PluginNode", group=registry.ENTRY_POINT_GROUP),
              EntryPoint(name="broken", value="cg_no_such_module", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [p for p in points if p.group == group])
    monkeypatch.setattr(registry, "_loaded", False)
    assert get_class("PluginNode").__name__ == "PluginNode"  # the broken plugin only logged a warning
