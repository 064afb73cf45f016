"""Data: datamodules yielding ``{"cube", "mask", "wavelengths"}`` batches."""

from .datamodule import ArrayDataModule, CubeDataset, GraphDataModule, collate_cubes
from .folder import FileCubeDataset, FolderDataModule
from .mat import MatSceneDataModule
from .readers import SUPPORTED_SUFFIXES, HyperspectralCube, ReaderError, list_cubes, read_cube
from .synthetic import SyntheticHSIDataModule
from .tiling import TiledDataModule, TiledDataset, predict_tiled, tile_grid

__all__ = ["GraphDataModule", "ArrayDataModule", "CubeDataset", "collate_cubes", "SyntheticHSIDataModule",
           "MatSceneDataModule", "HyperspectralCube", "ReaderError", "read_cube", "list_cubes",
           "SUPPORTED_SUFFIXES", "FolderDataModule", "FileCubeDataset", "TiledDataModule", "TiledDataset",
           "predict_tiled", "tile_grid"]
