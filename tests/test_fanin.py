"""Fan-in: two statistical branches concatenated into RX, against a numpy float64 reference."""

from __future__ import annotations

import numpy as np
import torch
from cuvis_graph.nodes import ConcatChannels, MinMaxNormalizer, RXGlobal, StandardNormalizer

from cuvis_graph import Graph, GraphDataModule, Node, PortSpec

EPS_NORM = 1e-6  # the normalizers' default eps
EPS_RX = 1e-12  # RXGlobal's default relative regulariser


class Square(Node):
    """``y = x**2``: a non-linear map so that the two branches are not collinear (two
    per-channel affine maps of the same cube would give RX a singular covariance)."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"))}
    OUTPUTS = {"out": PortSpec(("B", "H", "W", "C"))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def rel_err(a, b) -> float:
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build() -> tuple[Graph, dict[str, Node]]:
    g = Graph("fanin")
    std = g.add_node(StandardNormalizer(), name="std")
    mm = g.add_node(MinMaxNormalizer(), name="mm")
    sq = g.add_node(Square(), parent=mm, name="sq")
    cat = g.add_node(ConcatChannels(), parent=[std, sq], name="cat")
    rx = g.add_node(RXGlobal(), parent=cat, name="rx")
    return g, {"std": std, "mm": mm, "cat": cat, "rx": rx}


def reference(train: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-computed float64 pipeline over the training pixels ``[N, C]``."""
    mu, sd = train.mean(axis=0), train.std(axis=0, ddof=1)
    lo, hi = train.min(axis=0), train.max(axis=0)

    def features(x: np.ndarray) -> np.ndarray:
        standard = (x - mu) / (sd + EPS_NORM)
        minmax = (x - lo) / (hi - lo + EPS_NORM)
        return np.concatenate([standard, minmax**2], axis=-1)

    f = features(train)
    mean = f.mean(axis=0)
    cov = np.cov(f, rowvar=False, ddof=1)
    cov_reg = cov + EPS_RX * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    inv = np.linalg.inv(cov_reg)

    def scores(cube: np.ndarray) -> np.ndarray:
        d = features(cube.astype(np.float64)) - mean
        return np.einsum("...i,ij,...j->...", d, inv, d)

    return {"mu": mu, "sd": sd, "lo": lo, "hi": hi, "mean": mean, "inv": inv, "scores": scores}


def test_fanin_statistics_and_scores_match_numpy(tiny_cubes):
    cubes = tiny_cubes  # [5, 6, 7, 4] float32 around 1000
    dm = GraphDataModule.from_arrays(cubes, batch_size=2)
    g, n = build()
    result = g.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}})
    assert result.fit.levels == [["std", "mm"], ["rx"]]
    assert result.fit.passes == 2

    train = cubes.reshape(-1, cubes.shape[-1]).astype(np.float64)
    ref = reference(train)

    # level 1: the branch statistics
    np.testing.assert_allclose(n["std"].mean.double().numpy(), ref["mu"], rtol=1e-6)
    np.testing.assert_allclose(n["std"].std.double().numpy(), ref["sd"], rtol=1e-5)
    np.testing.assert_array_equal(n["mm"].min.double().numpy(), ref["lo"])
    np.testing.assert_array_equal(n["mm"].max.double().numpy(), ref["hi"])

    # level 2: RX fitted on [standardized, minmax^2] in this order (C = 4 + 4)
    rx = n["rx"]
    assert rx.mean.shape == (8,)
    assert rx.mean.dtype == torch.float64
    assert rel_err(rx.mean, ref["mean"]) <= 1e-5
    assert rel_err(rx.covariance_inverse, ref["inv"]) <= 1e-5
    # swapping the branches would not match (the test can tell the order apart)
    swapped = np.concatenate([ref["mean"][4:], ref["mean"][:4]])
    assert rel_err(rx.mean, swapped) > 1e-2

    # inference through the same executor: a single cube and a batch
    expected = ref["scores"](cubes)  # [5, 6, 7]
    single = g.predict(cubes[0])
    assert set(single) == {"rx"}
    assert single["rx"].shape == (6, 7, 1)
    assert rel_err(single["rx"][..., 0], expected[0]) <= 1e-5
    batch = g.predict(cubes, output="rx")
    assert batch.shape == (5, 6, 7, 1)
    assert rel_err(batch[..., 0], expected) <= 1e-5
    np.testing.assert_allclose(batch[..., 0].double().numpy(), expected, rtol=1e-3, atol=1e-3)


def test_fanin_plan_dims_and_order():
    g, _ = build()
    plan = g.compile(GraphDataModule.from_arrays(np.zeros((1, 2, 2, 3), np.float32)))
    assert plan.output_dims["cat"]["out"][-1] == 6  # C_std + C_sq = 3 + 3
    assert plan.output_dims["rx"]["scores"][-1] == 1
    order = plan.node_names
    assert order.index("cat") > max(order.index("std"), order.index("sq"))
    assert order.index("sq") > order.index("mm")
    cat_inputs = plan.step("cat").inputs["x"]
    assert [str(s) for s in cat_inputs] == ["std.out", "sq.out"]
