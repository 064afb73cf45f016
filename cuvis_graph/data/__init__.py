"""Data: datamodules yielding ``{"cube", "mask", "wavelengths"}`` batches."""

from cuvis_graph.data.datamodule import ArrayDataModule, CubeDataset, GraphDataModule, collate_cubes
from cuvis_graph.data.file_dataset import FileCubeDataset
from cuvis_graph.data.folder import FolderDataModule
from cuvis_graph.data.mat import MatSceneDataModule
from cuvis_graph.data.readers import (
           SUPPORTED_SUFFIXES,
           HyperspectralCube,
           ReaderError,
           list_cubes,
           read_cube,
)
from cuvis_graph.data.synthetic import SyntheticHSIDataModule
from cuvis_graph.data.tiling import TiledDataModule, TiledDataset, predict_tiled, tile_grid

__all__ = ["GraphDataModule", "ArrayDataModule", "CubeDataset", "collate_cubes", "SyntheticHSIDataModule",
           "MatSceneDataModule", "HyperspectralCube", "ReaderError", "read_cube", "list_cubes",
           "SUPPORTED_SUFFIXES", "FolderDataModule", "FileCubeDataset", "TiledDataModule", "TiledDataset",
           "predict_tiled", "tile_grid"]
