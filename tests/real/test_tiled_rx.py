"""Tiled prediction on a real ABU scene stitches to exactly the whole-scene RX map.

The scenes live in ``../shared/data/abu`` beside the checkout (not in the repo); the tests
skip with the reason when the folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cuvis_graph.nodes import MinMaxNormalizer, RXGlobal

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule, TiledDataModule, predict_tiled, read_cube

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SCENE = DATA / "abu" / "abu-beach-1.mat"  # 150 x 150 x 188

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not SCENE.exists(), reason=f"shared ABU data not found at {DATA}"),
]

CONFIG = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    cube = read_cube(SCENE)
    assert cube.mask is not None and cube.shape == (150, 150, 188)
    return np.asarray(cube.data, dtype=np.float32), np.asarray(cube.mask)


# 150 is a multiple of neither tile size nor stride (37 - 9 = 28, 64 - 10 = 54)
@pytest.mark.parametrize(("normalize", "tile", "overlap", "batch_size"), [(False, 37, 9, 4), (True, 64, 10, 1)],
                         ids=["raw", "minmax"])
def test_tiled_rx_equals_whole_scene_rx(scene: tuple[np.ndarray, np.ndarray], normalize: bool, tile: int,
                                        overlap: int, batch_size: int) -> None:
    cube, _ = scene
    graph = Graph("tiled_rx_abu")
    parent = graph.add_node(MinMaxNormalizer(), name="norm") if normalize else None
    graph.add_node(RXGlobal(), parent=parent, name="rx")
    graph.train(GraphDataModule.from_arrays(cube, batch_size=1), CONFIG, run_dir=False)
    whole = graph.predict(cube, output="rx").numpy()
    stitched = predict_tiled(graph, cube, tile=tile, overlap=overlap, output="rx", batch_size=batch_size)
    assert stitched.shape == whole.shape == (150, 150, 1)
    assert np.array_equal(stitched, whole), float(np.abs(stitched - whole).max())  # bit-identical


def test_rx_fitted_on_tiles_matches_float64_reference(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """Statistics over the partition tiles (43 does not divide 150) are the scene statistics."""
    cube, _ = scene
    graph = Graph("tiles_fit_abu")
    rx = graph.add_node(RXGlobal(eps=0.0), name="rx")
    dm = TiledDataModule(GraphDataModule.from_arrays(cube, batch_size=1), tile=43, stride=30, batch_size=8)
    graph.train(dm, CONFIG, run_dir=False)
    pixels = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(rx.mean.numpy(), pixels.mean(0), rtol=1e-10)
    factor = np.linalg.inv(rx.whitening.numpy())
    cov = np.cov(pixels, rowvar=False)
    assert np.abs(factor @ factor.T - cov).max() <= 1e-10 * np.abs(cov).max()
