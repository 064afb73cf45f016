"""A plain defaults list composes without Hydra to exactly what Hydra composes (values, types
and key order); anything else is left to Hydra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cuvis_graph.io.spec import composition, hydra_composition, load_config
from cuvis_graph.io.spec.plain_defaults import compose_plain_defaults

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))

GROUPS = {
    "data/small.yaml": "type: SyntheticHSIDataModule\n"
                       "params: {n_train: 2, eps: 1e-6, sizes: [1, 2], none: null, later: '???', flag: yes}\n",
    "training/short.yaml": "trainer: {max_epochs: 3, extra: {a: 1}}\noptimizer: {lr: 0.1}\n",
}

#: file name -> pipeline text whose defaults list is plain
PLAIN = {
    "self_last": "defaults:\n  - data: small\n  - training: short\n  - _self_\n"
                 "name: x\ntraining: {trainer: {extra: {b: 2}}}\ndata: {params: {n_train: 5}}\n",
    "self_first": "name: x\ndefaults:\n  - _self_\n  - data: small\n  - training: short\n"
                  "training: {trainer: {max_epochs: 9, extra: {b: 2}}}\ndata: {params: {n_train: 5}}\n",
    "no_defaults": "name: x\nnodes: {a: {type: B, params: {v: 1.0e-3, w: 1e3, s: 'yes', o: on, i: 0x10}}}\n",
    "empty_defaults": "defaults: []\nname: x\n",
}

#: file name -> pipeline text that only Hydra composes (``None`` from the plain path)
NOT_PLAIN = {
    "self_missing": "defaults:\n  - data: small\nname: x\n",  # Hydra warns about it
    "interpolation": "defaults:\n  - data: small\n  - _self_\nname: ${data.type}\n",
    "missing_option": "defaults:\n  - data: nowhere\n  - _self_\nname: x\n",
    "override_entry": "defaults:\n  - data: small\n  - override training: short\n  - _self_\nname: x\n",
    "optional_entry": "defaults:\n  - optional data: small\n  - _self_\nname: x\n",
    "package_entry": "defaults:\n  - data@other: small\n  - _self_\nname: x\n",
    "option_list": "defaults:\n  - data: [small]\n  - _self_\nname: x\n",
    "sibling_config": "defaults:\n  - self_last\n  - _self_\nname: x\n",
    "repeated_group": "defaults:\n  - data: small\n  - data: small\n  - _self_\nname: x\n",
    "nested_defaults": "defaults:\n  - training: nested\n  - _self_\nname: x\n",
    "package_header": "defaults:\n  - training: global\n  - _self_\nname: x\n",
    "merge_conflict": "defaults:\n  - data: small\n  - _self_\nname: x\ndata: [1, 2]\n",
}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    files = dict(GROUPS)
    files["training/nested.yaml"] = "defaults:\n  - sub: one\nlr: 1\n"
    files["training/sub/one.yaml"] = "a: 1\n"
    files["training/global.yaml"] = "# @package _global_\nlr: 1\n"
    files.update({f"{name}.yaml": text for name, text in {**PLAIN, **NOT_PLAIN}.items()})
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def _hydra(path: Path) -> str:
    """Hydra's composition as JSON (key order kept); the reference."""
    cfg = hydra_composition.hydra_compose(path, [], str(path))
    return json.dumps(OmegaConf.to_container(cfg, resolve=False))


def _plain(path: Path) -> str | None:
    cfg = compose_plain_defaults(path)
    return None if cfg is None else json.dumps(OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_a_plain_defaults_list_composes_as_hydra_does(folder: Path, name: str) -> None:
    path = folder / f"{name}.yaml"
    plain = _plain(path)
    assert plain is not None
    assert plain == _hydra(path)


def test_merge_order_follows_the_list(folder: Path) -> None:
    last = json.loads(_plain(folder / "self_last.yaml"))
    first = json.loads(_plain(folder / "self_first.yaml"))
    assert last["data"]["params"]["n_train"] == 5 and first["data"]["params"]["n_train"] == 2
    assert last["training"]["trainer"] == {"max_epochs": 3, "extra": {"a": 1, "b": 2}}
    assert first["training"]["trainer"] == {"max_epochs": 3, "extra": {"b": 2, "a": 1}}
    assert list(last) == ["data", "training", "name"] and list(first) == ["name", "training", "data"]
    assert last["data"]["params"]["eps"] == 1e-6 and last["data"]["params"]["flag"] is True


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_anything_else_is_left_to_hydra(folder: Path, name: str) -> None:
    assert compose_plain_defaults(folder / f"{name}.yaml") is None


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_shipped_pipeline_loads_the_same_with_or_without_hydra(path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUVIS_GRAPH_DATA", str(ROOT.parent / "shared" / "data"))
    fast, _ = load_config(path)
    with monkeypatch.context() as m:
        m.setattr(composition, "compose_plain_defaults", lambda _path: None)
        reference, _ = load_config(path)
    assert json.dumps(fast) == json.dumps(reference)


def test_a_schema_stored_under_a_configs_name_is_left_to_hydra(folder: Path) -> None:
    from hydra.core.config_store import ConfigStore

    assert compose_plain_defaults(folder / "self_last.yaml") is not None
    ConfigStore.instance().store(group="data", name="small", node={"type": "X"})
    try:
        assert compose_plain_defaults(folder / "self_last.yaml") is None
    finally:
        del ConfigStore.instance().repo["data"]["small.yaml"]


def test_validating_a_shipped_pipeline_imports_no_hydra() -> None:
    import subprocess

    code = ("import sys\nfrom cuvis_graph.io.spec import load_pipeline\n"
            f"load_pipeline({str(ROOT / 'pipelines' / 'selector_rx_bce.yaml')!r})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hydra'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
