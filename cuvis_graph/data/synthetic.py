"""Deterministic synthetic hyperspectral scenes with implanted targets (the embedded default).

Scene model (per pixel ``p``, band ``b``)::

    x_p = g_p * sum_k a_pk e_k  +  n_p,         a_p = softmax(z_p / tau),  n_p ~ N(0, sigma^2 I)

* ``e_k`` (``[C]``): smooth endmember spectra over ``wavelengths`` (sums of Gaussian bumps
  on a sloped baseline, reflectance-like 0.03..0.7);
* ``z_pk``: Gaussian random fields smoothed spatially (abundances vary smoothly);
* ``g_p``: smooth illumination gain around 1;
* targets: spectra not in the endmember set, implanted as full pixels (small blobs,
  fraction 1) and sub-pixels (single pixels, fraction ``U(0.25, 0.6)``):
  ``x_p <- (1 - f) x_p + f t``; the mask is 1 on every implanted pixel.

Everything is drawn from ``numpy.random.default_rng([seed, scene_index])``, so a scene
depends only on the seed and its index; the datamodule generates a split's scenes when the
split is first read (``setup`` or ``train_set``/``val_set``/``test_set``), not on construction.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cuvis_graph.core.registry import register
from cuvis_graph.data.checks import DataError
from cuvis_graph.data.datamodule import CubeDataset, GraphDataModule

__all__ = ["SyntheticHSIDataModule", "make_scene", "make_spectra"]


def _bumpy_spectrum(rng: np.random.Generator, wl: np.ndarray) -> np.ndarray:
    t = (wl - wl.min()) / (np.ptp(wl) or 1.0)
    spec = rng.uniform(0.05, 0.3) + rng.uniform(-0.15, 0.25) * t
    for _ in range(rng.integers(2, 4)):
        centre, width, height = rng.uniform(0, 1), rng.uniform(0.05, 0.2), rng.uniform(-0.15, 0.3)
        spec = spec + height * np.exp(-0.5 * ((t - centre) / width) ** 2)
    return np.clip(spec, 0.03, 0.7)


def make_spectra(seed: int, wavelengths: np.ndarray, n_endmembers: int, n_target_spectra: int) -> tuple[np.ndarray, np.ndarray]:
    """``(endmembers [K, C], targets [T, C])`` for a seed."""
    rng = np.random.default_rng([seed, 10_000])
    endmembers = np.stack([_bumpy_spectrum(rng, wavelengths) for _ in range(n_endmembers)])
    targets = np.stack([_bumpy_spectrum(rng, wavelengths) for _ in range(n_target_spectra)])
    return endmembers, targets


def make_scene(seed: int, index: int, height: int, width: int, wavelengths: np.ndarray, endmembers: np.ndarray,
               targets: np.ndarray, noise: float = 0.004, n_targets: tuple[int, int] = (4, 9)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(cube [H, W, C] float32, mask [H, W] uint8)``."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, index])
    k = len(endmembers)
    fields = np.stack([gaussian_filter(rng.normal(size=(height, width)), sigma=3.0, mode="wrap") for _ in range(k)], -1)
    fields /= fields.std() + 1e-12
    logits = fields / 0.6
    abundances = np.exp(logits - logits.max(-1, keepdims=True))
    abundances /= abundances.sum(-1, keepdims=True)
    gain = 1.0 + 0.05 * gaussian_filter(rng.normal(size=(height, width)), sigma=6.0, mode="wrap") * 6.0
    cube = gain[..., None] * (abundances @ endmembers)
    cube += rng.normal(scale=noise, size=cube.shape)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(*n_targets)):
        spectrum = targets[rng.integers(len(targets))]
        r, c = rng.integers(2, height - 3), rng.integers(2, width - 3)
        if rng.uniform() < 0.5:  # full-pixel blob 1..2 px wide
            size = rng.integers(1, 3)
            rows, cols = slice(r, r + size), slice(c, c + size)
            fraction = 1.0
        else:  # sub-pixel
            rows, cols = slice(r, r + 1), slice(c, c + 1)
            fraction = rng.uniform(0.25, 0.6)
        cube[rows, cols] = (1 - fraction) * cube[rows, cols] + fraction * gain[rows, cols, None] * spectrum
        mask[rows, cols] = 1
    return cube.astype(np.float32), mask


def _physical_memory() -> int | None:
    """Bytes of RAM (``None`` where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits_in_memory(n_scenes: int, height: int, width: int, n_bands: int) -> None:
    """Refuse scene counts and sizes whose float32 cubes (all held in memory once read) would
    take more than half of this machine's memory, before generating anything."""
    need = 4 * n_scenes * height * width * n_bands
    memory = _physical_memory()
    if memory is not None and need > memory // 2:
        raise DataError(f"{n_scenes} scenes of {height}x{width}x{n_bands} float32 need "
                        f"{need / 2**30:.3g} GiB, more than half of this machine's {memory / 2**30:.3g} GiB; "
                        "use fewer or smaller scenes, or a FolderDataModule that reads files as needed")


_SPLITS = ("train", "val", "test")

#: the splits each ``setup`` stage reads (``None``: every split)
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test", "val")}


def _split_property(split: str) -> property:
    """``<split>_set``: the split's :class:`CubeDataset`, generated on first read (``None`` for
    an empty split); assigning replaces it."""

    def get(self: SyntheticHSIDataModule) -> CubeDataset | None:
        datasets = self.__dict__.setdefault("_datasets", {})
        if split not in datasets:
            datasets[split] = self._generate(split)
        return datasets[split]

    def set_(self: SyntheticHSIDataModule, value: Any) -> None:
        self.__dict__.setdefault("_datasets", {})[split] = value

    return property(get, set_, doc=f"The {split} scenes, generated when first read.")


@register
class SyntheticHSIDataModule(GraphDataModule):
    """Synthetic scenes with anomaly masks and wavelengths; offline and deterministic.

    Construction only declares the data (channels, wavelengths, batch keys) and draws the
    spectra; a split's scenes are generated when it is first read, by ``setup`` or by
    ``train_set``/``val_set``/``test_set``, with the same values whichever reads it first.

    Args:
        n_train, n_val, n_test: number of scenes per split (disjoint scene indices).
        height, width: scene size in pixels.
        n_bands: channels C, spread over ``wavelength_range`` (nm).
        n_endmembers: background materials mixed per pixel.
        noise: sensor noise standard deviation (reflectance units).
        seed: everything derives from it.
        batch_size: scenes per batch.
    """

    train_set = _split_property("train")
    val_set = _split_property("val")
    test_set = _split_property("test")

    def __init__(self, n_train: int = 16, n_val: int = 4, n_test: int = 4, height: int = 32, width: int = 32,
                 n_bands: int = 40, wavelength_range: tuple[float, float] = (400.0, 1000.0), n_endmembers: int = 4,
                 n_target_spectra: int = 3, noise: float = 0.004, seed: int = 0, batch_size: int = 4,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self._datasets: dict[str, CubeDataset | None] = {}  # the base class's ``None`` sets are not data
        if min(height, width) < 8:
            raise ValueError(f"scenes must be at least 8x8 pixels, got {height}x{width}")
        _check_fits_in_memory(n_train + n_val + n_test, height, width, n_bands)
        self.params = dict(n_train=n_train, n_val=n_val, n_test=n_test, height=height, width=width, n_bands=n_bands,
                           noise=noise, seed=seed)
        self.wavelengths = np.linspace(*wavelength_range, n_bands).astype(np.float32)
        self.n_channels = n_bands
        self.batch_keys = frozenset({"cube", "mask", "wavelengths"})
        self.endmembers, self.targets = make_spectra(seed, self.wavelengths, n_endmembers, n_target_spectra)
        self._counts = {"train": n_train, "val": n_val, "test": n_test}
        self._scene_args = dict(seed=seed, height=height, width=width, noise=noise)

    def setup(self, stage: str | None = None) -> None:
        """Generate the scenes of the splits ``stage`` reads (every split for ``None``)."""
        for split in _STAGE_SPLITS.get(stage, _SPLITS):
            getattr(self, f"{split}_set")

    def _generate(self, split: str) -> CubeDataset | None:
        """The split's scenes: indices ``start .. start + count - 1`` after the earlier splits."""
        a = self._scene_args
        start = sum(self._counts[s] for s in _SPLITS[: _SPLITS.index(split)])
        scenes = [make_scene(a["seed"], start + i, a["height"], a["width"], self.wavelengths, self.endmembers,
                             self.targets, noise=a["noise"]) for i in range(self._counts[split])]
        if not scenes:
            return None
        return CubeDataset([s[0] for s in scenes], [s[1] for s in scenes], self.wavelengths)
