"""Datamodule over the cube files of a folder (or a list of files), read lazily.

Files (``.npy``, ``.npz``, ``.mat``, ENVI) are opened with :func:`~cuvis_graph.data.read_cube`
and memory-mapped where the format allows, so only what a batch needs is read from disk.
Files are split into train/val/test by a seeded permutation; the assignment can be saved
to / reused from a ``splits.json`` so that runs see the same split
(:mod:`cuvis_graph.data.splits`). The scenes are served by
:class:`~cuvis_graph.data.file_dataset.FileCubeDataset`; this module scans the files' headers
and puts the pieces together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.core.registry import register
from cuvis_graph.data.checks import wavelength_problem
from cuvis_graph.data.datamodule import GraphDataModule
from cuvis_graph.data.file_dataset import FileCubeDataset
from cuvis_graph.data.readers import ReaderError, list_cubes, read_cube
from cuvis_graph.data.splits import SPLITS, read_splits_file, split_files, write_splits_file
from cuvis_graph.data.tiling import Edge, TiledDataset, make_loader
from cuvis_graph.errors import ConfigError

__all__ = ["FolderDataModule"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Header:
    """What the scan reads of one file: kept band indices, band count, mask, kept wavelengths."""

    path: Path
    keep: np.ndarray
    n_bands: int
    has_mask: bool
    wavelengths: np.ndarray | None


@register
class FolderDataModule(GraphDataModule):
    """Every cube file of a folder (or a list of files), split into train/val/test by file.

    Cubes are read lazily (memory-mapped where the format allows, see
    :func:`~cuvis_graph.data.read_cube`); each batch holds ``cube [B,H,W,C]`` float32, plus
    ``mask [B,H,W]`` when every file has ground truth and ``wavelengths [C]`` when known.
    Scenes of different sizes are batched apart (never padded); with ``tile`` the scenes
    are served as tiles (training on the ``tile``/``stride`` grid, statistics, validation and
    test on the non-overlapping partition: see :mod:`cuvis_graph.data.tiling`).

    **Split.** The sorted file names are permuted with ``seed``; ``round(n * val_fraction)``
    go to val, ``round(n * test_fraction)`` to test, the rest to train. With ``splits_path``,
    an existing file is reused as is (reproducible across runs even if files are added;
    new files are left out with a warning), else the split is written there. Nothing is
    ever written into the data folder unless ``splits_path`` points there.

    **Values.** Data that cannot be right is refused naming the file: non-finite cube values
    (with their count; for ENVI, a hint when the other byte order reads finite), masks with
    values other than non-negative integers (0 = background, > 0 = anomaly or class id, so
    a 0/255 mask works), non-finite, duplicated or decreasing wavelengths, ENVI headers
    whose shape does not match the data file size, truncated files. Integer cubes beyond
    2^24 (float32's exact range) are warned about. See :mod:`cuvis_graph.data.checks`.

    Channels, mask availability and wavelengths are read from the files' headers (the
    first access to :meth:`data_spec` or :meth:`setup`); every file must have the same
    number of channels (after ``drop_bad_bands``), the same bad bands (with
    ``drop_bad_bands``) and the same wavelengths (where the files carry them).

    **Bad files.** ``on_bad_file="fail"`` (default) refuses the first file that cannot be
    read at that scan (unreadable header, truncated file, ...) or does not match the others.
    ``"skip"`` leaves such files out of every split instead, each with a warning naming the
    file and the reason: unreadable ones, then those whose channel count differs from most
    files', whose bad bands are flagged differently, or whose wavelengths differ (ties go to
    the group of the first file in sorted order). They are listed in :attr:`skipped_files`
    (``[{"file", "reason"}]``; a training run copies them into ``run.json`` as
    ``data.skipped_files``) and, when this datamodule writes ``splits_path``, in its
    ``skipped`` entry (a reused split file is never rewritten; files it lists as skipped stay
    out). Values problems found later, while pixels are read (non-finite values), still fail
    naming the file in either mode: the scan reads headers, not every pixel.

    Args:
        folder: a folder (its cube files, see :func:`~cuvis_graph.data.list_cubes`) or a list of files.
        val_fraction, test_fraction: fractions of the files for validation and test.
        seed: seed of the split permutation.
        splits_path: ``splits.json`` to reuse or write; ``None`` keeps the split in memory.
        val_on_train: validate (and test) on the training files (single-scene anomaly detection).
        key, mask_key: cube / ground-truth variable names (``.mat``/``.npz``).
        drop_bad_bands: remove the bands flagged bad in the files (ENVI ``bbl``).
        wavelengths: ``[C]`` nm, overriding the files' wavelengths.
        recursive: also take files in sub-folders.
        tile, stride, edge: serve tiles instead of whole scenes.
        batch_size: scenes (or tiles) per batch.
        on_bad_file: ``"fail"`` or ``"skip"`` a file that is unreadable or inconsistent (above).
    """

    def __init__(self, folder: str | os.PathLike | Sequence[str | os.PathLike], val_fraction: float = 0.0,
                 test_fraction: float = 0.0, seed: int = 0, splits_path: str | os.PathLike | None = None,
                 val_on_train: bool = False, key: str | None = None, mask_key: str | None = None,
                 drop_bad_bands: bool = False, wavelengths: Sequence[float] | None = None, recursive: bool = False,
                 tile: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None,
                 edge: Edge = "shift", batch_size: int = 1, num_workers: int = 0,
                 on_bad_file: Literal["fail", "skip"] = "fail") -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if on_bad_file not in ("fail", "skip"):
            raise ConfigError(f"on_bad_file: must be 'fail' or 'skip', got {on_bad_file!r}")
        self.on_bad_file = on_bad_file
        #: files left out by ``on_bad_file="skip"``: ``[{"file": name, "reason": ...}]``
        self.skipped_files: list[dict[str, str]] = []
        self._wrote_splits = False
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
        if isinstance(folder, str | os.PathLike):
            self.root = Path(folder).expanduser()
            if not self.root.is_dir():
                raise ConfigError(f"folder: no such folder '{self.root}'")
            files = list_cubes(self.root, recursive=recursive)
            if not files:
                raise ConfigError(f"folder: '{self.root}' holds no cube files (.npy, .npz, .mat, ENVI .hdr)")
        else:
            files = [Path(f).expanduser() for f in folder]
            if not files:
                raise ConfigError("folder: the list of files is empty")
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConfigError(f"folder: no such file(s): {missing}")
            self.root = Path(os.path.commonpath([f.resolve().parent for f in files]))
            files = [f.resolve() for f in files]
            twice = sorted({str(f) for f in files if files.count(f) > 1})
            if twice:
                raise ConfigError(f"folder: the list names the same file more than once ({twice[0]}); "
                                  "it could land in two splits and leak between them")
        self.files: list[Path] = files
        self.val_fraction, self.test_fraction, self.seed = float(val_fraction), float(test_fraction), int(seed)
        self.splits_path = None if splits_path is None else Path(splits_path).expanduser()
        self.val_on_train = val_on_train
        self.read_kwargs = {k: v for k, v in (("key", key), ("mask_key", mask_key)) if v is not None}
        self.drop_bad_bands = drop_bad_bands
        self.user_wavelengths = None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
        problem = None if wavelengths is None else wavelength_problem(self.user_wavelengths)
        if problem:
            raise ConfigError(f"wavelengths: {problem}")
        self.tile, self.stride, self.edge = tile, stride, edge
        self.splits: dict[str, list[str]] = self._make_splits()
        self.bands: np.ndarray | None = None
        self.statistics_set: Dataset | None = None
        self._scanned = False

    # -- split ---------------------------------------------------------------------------
    def _name(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def _make_splits(self) -> dict[str, list[str]]:
        names = [self._name(f) for f in self.files]
        path = self.splits_path
        if path is not None and path.is_file():
            configured = {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}
            splits, skipped = read_splits_file(path, names, self.root, configured, self.on_bad_file == "skip")
            self.skipped_files.extend(skipped)
            return splits
        splits = split_files(names, self.val_fraction, self.test_fraction, self.seed)
        if not splits["train"]:
            raise ConfigError(f"val_fraction/test_fraction: no file left for training out of {len(names)}")
        if path is not None:
            write_splits_file(path, self._split_record(splits))
            self._wrote_splits = True
        return splits

    def _split_record(self, splits: dict[str, list[str]]) -> dict[str, Any]:
        skipped = {"skipped": list(self.skipped_files)} if self.skipped_files else {}
        return {"root": str(self.root), "seed": self.seed, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, **splits, **skipped}

    def write_splits(self, path: str | os.PathLike) -> Path:
        """Save the current split (and the skipped files) as JSON to ``path`` (atomically)."""
        path = Path(path)
        write_splits_file(path, self._split_record(self.splits))
        return path

    def split_files(self, split: str) -> list[Path]:
        """Paths of the files in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        by_name = {self._name(f): f for f in self.files}
        return [by_name[n] for n in self.splits[split]]

    # -- headers ---------------------------------------------------------------------------
    def _scan(self) -> None:
        """Channels, bands kept, mask availability and wavelengths from every used file."""
        if self._scanned:
            return
        headers = [h for h in (self._header(f) for k in SPLITS for f in self.split_files(k)) if h is not None]
        if self.on_bad_file == "skip":
            headers = self._consistent(headers)
            self._leave_out_skipped()
        used = [h.path for h in headers]
        channels: int | None = None
        first: Path | None = None
        wavelengths: np.ndarray | None = None
        wl_file: Path | None = None
        first_keep: np.ndarray | None = None
        n_masks = 0
        for h in headers:
            path, keep = h.path, h.keep
            if first_keep is None:
                channels, first, first_keep = len(keep), path, keep
                bands = keep if len(keep) != h.n_bands else None
            elif len(keep) != channels:
                raise ReaderError(path, f"has {len(keep)} channels{' after dropping bad bands' * self.drop_bad_bands}"
                                  f", but {first} has {channels}; every file must have the same channel count")
            elif self.drop_bad_bands and not np.array_equal(keep, first_keep):
                raise ReaderError(path, f"flags other bad bands than {first}; the kept bands would not correspond")
            n_masks += h.has_mask
            if h.wavelengths is not None:
                wl = h.wavelengths
                if wavelengths is None:
                    wavelengths, wl_file = wl, path
                elif not np.allclose(wl, wavelengths, rtol=0, atol=1e-3):
                    raise ReaderError(path, f"its wavelengths differ from those of {wl_file} "
                                      f"(max difference {np.abs(wl - wavelengths).max():.3g} nm)")
        if self.user_wavelengths is not None:
            if len(self.user_wavelengths) != channels:
                raise ConfigError(f"wavelengths: {len(self.user_wavelengths)} values, but the files have "
                                  f"{channels} channels")
            wavelengths = self.user_wavelengths
        self.n_channels, self.bands = channels, bands
        self.wavelengths = None if wavelengths is None else np.asarray(wavelengths, dtype=np.float32)
        all_masks = n_masks == len(used)
        self.batch_keys = frozenset({"cube"} | ({"mask"} if all_masks else set())
                                    | ({"wavelengths"} if wavelengths is not None else set()))
        if 0 < n_masks < len(used):
            log.warning("%s: %d of %d files have no ground-truth mask; batches carry no 'mask'", self.root,
                        len(used) - n_masks, len(used))
        self._scanned = True

    def _header(self, path: Path) -> _Header | None:
        """What the scan needs of ``path``; ``None`` (skipped) when it cannot be read and ``on_bad_file="skip"``."""
        try:
            cube = read_cube(path, mmap=True, **self.read_kwargs)
        except ReaderError as exc:
            if self.on_bad_file == "fail":
                raise
            self._skip(path, str(exc).removeprefix(f"{exc.path}: "))
            return None
        keep = cube.good_band_indices() if self.drop_bad_bands else np.arange(cube.n_bands)
        return _Header(path, keep, cube.n_bands, cube.mask is not None,
                       None if cube.wavelengths is None else cube.wavelengths[keep])

    def _consistent(self, headers: list[_Header]) -> list[_Header]:
        """The files that agree with most files on channels, bad bands and wavelengths; the others skipped."""
        suffix = " after dropping bad bands" * self.drop_bad_bands
        headers = self._majority(headers, lambda a, b: len(a.keep) == len(b.keep),
                                 lambda h, ref, n: f"has {len(h.keep)} channels{suffix}, but {n} of "
                                                   f"{len(headers)} files have {len(ref.keep)} (e.g. {ref.path})")
        if self.drop_bad_bands:
            headers = self._majority(headers, lambda a, b: np.array_equal(a.keep, b.keep),
                                     lambda h, ref, n: f"flags other bad bands than {n} of {len(headers)} files "
                                                       f"(e.g. {ref.path}); the kept bands would not correspond")
        with_wl = [h for h in headers if h.wavelengths is not None]
        kept = self._majority(with_wl, lambda a, b: np.allclose(a.wavelengths, b.wavelengths, rtol=0, atol=1e-3),
                              lambda h, ref, n: f"its wavelengths differ from those of {n} of {len(with_wl)} files "
                                                f"(e.g. {ref.path}; max difference "
                                                f"{np.abs(h.wavelengths - ref.wavelengths).max():.3g} nm)")
        return [h for h in headers if h.wavelengths is None or h in kept]

    def _majority(self, headers: list[_Header], same: Callable[[_Header, _Header], bool],
                  reason: Callable[[_Header, _Header, int], str]) -> list[_Header]:
        """The largest group of ``headers`` that are ``same`` as its first member (ties: the group
        of the earliest file); the others are skipped with ``reason(header, reference, group size)``."""
        groups: list[list[_Header]] = []
        for h in headers:
            group = next((g for g in groups if same(g[0], h)), None)
            if group is None:
                groups.append([h])
            else:
                group.append(h)
        if len(groups) <= 1:
            return headers
        best = max(groups, key=len)
        for h in headers:
            if not any(h is b for b in best):
                self._skip(h.path, reason(h, best[0], len(best)))
        return best

    def _skip(self, path: Path, reason: str) -> None:
        log.warning("%s: skipped (on_bad_file='skip'): %s", path, reason)
        self.skipped_files.append({"file": self._name(path), "reason": reason})

    def _leave_out_skipped(self) -> None:
        """Take the skipped files out of every split (and out of ``splits_path`` when it was written here)."""
        skipped = {s["file"] for s in self.skipped_files}
        self.splits = {k: [n for n in names if n not in skipped] for k, names in self.splits.items()}
        if not self.splits["train"]:
            raise ConfigError(f"on_bad_file: every training file was skipped ({len(self.skipped_files)} file(s), "
                              f"first {self.skipped_files[0]['file']}: {self.skipped_files[0]['reason']})")
        if self._wrote_splits and self.skipped_files:
            write_splits_file(self.splits_path, self._split_record(self.splits))

    def data_spec(self) -> DataSpec:
        self._scan()
        return super().data_spec()

    # -- datasets ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._scan()

        def dataset(split: str) -> FileCubeDataset | None:
            files = self.split_files(split)
            if not files:
                return None
            return FileCubeDataset(files, bands=self.bands, with_mask="mask" in self.batch_keys,
                                   wavelengths=self.wavelengths, **self.read_kwargs)

        train, val, test = (dataset(s) for s in SPLITS)
        if self.val_on_train:
            val = test = train
        if self.tile is None:
            self.train_set, self.val_set, self.test_set = train, val, test
            self.statistics_set = train
            return

        def partition(ds: Dataset | None) -> TiledDataset | None:
            return None if ds is None else TiledDataset(ds, self.tile, self.tile, "crop")

        self.train_set = TiledDataset(train, self.tile, self.stride, self.edge)
        self.statistics_set = partition(train)
        self.val_set = partition(val)
        self.test_set = self.val_set if test is val else partition(test)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader | list:
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers)

    def statistics_dataloader(self) -> DataLoader | list:
        """Training scenes (or their partition tiles) in a fixed order."""
        return self._loader(self.statistics_set, shuffle=False)
