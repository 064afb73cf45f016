"""Readers for hyperspectral cube files: ``.npy``, ``.npz``, ``.mat`` (v5 and v7.3/HDF5), ENVI.

Every reader returns a :class:`HyperspectralCube` whose ``data`` is band-last ``[H, W, C]``
in the file's own dtype; large files stay on disk (``np.memmap``) where the format allows
it (``.npy``, ENVI, uncompressed contiguous v7.3 variables). ``.npz`` and MATLAB v5 files
cannot be memory-mapped and are loaded on read.

Any failure raises :class:`ReaderError`, whose message starts with the file's path.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cuvis_graph.data.checks import mask_problem, wavelength_problem
from cuvis_graph.errors import CuvisGraphError

__all__ = [
    "HyperspectralCube",
    "ReaderError",
    "read_cube",
    "list_cubes",
    "SUPPORTED_SUFFIXES",
    "ENVI_DATA_SUFFIXES",
]

#: Suffixes :func:`read_cube` dispatches on (``.hdr`` = ENVI header).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".mat", ".hdr")
#: Data-file suffixes of an ENVI pair (accepted by :func:`read_cube` when a ``.hdr`` lies beside).
ENVI_DATA_SUFFIXES: tuple[str, ...] = (".img", ".raw", ".dat", ".bsq", ".bil", ".bip", "")

_MASK_NAME = re.compile(r"map|mask|gt|ground|label", re.IGNORECASE)
_WAVELENGTH_NAME = re.compile(r"^(wavelengths?|wl|wave|lambdas?|bands?_?cent(er|re)s?|centers)$", re.IGNORECASE)
_FWHM_NAME = re.compile(r"^(fwhm|bandwidths?)$", re.IGNORECASE)
_BBL_NAME = re.compile(r"^(bbl|bad_?bands?)$", re.IGNORECASE)
_MICRON_UNITS = {"micrometers", "micrometer", "microns", "micron", "um", "µm"}


class ReaderError(CuvisGraphError):
    """A file that cannot be read as a hyperspectral cube; the message starts with the path."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


@dataclass
class HyperspectralCube:
    """A cube read from a file.

    Attributes:
        data: ``[H, W, C]`` band-last array (file dtype; may be a ``np.memmap``).
        wavelengths: ``[C]`` float64 band centres in nm, or ``None``.
        fwhm: ``[C]`` float64 band widths in nm, or ``None``.
        bad_bands: ``[C]`` bool, True = bad band (ENVI ``bbl == 0``), or ``None``.
        mask: ``[H, W]`` ground truth (>0 = anomaly / class id), or ``None``.
        path: the file it was read from.
        byte_order: the byte order the file declares (ENVI ``byte order``: 0 little, 1 big
            endian), or ``None`` when the format carries its own.
    """

    data: np.ndarray
    wavelengths: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    bad_bands: np.ndarray | None = None
    mask: np.ndarray | None = None
    path: Path | None = None
    byte_order: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def n_bands(self) -> int:
        return int(self.data.shape[-1])

    def good_band_indices(self) -> np.ndarray:
        """Indices ``[C']`` of the bands not flagged in ``bad_bands`` (all bands when unknown)."""
        if self.bad_bands is None:
            return np.arange(self.n_bands)
        return np.flatnonzero(~self.bad_bands)

    def drop_bad_bands(self) -> HyperspectralCube:
        """A cube without the bands flagged in ``bad_bands`` (``[H, W, C']``; ``bad_bands`` all False).

        The kept bands are copied into memory (fancy indexing of a memmap reads them);
        for lazy access index ``data[..., good_band_indices()]`` per tile instead.
        """
        if self.bad_bands is None or not self.bad_bands.any():
            return self
        keep = self.good_band_indices()
        if keep.size == 0:
            raise ReaderError(self.path or "<cube>", "every band is flagged bad; nothing would remain")

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[keep]

        return replace(self, data=np.asarray(self.data[..., keep]), wavelengths=pick(self.wavelengths),
                       fwhm=pick(self.fwhm), bad_bands=np.zeros(keep.size, dtype=bool))


# -- public entry points -------------------------------------------------------------------
def read_cube(path: str | Path, *, key: str | None = None, mask_key: str | None = None, mmap: bool = True,
              drop_bad_bands: bool = False) -> HyperspectralCube:
    """Read a hyperspectral cube ``[H, W, C]`` from ``path``, dispatching on its suffix.

    * ``.npy``: the array (memory-mapped when ``mmap``);
    * ``.npz``: array ``key`` or the single 3-D array; ``wavelengths``/``fwhm``/``bbl``/mask
      arrays (2-D ``[H, W]`` named like ``map``/``mask``/``gt``) are picked up;
    * ``.mat``: MATLAB v5 via ``scipy.io.loadmat``, v7.3 (HDF5) via ``h5py`` (MATLAB stores
      those transposed; they are returned as ``[H, W, C]``). Variable ``key`` or the single
      3-D one is the cube; ``mask_key`` or a 2-D ``[H, W]`` variable named like
      ``map``/``mask``/``gt`` the mask; a vector named ``wavelength(s)`` the wavelengths;
    * ENVI ``.hdr`` (or its data file ``.img``/``.raw``/``.dat``/no suffix): memory-mapped
      through ``spectral.envi``; header ``wavelength`` (converted to nm when the units
      are micrometres), ``fwhm`` and ``bbl`` (0 = bad band) are carried.

    Args:
        key: name of the cube array/variable (``.npz``/``.mat``).
        mask_key: name of the ground-truth array/variable (``.npz``/``.mat``).
        mmap: keep the data on disk where the format allows; ``False`` loads it.
        drop_bad_bands: return :meth:`HyperspectralCube.drop_bad_bands`.

    Raises:
        ReaderError: missing, unsupported, corrupt or wrongly shaped file (names the file).
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".hdr" or (suffix in ENVI_DATA_SUFFIXES and _envi_header(path) is not None):
        cube = _read_envi(path, mmap)
    elif suffix not in (".npy", ".npz", ".mat"):
        raise ReaderError(path, f"unsupported file type '{path.suffix}'; supported: "
                          f"{', '.join(SUPPORTED_SUFFIXES)} (ENVI header, or its data file "
                          f"{'/'.join(s for s in ENVI_DATA_SUFFIXES if s)} with a .hdr beside it)")
    elif not path.is_file():
        raise ReaderError(path, "no such file")
    elif suffix == ".npy":
        cube = _read_npy(path, mmap)
    elif suffix == ".npz":
        cube = _read_npz(path, key, mask_key)
    else:
        cube = _read_mat(path, key, mask_key, mmap)
    cube.path = path
    _check_cube(cube)
    return cube.drop_bad_bands() if drop_bad_bands else cube


def list_cubes(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Cube files in ``folder`` (sorted): every supported suffix, ENVI pairs once (their ``.hdr``).

    Hidden files, ENVI data files (counted through their header) and other files are
    skipped. ``recursive=True`` descends into sub-folders.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReaderError(folder, "not a folder")
    files = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in files if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in SUPPORTED_SUFFIXES]
    return sorted(found)


# -- helpers ---------------------------------------------------------------------------------
def _check_cube(cube: HyperspectralCube) -> None:
    path, data = cube.path, cube.data
    if data.ndim != 3:
        raise ReaderError(path, f"expected a 3-D cube [H, W, C], got shape {tuple(data.shape)}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ReaderError(path, f"cube has dtype {data.dtype}; expected a real integer or float dtype")
    h, w, c = data.shape
    if min(h, w, c) == 0:
        raise ReaderError(path, f"cube has an empty dimension: shape {tuple(data.shape)}")
    for name in ("wavelengths", "fwhm", "bad_bands"):
        value = getattr(cube, name)
        if value is not None and value.shape != (c,):
            raise ReaderError(path, f"{name} has shape {value.shape}; expected ({c},), one per band")
    if cube.mask is not None and cube.mask.shape != (h, w):
        raise ReaderError(path, f"mask has shape {cube.mask.shape}; expected {(h, w)} (the cube's H, W)")
    problem = (None if cube.wavelengths is None else wavelength_problem(cube.wavelengths)) \
        or (None if cube.mask is None else mask_problem(cube.mask))
    if problem:
        raise ReaderError(path, problem)


def _vector(value: Any) -> np.ndarray | None:
    """A MATLAB-style ``1 x N``/``N x 1`` (or 1-D) numeric array as ``[N]``; else ``None``."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf" or a.size == 0 or sum(s > 1 for s in a.shape) > 1:
        return None
    return a.reshape(-1)


def _bbl_to_bad(bbl: np.ndarray) -> np.ndarray:
    """ENVI bad band list (1 = good, 0 = bad) -> ``[C]`` bool (True = bad)."""
    return np.asarray(bbl, dtype=np.float64) == 0


def _pick(path: Path, shapes: dict[str, tuple[int, ...]], key: str | None, mask_key: str | None,
          what: str) -> tuple[str, str | None, str | None, str | None, str | None]:
    """Choose ``(cube, mask, wavelengths, fwhm, bbl)`` names from ``{name: shape}``."""
    from cuvis_graph.errors import did_you_mean

    for param, name in (("key", key), ("mask_key", mask_key)):
        if name is not None and name not in shapes:
            raise ReaderError(path, f"{param}: no {what} '{name}'{did_you_mean(name, shapes)}; "
                              f"{what}s: {sorted(shapes)}")
    if key is None:
        cubes = [n for n, s in shapes.items() if len(s) == 3]
        if len(cubes) != 1:
            found = {n: shapes[n] for n in cubes} if cubes else shapes
            raise ReaderError(path, f"expected exactly one 3-D cube [H, W, C], found {len(cubes)}: {found}"
                              + ("; pass key= to choose" if cubes else ""))
        key = cubes[0]
    hwc = shapes[key]
    if len(hwc) != 3:
        raise ReaderError(path, f"expected a 3-D cube [H, W, C] in '{key}', got shape {hwc}")
    if mask_key is None:
        named = [n for n, s in shapes.items() if n != key and _MASK_NAME.search(n) and len(s) == 2]
        masks = [n for n in named if tuple(shapes[n]) == tuple(hwc[:2])]
        if named and not masks:  # a ground truth that does not fit the cube: never dropped in silence
            raise ReaderError(path, f"'{named[0]}' looks like the ground-truth mask but has shape "
                              f"{tuple(shapes[named[0]])}, the cube '{key}' {tuple(hwc)}; a mask must be the "
                              "cube's H, W (pass mask_key= to name another one)")
        mask_key = masks[0] if len(masks) == 1 else None
    elif tuple(shapes[mask_key]) != tuple(hwc[:2]):
        raise ReaderError(path, f"mask_key: '{mask_key}' has shape {shapes[mask_key]}; "
                          f"expected {tuple(hwc[:2])} (the cube's H, W)")

    def vector(pattern: re.Pattern[str]) -> str | None:
        names = [n for n, s in shapes.items() if pattern.match(n) and int(np.prod(s)) == hwc[2]
                 and sum(d > 1 for d in s) <= 1]
        return names[0] if names else None

    return key, mask_key, vector(_WAVELENGTH_NAME), vector(_FWHM_NAME), vector(_BBL_NAME)


def _read_npy(path: Path, mmap: bool) -> HyperspectralCube:
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ReaderError(path, "not a .npy file (it does not start with the NumPy magic string)")
        _check_npy_size(path, fh)
    try:
        data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/... for bad files
        raise ReaderError(path, f"not a readable .npy array ({type(exc).__name__}: {exc})") from None
    return HyperspectralCube(data=data)


def _check_npy_size(path: Path, fh: Any) -> None:
    """Refuse a ``.npy`` shorter than its header's ``shape x itemsize`` (a truncated file)."""
    try:
        fh.seek(0)
        fmt = np.lib.format
        read_header = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(fh)
    except Exception:  # noqa: BLE001 - np.load reports unreadable headers below
        return
    if dtype.hasobject:
        return
    expected = fh.tell() + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ReaderError(path, f"truncated: its header describes {shape} {dtype.name} = {expected} bytes, but the "
                          f"file has {actual} bytes; copy or write it again")


def _read_npz(path: Path, key: str | None, mask_key: str | None) -> HyperspectralCube:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReaderError(path, f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    numeric = {n: a for n, a in arrays.items() if a.dtype.kind in "biuf"}
    key, mask_key, wl, fwhm, bbl = _pick(path, {n: a.shape for n, a in numeric.items()}, key, mask_key, "array")
    bad = None
    if bbl is not None:
        values = numeric[bbl].reshape(-1)
        bad = values.astype(bool) if values.dtype == bool and bbl.lower().startswith("bad") else _bbl_to_bad(values)
    return HyperspectralCube(
        data=numeric[key],
        mask=None if mask_key is None else numeric[mask_key],
        wavelengths=None if wl is None else numeric[wl].reshape(-1).astype(np.float64),
        fwhm=None if fwhm is None else numeric[fwhm].reshape(-1).astype(np.float64),
        bad_bands=bad,
    )


def _read_mat(path: Path, key: str | None, mask_key: str | None, mmap: bool) -> HyperspectralCube:
    import scipy.io

    try:
        header = scipy.io.whosmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        return _read_mat_hdf5(path, key, mask_key, mmap)
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for non-MAT input
        import h5py

        if h5py.is_hdf5(str(path)):
            return _read_mat_hdf5(path, key, mask_key, mmap)
        raise ReaderError(path, f"not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    shapes = {name: tuple(shape) for name, shape, cls in header if cls not in ("char", "cell", "struct", "object")}
    key, mask_key, wl, fwhm, bbl = _pick(path, shapes, key, mask_key, "variable")
    names = [n for n in (key, mask_key, wl, fwhm, bbl) if n is not None]
    try:
        content = scipy.io.loadmat(str(path), variable_names=names)
    except Exception as exc:  # noqa: BLE001
        raise ReaderError(path, f"cannot read variables {names}, the file may be truncated or corrupt "
                          f"({type(exc).__name__}: {exc})") from None
    return HyperspectralCube(
        data=content[key],
        mask=None if mask_key is None else np.asarray(content[mask_key]),
        wavelengths=None if wl is None else _vector(content[wl]).astype(np.float64),
        fwhm=None if fwhm is None else _vector(content[fwhm]).astype(np.float64),
        bad_bands=None if bbl is None else _bbl_to_bad(_vector(content[bbl])),
    )


def _read_mat_hdf5(path: Path, key: str | None, mask_key: str | None, mmap: bool) -> HyperspectralCube:
    """MATLAB v7.3: HDF5 datasets hold the column-major array, i.e. the transpose; undo it."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(path, f"not a readable MATLAB v7.3 (HDF5) .mat file ({exc})") from None
    with fh:
        datasets = {name: obj for name, obj in fh.items()
                    if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and not name.startswith("#")}
        shapes = {name: tuple(reversed(ds.shape)) for name, ds in datasets.items()}
        key, mask_key, wl, fwhm, bbl = _pick(path, shapes, key, mask_key, "variable")
        ds = datasets[key]
        offset = ds.id.get_offset()
        if mmap and ds.chunks is None and ds.compression is None and offset is not None:
            data = np.memmap(path, mode="r", dtype=ds.dtype, offset=offset, shape=ds.shape, order="C").T
        else:
            data = ds[()].T

        def read(name: str | None) -> np.ndarray | None:
            return None if name is None else np.asarray(datasets[name][()]).T

        return HyperspectralCube(
            data=data,
            mask=read(mask_key),
            wavelengths=None if wl is None else _vector(read(wl)).astype(np.float64),
            fwhm=None if fwhm is None else _vector(read(fwhm)).astype(np.float64),
            bad_bands=None if bbl is None else _bbl_to_bad(_vector(read(bbl))),
        )


def _envi_header(path: Path) -> Path | None:
    """The ``.hdr`` of an ENVI data file (``x.hdr`` or ``x.img.hdr``), or ``None``."""
    for candidate in (path.with_suffix(".hdr"), path.with_suffix(".HDR"), Path(f"{path}.hdr")):
        if candidate != path and candidate.is_file():
            return candidate
    return None


def _read_envi(path: Path, mmap: bool) -> HyperspectralCube:
    from spectral.io import envi

    if path.suffix.lower() == ".hdr":
        header, image = path, None
        if not header.is_file():
            raise ReaderError(path, "no such file")
    else:
        header, image = _envi_header(path), path
        if not image.is_file():
            raise ReaderError(path, "no such file")
    try:
        img = envi.open(str(header), None if image is None else str(image))
    except Exception as exc:  # noqa: BLE001 - spectral raises its own and builtin types
        raise ReaderError(path, f"not a readable ENVI image ({type(exc).__name__}: {exc})") from None
    if not hasattr(img, "open_memmap"):
        raise ReaderError(path, f"ENVI file is a {type(img).__name__}, not an image cube")
    _check_envi_size(header, img)
    try:
        data = img.open_memmap(interleave="bip", writable=False) if mmap else None
        if data is None:
            data = np.asarray(img.load())
    except Exception as exc:  # noqa: BLE001
        raise ReaderError(path, f"cannot read the ENVI data file {img.filename} ({type(exc).__name__}: {exc})") from None
    meta = img.metadata

    def floats(name: str) -> np.ndarray | None:
        if name not in meta:
            return None
        try:
            return np.asarray([float(v) for v in meta[name]], dtype=np.float64)
        except (TypeError, ValueError):
            raise ReaderError(path, f"header field '{name}' is not a list of numbers: {meta[name]!r}") from None

    wavelengths, fwhm, bbl = floats("wavelength"), floats("fwhm"), floats("bbl")
    units = str(meta.get("wavelength units", "")).strip().lower()
    # nm is the convention; micrometre headers (or unit-less values < 50, never nm) are scaled.
    if wavelengths is not None and (units in _MICRON_UNITS or (not units and wavelengths.max() < 50)):
        wavelengths = wavelengths * 1000.0
        fwhm = None if fwhm is None else fwhm * 1000.0
    return HyperspectralCube(data=data, wavelengths=wavelengths, fwhm=fwhm,
                             bad_bands=None if bbl is None else _bbl_to_bad(bbl), byte_order=int(img.byte_order))


def _check_envi_size(header: Path, img: Any) -> None:
    """The data file holds exactly ``offset + lines * samples * bands * itemsize`` bytes."""
    expected = int(img.offset) + img.nrows * img.ncols * img.nbands * np.dtype(img.dtype).itemsize
    actual = Path(img.filename).stat().st_size
    if actual != expected:
        raise ReaderError(header, f"the header describes {img.nrows} lines x {img.ncols} samples x {img.nbands} "
                          f"bands of {np.dtype(img.dtype).name} (+ {img.offset} header offset) = {expected} bytes, "
                          f"but the data file {img.filename} has {actual} bytes; fix 'lines', 'samples', "
                          "'bands', 'data type' or 'header offset' in the header")
