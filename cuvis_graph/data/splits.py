"""Splitting the files of a folder into train / val / test, and the ``splits.json`` that keeps it.

``splits.json``: ``{"root", "seed", "val_fraction", "test_fraction", "train": [names],
"val": [...], "test": [...], "skipped"?: [{"file", "reason"}]}``, names relative to the
root. A saved split is reused as it is: names that are not files of the folder and names
in two splits are refused (data would leak between them); files it does not list are left
out with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cuvis_graph.errors import ConfigError

__all__ = ["SPLITS", "split_files", "read_splits_file", "write_splits_file"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_files(names: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"train", "val", "test": sorted names}`` by a seeded permutation of the sorted names.

    ``n_val = round(n * val_fraction)``, ``n_test = round(n * test_fraction)``, the rest trains.
    """
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_val, n_test = round(len(names) * val_fraction), round(len(names) * test_fraction)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {k: sorted(names[i] for i in parts[k]) for k in SPLITS}


def read_splits_file(path: Path, names: Sequence[str], root: Path, configured: Mapping[str, Any],
                     keep_skipped: bool) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """The split saved in ``path`` over the file ``names`` of ``root``, and the files it lists
    as ``skipped`` (when ``keep_skipped``: they stay out). ``configured`` (``seed``,
    ``val_fraction``, ``test_fraction``) differing from the saved values is warned about."""
    try:
        saved = json.loads(path.read_text())
        splits = {k: [str(n) for n in saved.get(k, [])] for k in SPLITS}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"splits_path: '{path}' is not a readable splits file ({exc})") from None
    known = set(names)
    unknown = [n for k in SPLITS for n in splits[k] if n not in known]
    if unknown:
        raise ConfigError(f"splits_path: '{path}' names files that are not in '{root}': {unknown[:5]}")
    placed = [n for k in SPLITS for n in splits[k]]
    twice = sorted({n for n in placed if placed.count(n) > 1})
    if twice:
        raise ConfigError(f"splits_path: '{path}' puts files in more than one split (data would leak "
                          f"between them): {twice[:5]}")
    differs = [f"{k}={saved[k]} (configured {v})" for k, v in configured.items() if k in saved and saved[k] != v]
    if differs:
        log.warning("%s was made with %s; reusing the saved split (delete the file for a new one)",
                    path, ", ".join(differs))
    assigned = set(placed)
    skipped: list[dict[str, str]] = []
    before = saved.get("skipped") if keep_skipped else None
    for entry in before if isinstance(before, list) else []:
        if isinstance(entry, dict) and entry.get("file") in known and entry["file"] not in assigned:
            assigned.add(entry["file"])  # skipped when the split was made: it stays out
            skipped.append({"file": entry["file"], "reason": str(entry.get("reason"))})
    left_out = [n for n in names if n not in assigned]
    if left_out:
        log.warning("%s: %d file(s) not in the saved split are left out: %s", path, len(left_out), left_out[:5])
    return splits, skipped


def write_splits_file(path: Path, content: Mapping[str, Any]) -> Path:
    """``content`` as JSON at ``path`` (atomically); a folder is refused naming a file to give."""
    from cuvis_graph.io.atomic import atomic_write_json

    if path.is_dir():
        raise ConfigError(f"splits_path: '{path}' is a folder; give a file name such as '{path / 'splits.json'}'")
    return atomic_write_json(path, dict(content))
