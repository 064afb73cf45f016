"""Tiling: cut large scenes into patches for training and statistics; stitch tiled predictions.

Tile grids along one axis of length ``n`` (tile ``t``, stride ``s``)::

    starts = 0, s, 2s, ...                     (while start + t <= n)
    edge="shift": one more tile at n - t       (fixed size, full coverage; the last tiles overlap more)
    edge="crop":  one more tile at k*s, cut at n (exact cover with stride == tile: a partition)
    edge="drop":  nothing more                  (the remainder n mod s is not used)

:class:`TiledDataModule` trains on the ``tile``/``stride`` grid (``edge="shift"``) and runs the
statistics pass, validation and test on the *partition* (``stride = tile``, ``edge="crop"``):
every pixel is seen exactly once there, so fitted means/covariances equal the whole-scene
ones (sufficient statistics merge exactly) and pixel metrics are the whole-scene metrics.

:func:`predict_tiled` runs the graph on overlapping tiles (one
:class:`~cuvis_graph.core.inference.InferenceSession`: compiled once) and keeps from each tile
only its centre: along each axis a pixel shared by two tiles is taken from the tile where it
is farther from the border (the cut is the middle of the overlap). For pixel-wise graphs
(normalizers, RX, PCA, selectors) the stitched map equals the whole-scene prediction; a
graph with a spatial receptive field of radius ``r`` needs ``overlap >= 2 r``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cuvis_graph.core.plan import DataSpec
from cuvis_graph.data.datamodule import GraphDataModule, collate_cubes

__all__ = [
    "Tile",
    "tile_starts",
    "tile_grid",
    "TiledDataset",
    "TiledDataModule",
    "ShapeBatchSampler",
    "make_loader",
    "predict_tiled",
]

Edge = Literal["shift", "crop", "drop"]
EDGES = ("shift", "crop", "drop")


@dataclass(frozen=True)
class Tile:
    """A window ``cube[top:top+height, left:left+width]`` of scene ``scene``."""

    scene: int
    top: int
    left: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.width)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def tile_starts(size: int, tile: int, stride: int, edge: Edge = "shift") -> list[tuple[int, int]]:
    """``[(start, length)]`` of the tiles along an axis of ``size`` pixels (see the module doc)."""
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be >= 1, got tile={tile}, stride={stride}")
    if size <= tile:
        return [] if (edge == "drop" and size < tile) else [(0, size)]
    spans = [(s, tile) for s in range(0, size - tile + 1, stride)]
    end = spans[-1][0] + tile
    if end < size:
        if edge == "shift":
            spans.append((size - tile, tile))
        elif edge == "crop" and spans[-1][0] + stride < size:
            start = spans[-1][0] + stride  # with stride > tile, pixels between tiles stay uncovered
            spans.append((start, size - start))
    return spans


def tile_grid(height: int, width: int, tile: int | Sequence[int], stride: int | Sequence[int] | None = None,
              edge: Edge = "shift", scene: int = 0) -> list[Tile]:
    """Tiles of an ``H x W`` scene, row-major (``stride`` defaults to ``tile``)."""
    th, tw = _pair(tile, "tile")
    sh, sw = _pair(stride if stride is not None else (th, tw), "stride")
    return [Tile(scene, top, left, h, w) for top, h in tile_starts(height, th, sh, edge)
            for left, w in tile_starts(width, tw, sw, edge)]


# -- datasets ----------------------------------------------------------------------------------
def scene_shape(dataset: Dataset, index: int) -> tuple[int, int]:
    """``(H, W)`` of scene ``index``: ``dataset.scene_shape`` if it has one, else from its item."""
    if hasattr(dataset, "scene_shape"):
        return tuple(dataset.scene_shape(index))  # type: ignore[return-value]
    return tuple(int(s) for s in dataset[index]["cube"].shape[:2])  # type: ignore[return-value]


def read_region(dataset: Dataset, index: int, rows: slice, cols: slice) -> dict[str, torch.Tensor]:
    """Item ``index`` cut to ``[rows, cols]``; lazy when the dataset has ``read_region`` (files)."""
    if hasattr(dataset, "read_region"):
        return dataset.read_region(index, rows, cols)
    item = dataset[index]
    return {k: (v if k == "wavelengths" else v[rows, cols]) for k, v in item.items()}


class TiledDataset(Dataset):
    """Tiles of every scene of ``source`` (a dataset of ``{"cube": [H,W,C], "mask"?: [H,W], ...}`` items).

    Items are ``{"cube": [h, w, C], "mask": [h, w], "wavelengths": [C]}`` windows; with a
    file-backed source (``read_region``) only the window is read from disk.

    Args:
        source: the scenes.
        tile: tile size (int or ``(h, w)``).
        stride: step between tiles (default ``tile``: no overlap).
        edge: ``"shift"``, ``"crop"`` or ``"drop"`` (see the module doc).
    """

    def __init__(self, source: Dataset, tile: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 edge: Edge = "shift") -> None:
        self.source, self.tile, self.stride, self.edge = source, tile, stride, edge
        self.tiles: list[Tile] = [t for i in range(len(source))
                                  for t in tile_grid(*scene_shape(source, i), tile, stride, edge, scene=i)]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        t = self.tiles[index]
        return read_region(self.source, t.scene, t.rows, t.cols)

    def shapes(self) -> list[tuple[int, int]]:
        """``(h, w)`` of every item (for shape-grouped batching)."""
        return [(t.height, t.width) for t in self.tiles]


class ShapeBatchSampler(Sampler[list[int]]):
    """Batches of indices whose items share a shape (items of different sizes never meet).

    Per epoch, with ``shuffle``: indices are permuted within each shape group, cut into
    batches, and the batches shuffled; the permutation is drawn from torch's global RNG
    (so ``seed_everything`` makes it reproducible). Without ``shuffle``: groups in order of
    first appearance, indices in order.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], batch_size: int, shuffle: bool = False,
                 drop_last: bool = False) -> None:
        self.groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(shapes):
            self.groups.setdefault(tuple(s), []).append(i)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last

    def _batches(self, generator: torch.Generator | None) -> list[list[int]]:
        batches = []
        for idx in self.groups.values():
            if generator is not None:
                idx = [idx[int(j)] for j in torch.randperm(len(idx), generator=generator)]
            for i in range(0, len(idx), self.batch_size):
                chunk = idx[i:i + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if generator is not None:
            batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        yield from self._batches(generator)

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(len(g) / self.batch_size) for g in self.groups.values())


def make_loader(dataset: Dataset | None, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader | list:
    """A DataLoader collating with :func:`collate_cubes`; items of different shapes are batched
    apart (:class:`ShapeBatchSampler`) when the dataset reports ``shapes()``. Empty -> ``[]``."""
    if dataset is None or len(dataset) == 0:
        return []
    common = dict(num_workers=num_workers, collate_fn=collate_cubes, persistent_workers=num_workers > 0)
    shapes = dataset.shapes() if hasattr(dataset, "shapes") else None
    if shapes is not None and len(set(shapes)) > 1:
        return DataLoader(dataset, batch_sampler=ShapeBatchSampler(shapes, batch_size, shuffle), **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **common)


class TiledDataModule(GraphDataModule):
    """Wrap a datamodule so that its scenes are served as tiles.

    * training: ``tile``/``stride`` grid with ``edge`` (default ``"shift"``: fixed-size tiles
      covering every pixel);
    * statistics pass, validation, test: the partition (``stride = tile``, edges cropped),
      every pixel exactly once, so statistics and pixel metrics equal the whole-scene ones.

    ``data_spec()`` (channels, batch keys, wavelengths) is the wrapped datamodule's.

    Args:
        source: datamodule whose ``train_set``/``val_set``/``test_set`` hold whole scenes.
        tile: tile size (int or ``(h, w)``).
        stride: training step (default ``tile``).
        edge: training grid edge handling.
        batch_size: tiles per batch (default the source's).
    """

    def __init__(self, source: GraphDataModule, tile: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 edge: Edge = "shift", batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size or source.batch_size, num_workers=num_workers)
        _pair(tile, "tile")
        if stride is not None:
            _pair(stride, "stride")
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
        self.source, self.tile, self.stride, self.edge = source, tile, stride, edge
        self.statistics_set: Dataset | None = None

    def data_spec(self) -> DataSpec:
        return self.source.data_spec()

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)
        src = self.source
        self.n_channels, self.batch_keys, self.wavelengths = src.n_channels, src.batch_keys, src.wavelengths

        def partition(ds: Dataset | None) -> TiledDataset | None:
            return None if ds is None else TiledDataset(ds, self.tile, self.tile, "crop")

        self.train_set = None if src.train_set is None else TiledDataset(src.train_set, self.tile, self.stride,
                                                                         self.edge)
        self.statistics_set = partition(src.train_set)
        self.val_set = partition(src.val_set)
        self.test_set = self.val_set if src.test_set is src.val_set else partition(src.test_set)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader | list:
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers)

    def statistics_dataloader(self) -> DataLoader | list:
        """The training scenes' partition tiles, in a fixed order (each pixel once)."""
        return self._loader(self.statistics_set, shuffle=False)


# -- stitched prediction ----------------------------------------------------------------------------
def _centre_cuts(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[(lo, hi)]`` owned by each tile: the middle of every overlap separates neighbours."""
    cuts = [0]
    for (s0, n0), (s1, _) in zip(spans, spans[1:], strict=False):
        cuts.append((s1 + s0 + n0) // 2)  # middle of the overlap [s1, s0 + n0)
    cuts.append(spans[-1][0] + spans[-1][1])
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _tile_predictor(graph: Any, n_channels: int, with_wavelengths: bool) -> Any:
    """One inference session for every tile of a :class:`~cuvis_graph.Graph`; another
    object is its own predictor (``predict(batch, output=None)``)."""
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.core.inference import InferenceSession

    if not isinstance(graph, Graph):
        return graph
    keys = frozenset({"cube", "wavelengths"} if with_wavelengths else {"cube"})
    return InferenceSession(graph, DataSpec(n_channels=n_channels, batch_keys=keys))


def predict_tiled(graph: Any, cube: Any, *, tile: int | Sequence[int] = 256, overlap: int | Sequence[int] = 0,
                  output: str | None = None, batch_size: int = 1,
                  wavelengths: np.ndarray | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Run ``graph`` on overlapping tiles of ``cube [H, W, C]`` and stitch the full maps.

    Tiles are ``tile`` pixels (clipped to the scene), ``tile - overlap`` apart, the last one
    shifted back to the border; each output pixel comes from the tile where it is farthest
    from the tile border (centre cropping, see the module doc). Only the tiles are read
    from ``cube``, so a ``np.memmap`` (:func:`cuvis_graph.data.read_cube`) stays on disk.

    Args:
        graph: a fitted :class:`~cuvis_graph.Graph` (compiled once for all tiles), or any
            object with ``predict(batch, output=None)``.
        cube: ``[H, W, C]`` array, tensor or :class:`~cuvis_graph.data.HyperspectralCube`.
        tile: tile size (int or ``(h, w)``).
        overlap: pixels shared by neighbouring tiles (``0 <= overlap < tile``).
        output: node (``"name"`` or ``"name.port"``) to return; default every sink.
        batch_size: tiles per ``predict`` call (same-sized tiles only).
        wavelengths: ``[C]`` passed in the batch (taken from a ``HyperspectralCube`` by default).

    Returns:
        ``[H, W, ...]`` array of ``output``, or ``{sink: [H, W, ...]}``. Outputs must be
        pixel-aligned (``[B, h, w, ...]`` for a ``[B, h, w, C]`` tile).
    """
    if hasattr(cube, "data") and hasattr(cube, "wavelengths"):  # HyperspectralCube
        wavelengths = cube.wavelengths if wavelengths is None else wavelengths
        cube = cube.data
    if cube.ndim != 3:
        raise ValueError(f"predict_tiled: cube must be [H, W, C], got shape {tuple(cube.shape)}")
    height, width = int(cube.shape[0]), int(cube.shape[1])
    th, tw = _pair(tile, "tile")
    oh, ow = (int(overlap), int(overlap)) if isinstance(overlap, int | np.integer) else tuple(int(o) for o in overlap)
    for name, o, t in (("overlap", oh, th), ("overlap", ow, tw)):
        if not 0 <= o < t:
            raise ValueError(f"predict_tiled: {name}={o} must be >= 0 and < the tile size {t}")
    th, tw = min(th, height), min(tw, width)  # a scene smaller than a tile is one tile along that axis
    oh, ow = min(oh, th - 1), min(ow, tw - 1)
    rows = tile_starts(height, th, th - oh, "shift")
    cols = tile_starts(width, tw, tw - ow, "shift")
    row_cuts, col_cuts = _centre_cuts(rows), _centre_cuts(cols)
    jobs = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    wl = None if wavelengths is None else torch.as_tensor(np.asarray(wavelengths), dtype=torch.float32)

    predictor = _tile_predictor(graph, int(cube.shape[-1]), wl is not None)
    results: dict[str, np.ndarray] = {}
    for i in range(0, len(jobs), max(1, int(batch_size))):
        chunk = jobs[i:i + max(1, int(batch_size))]
        tiles = []
        for r, c in chunk:
            (top, h), (left, w) = rows[r], cols[c]
            window = cube[top:top + h, left:left + w]
            tiles.append(window if isinstance(window, torch.Tensor) else torch.from_numpy(np.array(window)))
        batch: dict[str, torch.Tensor] = {"cube": torch.stack(tiles).float()}
        if wl is not None:
            batch["wavelengths"] = wl
        predicted = predictor.predict(batch, output=output)
        outs: Mapping[str, torch.Tensor] = {output: predicted} if output is not None else predicted
        for name, value in outs.items():
            value = value.detach().cpu()
            if value.ndim < 3 or tuple(value.shape[:3]) != tuple(batch["cube"].shape[:3]):
                raise ValueError(f"predict_tiled: output '{name}' has shape {tuple(value.shape)} for tiles "
                                 f"{tuple(batch['cube'].shape)}; only pixel-aligned [B, h, w, ...] outputs can be "
                                 "stitched (choose one with output=)")
            array = value.numpy()
            if name not in results:
                results[name] = np.empty((height, width, *array.shape[3:]), dtype=array.dtype)
            for k, (r, c) in enumerate(chunk):
                (r0, r1), (c0, c1) = row_cuts[r], col_cuts[c]
                top, left = rows[r][0], cols[c][0]
                results[name][r0:r1, c0:c1] = array[k, r0 - top:r1 - top, c0 - left:c1 - left]
    return results[output] if output is not None else results
