"""Data: datamodules yielding ``{"cube", "mask", "wavelengths"}`` batches."""

from .datamodule import ArrayDataModule, CubeDataset, GraphDataModule, collate_cubes
from .mat import MatSceneDataModule
from .synthetic import SyntheticHSIDataModule

__all__ = ["GraphDataModule", "ArrayDataModule", "CubeDataset", "collate_cubes", "SyntheticHSIDataModule",
           "MatSceneDataModule"]
