"""Tile grids cover scenes, tiled statistics equal whole-scene statistics, stitching is seamless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import RXGlobal, StandardNormalizer

from cuvis_graph import Graph
from cuvis_graph.data import (
    FolderDataModule,
    GraphDataModule,
    TiledDataModule,
    TiledDataset,
    predict_tiled,
    tile_grid,
)
from cuvis_graph.data.tiling import tile_starts

CONFIG = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}


def _scene(seed: int, h: int, w: int, c: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return (rng.normal(size=(h * w, c)) @ mixing * 30 + 5000).reshape(h, w, c).astype(np.float32)


def _coverage(tiles, h: int, w: int) -> np.ndarray:
    count = np.zeros((h, w), dtype=int)
    for t in tiles:
        assert t.top >= 0 and t.left >= 0 and t.top + t.height <= h and t.left + t.width <= w
        count[t.rows, t.cols] += 1
    return count


@pytest.mark.parametrize(("h", "w", "tile", "stride"), [(23, 17, 5, 3), (20, 20, 5, 5), (7, 30, 8, 8),
                                                          (31, 9, (6, 4), (4, 3)), (3, 3, 4, 1)])
def test_grids_cover_the_scene(h: int, w: int, tile, stride) -> None:
    shift = tile_grid(h, w, tile, stride, "shift")
    assert (_coverage(shift, h, w) >= 1).all()
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    assert {(t.height, t.width) for t in shift} == {(min(th, h), min(tw, w))}  # fixed size
    partition = tile_grid(h, w, tile, None, "crop")
    assert (_coverage(partition, h, w) == 1).all()
    drop = tile_grid(h, w, tile, stride, "drop")
    assert (_coverage(drop, h, w) <= _coverage(shift, h, w)).all()
    assert all((t.height, t.width) == (th, tw) for t in drop)


def test_tile_starts_edges() -> None:
    assert tile_starts(10, 4, 3, "shift") == [(0, 4), (3, 4), (6, 4)]
    assert tile_starts(11, 4, 3, "shift") == [(0, 4), (3, 4), (6, 4), (7, 4)]
    assert tile_starts(11, 4, 4, "crop") == [(0, 4), (4, 4), (8, 3)]
    assert tile_starts(11, 4, 4, "drop") == [(0, 4), (4, 4)]
    with pytest.raises(ValueError, match="edge must be one of"):
        tile_starts(11, 4, 4, "pad")  # type: ignore[arg-type]


def test_tiled_dataset_items_are_windows() -> None:
    cubes = [_scene(0, 11, 9), _scene(1, 11, 9)]
    masks = [np.arange(99).reshape(11, 9) % 7 == 0, np.zeros((11, 9), bool)]
    dm = GraphDataModule.from_arrays(np.stack(cubes), np.stack(masks).astype(np.int64))
    tiles = TiledDataset(dm.train_set, 4, 3)
    assert len(tiles) == 2 * 4 * 3  # rows start at 0, 3, 6, 7 (shifted); columns at 0, 3, 5
    for i, t in enumerate(tiles.tiles):
        item = tiles[i]
        np.testing.assert_array_equal(item["cube"].numpy(), cubes[t.scene][t.rows, t.cols])
        np.testing.assert_array_equal(item["mask"].numpy(), masks[t.scene][t.rows, t.cols])


def _assert_stats_equal(rx: RXGlobal, pixels: np.ndarray) -> None:
    """mean and covariance of the fitted RX (eps=0) against numpy float64, 1e-10 relative."""
    np.testing.assert_allclose(rx.mean.numpy(), pixels.mean(0), rtol=1e-10)
    factor = np.linalg.inv(rx.whitening.numpy())  # L with L L^T = Sigma
    cov = np.cov(pixels, rowvar=False)
    assert np.abs(factor @ factor.T - cov).max() <= 1e-10 * np.abs(cov).max()


def test_tiled_statistics_equal_whole_scene_statistics() -> None:
    scenes = [_scene(2, 23, 17), _scene(3, 23, 17)]
    source = GraphDataModule.from_arrays(np.stack(scenes), batch_size=1)
    dm = TiledDataModule(source, tile=5, stride=3, batch_size=4)  # 23, 17 are not multiples of 5 or 3
    graph = Graph("tiled_stats")
    rx = graph.add_node(RXGlobal(eps=0.0), name="rx")
    result = graph.train(dm, CONFIG, run_dir=False)
    assert result.fit.passes == 1
    assert dm.data_spec().n_channels == 5
    seen = sum(t.height * t.width for t in dm.statistics_set.tiles)
    assert seen == 2 * 23 * 17  # each pixel once in the statistics pass
    assert sum(b["cube"].shape[0] for b in dm.train_dataloader()) == len(dm.train_set)
    _assert_stats_equal(rx, np.concatenate([s.reshape(-1, 5) for s in scenes]).astype(np.float64))


def test_tiled_folder_trains_with_whole_scene_statistics(tmp_path: Path) -> None:
    scenes = [_scene(4, 19, 13), _scene(5, 10, 21)]  # different sizes
    for i, s in enumerate(scenes):
        np.save(tmp_path / f"{i}.npy", s)
    dm = FolderDataModule(tmp_path, tile=6, stride=4, batch_size=3)
    graph = Graph("tiled_folder")
    graph.add_node(StandardNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(eps=0.0), name="rx")  # reads the raw cube: an independent second node
    graph.train(dm, CONFIG, run_dir=False)
    _assert_stats_equal(rx, np.concatenate([s.reshape(-1, 5) for s in scenes]).astype(np.float64))


class _BorderDistance:
    """Stand-in graph: per pixel, its distance to the border of the tile it was predicted in
    (the cube carries each pixel's row and column), so stitching choices become visible."""

    def predict(self, batch: dict, output: str | None = None) -> dict[str, torch.Tensor]:
        cube = batch["cube"]
        rows, cols = cube[..., 0], cube[..., 1]
        top = rows.amin(dim=(1, 2), keepdim=True)
        left = cols.amin(dim=(1, 2), keepdim=True)
        h, w = cube.shape[1:3]
        dr = torch.minimum(rows - top, top + h - 1 - rows)
        dc = torch.minimum(cols - left, left + w - 1 - cols)
        return {"dist": torch.minimum(dr, dc)[..., None], "pos": cube[..., :2]}


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(23, 17, 8, 3), (40, 13, 9, 4), (10, 10, 10, 0),
                                                         (12, 29, (5, 7), (2, 3))])
def test_stitching_takes_each_pixel_from_its_most_central_tile(h: int, w: int, tile, overlap) -> None:
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.float32)
    out = predict_tiled(_BorderDistance(), grid, tile=tile, overlap=overlap, batch_size=4)
    np.testing.assert_array_equal(out["pos"], grid)  # every pixel lands where it belongs
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    oh, ow = (overlap, overlap) if isinstance(overlap, int) else overlap
    best = np.full((h, w), -1.0)  # brute force: max over the tiles containing a pixel
    for t in tile_grid(h, w, (th, tw), (th - oh, tw - ow), "shift"):
        r = np.arange(t.top, t.top + t.height)[:, None]
        c = np.arange(t.left, t.left + t.width)[None, :]
        d = np.minimum(np.minimum(r - t.top, t.top + t.height - 1 - r), np.minimum(c - t.left, t.left + t.width - 1 - c))
        best[t.rows, t.cols] = np.maximum(best[t.rows, t.cols], d)
    np.testing.assert_array_equal(out["dist"][..., 0], best)


def test_predict_tiled_equals_whole_scene_rx() -> None:
    cube = _scene(6, 29, 22)
    graph = Graph("rx")
    graph.add_node(StandardNormalizer(), name="norm")
    graph.add_node(RXGlobal(), parent="norm", name="rx")
    graph.train(GraphDataModule.from_arrays(cube, batch_size=1), CONFIG, run_dir=False)
    whole = graph.predict(cube)["rx"].numpy()
    for tile, overlap, batch_size in ((8, 3, 5), (13, 0, 1)):
        stitched = predict_tiled(graph, cube, tile=tile, overlap=overlap, output="rx", batch_size=batch_size)
        assert stitched.shape == whole.shape and stitched.dtype == whole.dtype
        assert np.array_equal(stitched, whole)
    with pytest.raises(ValueError, match=r"overlap=8 must be >= 0 and < the tile size 8"):
        predict_tiled(graph, cube, tile=8, overlap=8)
    # a scene thinner than the overlap is one tile along that axis
    assert np.array_equal(predict_tiled(graph, cube[:4], tile=16, overlap=6, output="rx"),
                          graph.predict(cube[:4])["rx"].numpy())
