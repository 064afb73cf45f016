"""Helpers shared by the YAML/CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io


def write_tiny_mat(path: Path, h: int = 12, w: int = 10, c: int = 6, seed: int = 0) -> Path:
    """A small ABU-like scene: int16 cube ``data`` [h, w, c] around 1e3, ``map`` with 4 anomalies."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    cube = (rng.normal(size=(h * w, c)) @ mixing * 30 + 1000).reshape(h, w, c)
    mask = np.zeros((h, w), np.uint8)
    for r, col in ((1, 1), (4, 7), (8, 2), (10, 8)):
        cube[r, col] += 400 * rng.normal(size=c)
        mask[r, col] = 1
    scipy.io.savemat(path, {"data": cube.astype(np.int16), "map": mask})
    return path
