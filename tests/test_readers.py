"""read_cube on every supported format, against the arrays written to disk."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from cuvis_graph.nodes import DropBands
from spectral.io import envi

from cuvis_graph import Graph
from cuvis_graph.core.plan import DataSpec
from cuvis_graph.data import (
    SUPPORTED_SUFFIXES,
    HyperspectralCube,
    ReaderError,
    list_cubes,
    read_cube,
)
from cuvis_graph.errors import CuvisGraphError

H, W, C = 7, 5, 6


@pytest.fixture
def cube() -> np.ndarray:
    """``[H, W, C]`` float32 with distinct values, so any transposition shows."""
    return (np.arange(H * W * C, dtype=np.float32).reshape(H, W, C) * 1.5 + 100.0)


@pytest.fixture
def mask() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.uniform(size=(H, W)) > 0.7).astype(np.uint8)


WAVELENGTHS = np.array([402.5, 451.25, 500.0, 549.75, 600.125, 650.0])
FWHM = np.array([10.0, 10.5, 11.0, 11.5, 12.0, 12.5])
BBL = np.array([1, 1, 0, 1, 0, 1])


# -- ENVI ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip_with_metadata(tmp_path: Path, cube: np.ndarray, interleave: str) -> None:
    hdr = tmp_path / "scene.hdr"
    envi.save_image(str(hdr), cube, interleave=interleave, ext=".img", metadata={
        "wavelength": [f"{w}" for w in WAVELENGTHS], "fwhm": list(FWHM), "bbl": list(BBL),
        "wavelength units": "Nanometers"})
    result = read_cube(hdr)
    assert isinstance(result, HyperspectralCube)
    assert isinstance(result.data, np.memmap)
    np.testing.assert_array_equal(result.data, cube)
    np.testing.assert_array_equal(result.wavelengths, WAVELENGTHS)
    np.testing.assert_array_equal(result.fwhm, FWHM)
    np.testing.assert_array_equal(result.bad_bands, BBL == 0)
    assert result.mask is None and result.path == hdr

    # the data file of the pair works too, and bad bands can be dropped on read
    dropped = read_cube(tmp_path / "scene.img", drop_bad_bands=True)
    good = BBL == 1
    np.testing.assert_array_equal(dropped.data, cube[..., good])
    np.testing.assert_array_equal(dropped.wavelengths, WAVELENGTHS[good])
    np.testing.assert_array_equal(dropped.fwhm, FWHM[good])
    assert not dropped.bad_bands.any()


def test_envi_micrometre_wavelengths_become_nm(tmp_path: Path, cube: np.ndarray) -> None:
    envi.save_image(str(tmp_path / "um.hdr"), cube, ext="", metadata={
        "wavelength": list(WAVELENGTHS / 1000), "wavelength units": "Micrometers"})
    np.testing.assert_allclose(read_cube(tmp_path / "um").wavelengths, WAVELENGTHS, rtol=1e-12)


def test_envi_header_without_data_file(tmp_path: Path, cube: np.ndarray) -> None:
    envi.save_image(str(tmp_path / "x.hdr"), cube, ext=".img")
    (tmp_path / "x.img").unlink()
    with pytest.raises(ReaderError, match=r"x\.hdr: .*ENVI"):
        read_cube(tmp_path / "x.hdr")


# -- MATLAB ------------------------------------------------------------------------------------------
def _write_mat73(path: Path, variables: dict[str, np.ndarray], userblock: bool) -> None:
    """Like MATLAB -v7.3: HDF5 (optionally after a 512-byte header), column-major = transposed."""
    with h5py.File(path, "w", userblock_size=512 if userblock else 0) as fh:
        for name, value in variables.items():
            value = np.atleast_2d(value)
            ds = fh.create_dataset(name, data=np.ascontiguousarray(value.T))
            ds.attrs["MATLAB_class"] = np.bytes_("double" if value.dtype == np.float64 else "single")
    if userblock:  # 116 bytes of text, 8 bytes subsystem offset, version 0x0200, endian indicator
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        with open(path, "r+b") as fh:
            fh.write(text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


@pytest.mark.parametrize("userblock", [True, False], ids=["matlab-header", "plain-hdf5"])
def test_mat_v73_orientation(tmp_path: Path, cube: np.ndarray, mask: np.ndarray, userblock: bool) -> None:
    path = tmp_path / "scene73.mat"
    _write_mat73(path, {"data": cube, "map": mask.astype(np.float64), "wavelength": WAVELENGTHS[None, :]}, userblock)
    # scipy refuses it (NotImplementedError with the MATLAB header), so the h5py path is what is tested
    with pytest.raises(NotImplementedError if userblock else ValueError):
        scipy.io.loadmat(str(path))
    result = read_cube(path)
    assert result.data.shape == (H, W, C)
    np.testing.assert_array_equal(result.data, cube)
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_array_equal(result.wavelengths, WAVELENGTHS)
    assert isinstance(result.data, np.memmap)  # contiguous, uncompressed dataset: stays on disk
    np.testing.assert_array_equal(read_cube(path, mmap=False).data, cube)


def test_mat_v73_chunked_and_key(tmp_path: Path, cube: np.ndarray) -> None:
    path = tmp_path / "two.mat"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("radiance", data=cube.T, chunks=(2, 2, 2), compression="gzip")
        fh.create_dataset("other", data=(cube * 2).T)
    with pytest.raises(ReaderError, match=r"two\.mat: expected exactly one 3-D cube.*key="):
        read_cube(path)
    np.testing.assert_array_equal(read_cube(path, key="radiance").data, cube)


def test_mat_v5(tmp_path: Path, cube: np.ndarray, mask: np.ndarray) -> None:
    path = tmp_path / "scene5.mat"
    scipy.io.savemat(str(path), {"data": cube.astype(np.int16), "map": mask, "wavelengths": WAVELENGTHS,
                                 "bbl": BBL.astype(np.float64)})
    result = read_cube(path)
    np.testing.assert_array_equal(result.data, cube.astype(np.int16))
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_array_equal(result.wavelengths, WAVELENGTHS)
    np.testing.assert_array_equal(result.bad_bands, BBL == 0)
    with pytest.raises(ReaderError, match=r"scene5\.mat: mask_key: no variable 'maps' \(did you mean 'map'\?\)"):
        read_cube(path, mask_key="maps")


# -- numpy ------------------------------------------------------------------------------------------
def test_npy_is_memory_mapped(tmp_path: Path, cube: np.ndarray) -> None:
    np.save(tmp_path / "c.npy", cube)
    result = read_cube(tmp_path / "c.npy")
    assert isinstance(result.data, np.memmap) and result.data.dtype == np.float32
    np.testing.assert_array_equal(result.data, cube)
    loaded = read_cube(tmp_path / "c.npy", mmap=False)
    assert not isinstance(loaded.data, np.memmap)
    np.testing.assert_array_equal(loaded.data, cube)


def test_npz_picks_cube_mask_and_wavelengths(tmp_path: Path, cube: np.ndarray, mask: np.ndarray) -> None:
    np.savez(tmp_path / "c.npz", cube=cube, gt=mask, wavelengths=WAVELENGTHS)
    result = read_cube(tmp_path / "c.npz")
    np.testing.assert_array_equal(result.data, cube)
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_array_equal(result.wavelengths, WAVELENGTHS)


# -- errors ------------------------------------------------------------------------------------------
def test_corrupt_files_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("junk.npy", "junk.npz", "junk.mat", "junk.hdr"):
        (tmp_path / name).write_bytes(rng.bytes(300))
        with pytest.raises(ReaderError, match=rf"^{tmp_path / name}: ") as info:
            read_cube(tmp_path / name)
        assert isinstance(info.value, CuvisGraphError) and info.value.path == tmp_path / name


def test_wrong_dims_and_unknown_suffix(tmp_path: Path, cube: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", cube[..., 0])
    with pytest.raises(ReaderError, match=r"x\.npy: expected a 3-D cube \[H, W, C\], got shape \(7, 5\)"):
        read_cube(tmp_path / "x.npy")
    (tmp_path / "x.tif").write_bytes(b"II*\x00")
    with pytest.raises(ReaderError, match=r"x\.tif: unsupported file type '\.tif'; supported: \.npy, \.npz"):
        read_cube(tmp_path / "x.tif")
    with pytest.raises(ReaderError, match=r"nope\.npy: no such file"):
        read_cube(tmp_path / "nope.npy")
    np.savez(tmp_path / "bad_wl.npz", cube=cube, wavelengths=np.arange(C + 1.0))
    assert read_cube(tmp_path / "bad_wl.npz").wavelengths is None  # a vector of the wrong length is not wavelengths


def test_list_cubes_counts_envi_pairs_once(tmp_path: Path, cube: np.ndarray) -> None:
    np.save(tmp_path / "b.npy", cube)
    envi.save_image(str(tmp_path / "a.hdr"), cube, ext=".img")
    envi.save_image(str(tmp_path / "c.hdr"), cube, ext="")
    (tmp_path / "notes.txt").write_text("not a cube")
    (tmp_path / ".hidden.npy").write_bytes(b"")
    assert [p.name for p in list_cubes(tmp_path)] == ["a.hdr", "b.npy", "c.hdr"]
    assert set(SUPPORTED_SUFFIXES) >= {".npy", ".npz", ".mat", ".hdr"}


# -- bad bands as a node -----------------------------------------------------------------------------
def test_drop_bands_node_matches_reader(tmp_path: Path, cube: np.ndarray) -> None:
    envi.save_image(str(tmp_path / "s.hdr"), cube, ext=".img", metadata={"bbl": list(BBL)})
    raw = read_cube(tmp_path / "s.hdr")
    graph = Graph("bands")
    node = graph.add_node(DropBands.from_mask(raw.bad_bands), name="drop")
    assert node.bad_bands == [2, 4]
    out = graph.predict(np.array(raw.data))
    expected = read_cube(tmp_path / "s.hdr", drop_bad_bands=True).data
    assert torch.equal(out["drop"], torch.as_tensor(np.asarray(expected)))
    dims = graph.compile(DataSpec(n_channels=C)).output_dims["drop"]["out"]
    assert dims[-1] == C - 2
    with pytest.raises(CuvisGraphError, match="index 9 is out of range for C=6"):
        bad = Graph("bad")
        bad.add_node(DropBands([1, 9]), name="drop")
        bad.compile(DataSpec(n_channels=C))
