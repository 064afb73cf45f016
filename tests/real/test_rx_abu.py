"""Global RX on the shared ABU scenes reproduces the float64 reference AUCs.

The scenes live in ``../shared/data/abu`` beside the checkout (not in the repo); the
tests skip with the reason when the folder is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from cuvis_graph.nodes import RXGlobal, StandardNormalizer
from sklearn.metrics import roc_auc_score

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE = DATA / "rx_auc_reference.csv"

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not REFERENCE.exists(), reason=f"shared ABU data not found at {DATA}"),
]


def _rows() -> list[dict[str, str]]:
    if not REFERENCE.exists():
        return []
    with open(REFERENCE, newline="") as fh:
        return list(csv.DictReader(fh))


SCENES = {Path(r["file"]).stem: r for r in _rows()}


def _load(row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    mat = scipy.io.loadmat(DATA / row["file"])
    cube, mask = mat["data"], mat["map"]
    assert cube.shape == (int(row["height"]), int(row["width"]), int(row["bands"]))
    return cube.astype(np.float32), mask.astype(np.int64)


def _fit_and_score(cube: np.ndarray, mask: np.ndarray, normalize: bool) -> tuple[np.ndarray, RXGlobal]:
    graph = Graph("rx_abu")
    parent = graph.add_node(StandardNormalizer(), name="norm") if normalize else None
    rx = graph.add_node(RXGlobal(), parent=parent, name="rx")
    dm = GraphDataModule.from_arrays(cube[None], mask[None], batch_size=1, val_on_train=True)
    result = graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    assert result.fit.passes == 1  # the normalizer is fitted in the same pass as RX
    scores = graph.predict(cube)["rx"].numpy()[..., 0]
    return scores, rx


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "standardized"])
def test_rx_auc_matches_float64_reference(scene: str, normalize: bool) -> None:
    row = SCENES[scene]
    cube, mask = _load(row)
    scores, _ = _fit_and_score(cube, mask, normalize)
    auc = roc_auc_score(mask.ravel() > 0, scores.ravel())
    assert abs(auc - float(row["rx_auc_float64"])) <= 5e-4, (scene, auc)


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_rx_mean_score_invariant(scene: str) -> None:
    """With Sigma normalised by N-1, mean_p score_p = C (N-1)/N exactly."""
    cube, mask = _load(SCENES[scene])
    scores, _ = _fit_and_score(cube, mask, normalize=False)
    h, w, c = cube.shape
    n = h * w
    expected = c * (n - 1) / n
    assert abs(scores.astype(np.float64).mean() / expected - 1) <= 1e-6
