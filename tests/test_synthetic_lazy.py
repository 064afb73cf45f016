"""The synthetic datamodule generates a split's scenes when the split is first read, with the
values the scene model gives for the split's scene indices, whichever split is read first."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.data.synthetic import make_spectra

SMALL = dict(n_train=3, n_val=2, n_test=1, height=10, width=9, n_bands=6, seed=7)


def reference_scene(seed: int, index: int, height: int, width: int, endmembers: np.ndarray,
                    targets: np.ndarray, noise: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """The scene model of :mod:`cuvis_graph.data.synthetic`, written out step by step."""
    rng = np.random.default_rng([seed, index])
    fields = np.stack([gaussian_filter(rng.normal(size=(height, width)), sigma=3.0, mode="wrap")
                       for _ in range(len(endmembers))], -1)
    fields = fields / (fields.std() + 1e-12)
    z = fields / 0.6
    a = np.exp(z - z.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    gain = 1.0 + 0.05 * gaussian_filter(rng.normal(size=(height, width)), sigma=6.0, mode="wrap") * 6.0
    cube = gain[..., None] * (a @ endmembers) + rng.normal(scale=noise, size=(height, width, len(endmembers[0])))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(4, 9)):
        t = targets[rng.integers(len(targets))]
        r, c = rng.integers(2, height - 3), rng.integers(2, width - 3)
        if rng.uniform() < 0.5:
            size = rng.integers(1, 3)
            rows, cols, f = slice(r, r + size), slice(c, c + size), 1.0
        else:
            rows, cols, f = slice(r, r + 1), slice(c, c + 1), rng.uniform(0.25, 0.6)
        cube[rows, cols] = (1 - f) * cube[rows, cols] + f * gain[rows, cols, None] * t
        mask[rows, cols] = 1
    return cube.astype(np.float32), mask


def expected_split(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    wl = np.linspace(400.0, 1000.0, SMALL["n_bands"]).astype(np.float32)
    endmembers, targets = make_spectra(SMALL["seed"], wl, 4, 3)
    scenes = [reference_scene(SMALL["seed"], start + i, SMALL["height"], SMALL["width"], endmembers, targets)
              for i in range(count)]
    return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


@pytest.mark.parametrize("order", [("train", "val", "test"), ("test", "val", "train"), ("val", "train", "test")])
def test_each_split_holds_its_scene_indices_bit_for_bit_in_any_read_order(order) -> None:
    dm = SyntheticHSIDataModule(**SMALL)
    ranges = {"train": (0, 3), "val": (3, 2), "test": (5, 1)}
    for split in order:
        cubes, masks = expected_split(*ranges[split])
        dataset = getattr(dm, f"{split}_set")
        np.testing.assert_array_equal(dataset.stacked.numpy(), cubes)
        np.testing.assert_array_equal(dataset.stacked_masks.numpy(), masks.astype(np.int64))
        np.testing.assert_array_equal(dataset.wavelengths.numpy(), np.linspace(400.0, 1000.0, 6).astype(np.float32))


def test_construction_generates_nothing_and_setup_generates_what_the_stage_reads(monkeypatch) -> None:
    import cuvis_graph.data.synthetic as synthetic

    drawn: list[int] = []
    real = synthetic.make_scene

    def counted(seed: int, index: int, *args, **kwargs):
        drawn.append(index)
        return real(seed, index, *args, **kwargs)

    monkeypatch.setattr(synthetic, "make_scene", counted)
    dm = SyntheticHSIDataModule(**SMALL)
    assert dm.data_spec().n_channels == 6 and drawn == []
    dm.setup("validate")
    assert drawn == [3, 4]
    dm.setup("fit")
    assert drawn == [3, 4, 0, 1, 2]  # val is not drawn twice
    assert len(dm.train_set) == 3 and drawn == [3, 4, 0, 1, 2]
    dm.setup()
    assert drawn == [3, 4, 0, 1, 2, 5]


def test_empty_splits_are_none_and_assigned_sets_replace_the_generated_ones() -> None:
    dm = SyntheticHSIDataModule(**{**SMALL, "n_val": 0, "n_test": 0})
    assert dm.val_set is None and dm.test_set is None
    dm.val_set = dm.train_set
    assert dm.val_set is dm.train_set and dm.val_dataset is dm.train_set
    assert len(list(dm.val_dataloader())) == 1  # batch_size 4 over 3 scenes


def test_statistics_loader_reads_the_training_scenes_without_setup() -> None:
    dm = SyntheticHSIDataModule(**SMALL, batch_size=2)
    cubes, masks = expected_split(0, 3)
    batches = list(dm.statistics_dataloader())
    np.testing.assert_array_equal(np.concatenate([b["cube"].numpy() for b in batches]), cubes)
    np.testing.assert_array_equal(np.concatenate([b["mask"].numpy() for b in batches]), masks)
