"""One hyperspectral scene from a MATLAB ``.mat`` file (e.g. the ABU anomaly scenes).

Single-scene anomaly detection: the scene is both what statistics are fitted on and
what is scored, so the train, validation and test sets are the same one cube.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cuvis_graph.core.registry import register
from cuvis_graph.data.datamodule import CubeDataset, GraphDataModule
from cuvis_graph.data.readers import ReaderError
from cuvis_graph.errors import ConfigError, did_you_mean

__all__ = ["MatSceneDataModule"]


@register
class MatSceneDataModule(GraphDataModule):
    """A cube ``[H, W, C]`` (band-last) and an optional ground-truth map ``[H, W]`` from a ``.mat``.

    The file's header is read on construction (``scipy.io.whosmat``: variable names and
    shapes, no data), so a pipeline can be validated without loading the cube; the data is
    loaded by ``setup``. The cube is stored as float32 (exact for integer digital numbers up
    to 2^24); statistical nodes accumulate in float64.

    Args:
        path: the ``.mat`` file (MATLAB v5, as read by ``scipy.io.loadmat``).
        key: variable holding the cube ``[H, W, C]`` (default ``"data"``; the same name as
            :class:`FolderDataModule` and :func:`read_cube` use).
        mask_key: variable holding the label map ``[H, W]`` (>0 = anomaly); ``None`` for none.
        batch_size: scenes per batch (there is one).
        cube_key: the former name of ``key``, still accepted.
    """

    def __init__(self, path: str, key: str | None = None, mask_key: str | None = "map", batch_size: int = 1,
                 num_workers: int = 0, cube_key: str | None = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if key is not None and cube_key is not None and key != cube_key:
            raise ConfigError(f"key: '{key}' and cube_key: '{cube_key}' name two cubes; give one (key)")
        cube_key = key or cube_key or "data"
        self.path = Path(os.path.expanduser(str(path)))
        self.key = self.cube_key = cube_key
        self.mask_key = mask_key
        if not self.path.is_file():
            raise ConfigError(f"path: no such file '{self.path}'")
        import scipy.io

        try:
            header = {name: shape for name, shape, _ in scipy.io.whosmat(str(self.path))}
        except Exception as exc:  # noqa: BLE001 - any reader failure means "not a readable .mat"
            raise ConfigError(f"path: '{self.path}' is not a readable MATLAB v5 .mat file ({exc})") from None
        for param, name in (("key", cube_key), ("mask_key", mask_key)):
            if name is not None and name not in header:
                raise ConfigError(f"{param}: '{self.path.name}' has no variable '{name}'{did_you_mean(name, header)}; "
                                  f"its variables: {sorted(header)}")
        shape = tuple(header[cube_key])
        if len(shape) != 3:
            raise ConfigError(f"key: variable '{cube_key}' has shape {shape}; expected [H, W, C]")
        if mask_key is not None and tuple(header[mask_key]) != shape[:2]:
            raise ConfigError(f"mask_key: variable '{mask_key}' has shape {tuple(header[mask_key])}; "
                              f"expected {shape[:2]} (the cube's H, W)")
        self.n_channels = int(shape[2])
        self.batch_keys = frozenset({"cube"} | ({"mask"} if mask_key is not None else set()))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        import scipy.io

        try:
            content = scipy.io.loadmat(str(self.path), variable_names=[k for k in (self.cube_key, self.mask_key) if k])
        except Exception as exc:  # noqa: BLE001 - scipy raises many types for truncated or corrupt files
            raise ReaderError(self.path, f"cannot read the data of the MATLAB file, it may be truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None
        cube = np.asarray(content[self.cube_key])
        masks = None if self.mask_key is None else [np.asarray(content[self.mask_key])]
        dataset = CubeDataset([cube], masks, source=str(self.path))
        self.train_set = self.val_set = self.test_set = dataset
