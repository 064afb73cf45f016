"""Composition of a pipeline whose ``defaults:`` list is plain, without importing Hydra.

A plain defaults list names only config groups beside the file, one option each, and
``_self_``::

    defaults:
      - data: synthetic        # pipelines/data/synthetic.yaml under the key ``data``
      - training: default
      - _self_                 # the file itself (listed: Hydra warns when it is not)

For such a file (and no command-line overrides) Hydra's composition reduces to OmegaConf
merges in the list's order, starting from an empty config::

    cfg = {} <- {"data": load(data/synthetic.yaml)} <- {"training": load(...)} <- load(file) - defaults

with every file read by ``OmegaConf.load``, as Hydra reads it. :func:`compose_plain_defaults`
performs exactly these merges and returns ``None`` for anything else (nested defaults,
``@package`` headers or overrides, ``optional``/``override`` entries, option lists, missing
files, interpolations, which may name Hydra's resolvers), which then goes through Hydra.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["compose_plain_defaults"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_SELF = "_self_"


def _plain_entries(defaults: Any) -> list[tuple[str, str]] | None:
    """``[(group, option) | ("_self_", "")]`` in order; ``None`` unless every entry is
    ``{group: option}`` with plain names or ``_self_``, listed once (no list: the file alone)."""
    if defaults is None:
        defaults = []
    if not isinstance(defaults, list):
        return None
    entries: list[tuple[str, str]] = []
    for entry in defaults:
        if entry == _SELF:
            entries.append((_SELF, ""))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            (group, option), = entry.items()
            if not (isinstance(group, str) and isinstance(option, str) and _NAME.fullmatch(group)
                    and _NAME.fullmatch(option) and group != _SELF):
                return None
            entries.append((group, option))
        else:
            return None
    names = [group for group, _ in entries]
    if len(set(names)) != len(names) or (names and _SELF not in names):
        return None  # Hydra refuses repeated groups and warns about a missing _self_
    return entries or [(_SELF, "")]


def _load(file: Path) -> Any:
    """The file as Hydra loads it (``OmegaConf.load``), or ``None`` when Hydra would treat it
    other than as a plain mapping (a missing file, ``@package``, interpolations, defaults)."""
    from omegaconf import DictConfig, OmegaConf

    if not file.is_file():
        return None
    text = file.read_text(encoding="utf-8")
    if "@package" in text or "${" in text:
        return None
    config = OmegaConf.load(file)
    return config if isinstance(config, DictConfig) else None


def _stored_schema(config_paths: list[str]) -> bool:
    """Whether Hydra's ConfigStore (when imported) holds a schema under one of the names, which
    Hydra would merge into the config of that name."""
    store_module = sys.modules.get("hydra.core.config_store")
    if store_module is None:
        return False
    from hydra.plugins.config_source import ConfigLoadError

    store = store_module.ConfigStore.instance()
    for config_path in config_paths:
        try:
            store.load(config_path)
        except ConfigLoadError:
            continue
        return True
    return False


def compose_plain_defaults(path: Path) -> Any:
    """The ``DictConfig`` Hydra composes from the pipeline file ``path`` without overrides,
    or ``None`` when its defaults list is not plain or a merge fails (then Hydra composes,
    and reports the failure)."""
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        return _merge(path)
    except (OmegaConfBaseException, YAMLError, OSError, UnicodeDecodeError):
        return None


def _merge(path: Path) -> Any:
    from omegaconf import OmegaConf

    primary = _load(path)
    if primary is None or "hydra" in primary:
        return None
    entries = _plain_entries(OmegaConf.to_container(primary, resolve=False).get("defaults"))
    if entries is None or _stored_schema([f"{path.stem}.yaml"] + [f"{g}/{o}.yaml" for g, o in entries if o]):
        return None
    cfg = OmegaConf.create()
    for group, option in entries:
        if group == _SELF:
            own = primary.copy()
            own.pop("defaults", None)
            cfg.merge_with(own)
            continue
        loaded = _load(path.parent / group / f"{option}.yaml")
        if loaded is None or "defaults" in loaded or "hydra" in loaded:
            return None
        embedded = OmegaConf.create()
        OmegaConf.update(embedded, group, loaded, merge=False)
        cfg.merge_with(embedded)
    return cfg
