"""The inference session and the executor around it: modes restored, one compile per
session, node errors that name the node and its inputs, the per-step hook, released
intermediates, and predictions equal to a float64 reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cuvis_graph.nodes import RXGlobal, StandardNormalizer
from torch import nn

import cuvis_graph.core.compiler as compiler
import cuvis_graph.core.inference as inference
from cuvis_graph import Graph
from cuvis_graph.core.executor import Executor, NodeError
from cuvis_graph.core.inference import InferenceSession
from cuvis_graph.core.node import Node
from cuvis_graph.core.plan import DataSpec
from cuvis_graph.data import GraphDataModule, predict_tiled
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.prediction import predict_files

CONFIG = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}


def _scene(seed: int, h: int, w: int, c: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return (rng.normal(size=(h * w, c)) @ mixing + 3).reshape(h, w, c).astype(np.float32)


class ModeProbe(Node):
    """Identity (a dropout child, the identity in eval mode) that records, per call, its own
    and its child's train flag and whether inference mode is on."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.child = nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.child.training, torch.is_inference_mode_enabled()))
        return self.child(x)


class Raising(Node):
    """Raises ``error`` on every call."""

    def __init__(self, error: Exception, name: str | None = None) -> None:
        super().__init__(name=name)
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def _fitted_rx(cube: np.ndarray, probe: bool = False) -> Graph:
    graph = Graph("rx")
    parent = graph.add_node(StandardNormalizer(), name="norm")
    if probe:
        parent = graph.add_node(ModeProbe(), parent=parent, name="probe")
    graph.add_node(RXGlobal(eps=0.0), parent=parent, name="rx")
    graph.train(GraphDataModule.from_arrays(cube, batch_size=1), CONFIG, run_dir=False)
    return graph


def _rx_reference(cube: np.ndarray) -> np.ndarray:
    """Mahalanobis distance ``(x - mu)^T Sigma^-1 (x - mu)`` per pixel, float64 (``Sigma``
    with ddof=1; a per-channel affine normalisation leaves it unchanged)."""
    x = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    centred = x - x.mean(axis=0)
    inverse = np.linalg.inv(np.cov(x, rowvar=False, ddof=1))
    return np.einsum("nc,cd,nd->n", centred, inverse, centred).reshape(cube.shape[:2])


def test_predict_equals_a_float64_rx_reference() -> None:
    cube = _scene(0, 12, 9)
    graph = _fitted_rx(cube)
    scores = graph.predict(cube)["rx"]
    assert scores.shape == (12, 9, 1)
    np.testing.assert_allclose(scores[..., 0].numpy(), _rx_reference(cube), rtol=1e-5, atol=1e-5)
    batch = {"cube": torch.from_numpy(np.stack([cube, cube[::-1].copy()]))}
    session = InferenceSession.for_batch(graph, batch)
    both = session.predict(batch)["rx"]
    assert torch.equal(both[0], scores) and torch.equal(session.predict(batch, output="rx.scores"), both)
    np.testing.assert_allclose(both[1, ..., 0].numpy(), _rx_reference(cube)[::-1], rtol=1e-5, atol=1e-5)


def test_predict_restores_every_modules_mode() -> None:
    cube = _scene(1, 10, 8)
    graph = _fitted_rx(cube, probe=True)
    probe, rx, norm = graph["probe"], graph["rx"], graph["norm"]
    probe.train()
    probe.child.eval()  # a part in eval mode inside a node in train mode
    rx.train()
    norm.eval()
    probe.calls.clear()
    graph.predict(cube)
    assert probe.calls == [(False, False, True)]  # ran in eval and inference mode
    assert probe.training and not probe.child.training
    assert rx.training and not norm.training
    graph.predict(cube[None], output="probe")  # the same with a chosen output
    assert probe.training and not probe.child.training and rx.training and not norm.training


def test_a_raising_node_is_named_with_its_input_shapes() -> None:
    cube = _scene(2, 6, 5)
    graph = Graph("bad")
    graph.add_node(Raising(RuntimeError("boom")), parent="batch.cube", name="broken")
    with pytest.raises(RuntimeError) as info:
        graph.predict(cube)
    message = str(info.value)
    assert message.startswith("boom")
    assert "node 'broken' (Raising)" in message and "x float32 [1, 6, 5, 4]" in message
    assert isinstance(info.value.__cause__, RuntimeError) and str(info.value.__cause__) == "boom"

    graph = Graph("bad")
    graph.add_node(Raising(KeyError("band")), parent="batch.cube", name="lookup")
    with pytest.raises(KeyError, match=r"'band' \(in node 'lookup' \(Raising\), inputs: x float32 \[1, 6, 5, 4\]\)"):
        graph.predict(cube)

    # a type that cannot be rebuilt from one message: a NodeError naming the original type
    unicode_error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    graph = Graph("bad")
    graph.add_node(Raising(unicode_error), parent="batch.cube", name="decoder")
    with pytest.raises(NodeError, match=r"^UnicodeDecodeError: .*in node 'decoder' \(Raising\), inputs: x float32 "
                                        r"\[2, 6, 5, 4\]") as info:
        graph.predict(np.stack([cube, cube]))
    assert info.value.__cause__ is unicode_error

    # a cuvis-graph error that already names the node passes unchanged
    own = CuvisGraphError("node 'named': its own clear message")
    graph = Graph("bad")
    graph.add_node(Raising(own), parent="batch.cube", name="named")
    with pytest.raises(CuvisGraphError) as info:
        graph.predict(cube)
    assert info.value is own


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[DataSpec | None]:
    """The data spec of every compile an inference session makes (and of direct compiles)."""
    calls: list[DataSpec | None] = []
    real = compiler.compile_graph

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("data"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "compile_graph", counting)
    monkeypatch.setattr(compiler, "compile_graph", counting)
    return calls


def test_predict_tiled_compiles_once(compiles: list) -> None:
    cube = _scene(3, 29, 22)
    graph = _fitted_rx(cube)
    whole = graph.predict(cube)["rx"].numpy()
    compiles.clear()
    stitched = predict_tiled(graph, cube, tile=8, overlap=3, output="rx", batch_size=2)  # 20 tiles, 10 batches
    assert len(compiles) == 1 and compiles[0].n_channels == 4
    assert np.array_equal(stitched, whole)


def test_file_prediction_compiles_once(tmp_path: Path, compiles: list) -> None:
    scenes = [_scene(s, 9, 7) for s in range(3)]
    graph = _fitted_rx(scenes[0])
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        np.save(folder / f"s{i}.npy", scene)
    compiles.clear()
    summary = predict_files(graph, [folder], tmp_path / "out", progress=False, overlay=False)
    assert [r.status for r in summary.results] == ["ok"] * 3
    assert len(compiles) == 1
    for i, scene in enumerate(scenes):
        expected = graph.predict(scene)["rx"][..., 0].numpy()
        assert np.array_equal(np.load(tmp_path / "out" / f"s{i}" / "scores.npy"), expected)


def test_executor_hook_sees_every_step_in_order_and_keep_releases_the_rest() -> None:
    cube = _scene(4, 7, 6)
    graph = _fitted_rx(cube, probe=True)
    plan = compiler.compile_graph(graph, DataSpec(n_channels=4), with_leaves=False)
    executor = Executor(plan)
    batch = {"cube": torch.from_numpy(cube)[None]}
    seen: list[tuple[str, list[str], torch.Tensor]] = []
    with torch.no_grad():
        full = executor.run(batch, on_step=lambda step, inputs, result: seen.append(
            (step.name, sorted(inputs), next(iter(result.values())))))
        kept = executor.run(batch, keep={"rx"})
    assert [name for name, _, _ in seen] == plan.node_names == ["norm", "probe", "rx"]
    assert all(ports == ["x"] for _, ports, _ in seen)
    assert all(torch.equal(out, next(iter(full[name].values()))) for name, _, out in seen)
    assert list(kept) == ["rx"] and torch.equal(kept["rx"]["scores"], full["rx"]["scores"])
    assert executor.last_use() == {"norm": 1, "probe": 2, "rx": 2}


def test_train_save_predictions_compiles_once_and_equals_predict(tmp_path: Path, compiles: list) -> None:
    """``cuvis-graph train --save-predictions``: one compile for all batches, the scores of
    :meth:`Graph.predict` on each scene."""
    from types import SimpleNamespace

    from cuvis_graph.cli.train_commands import _save_predictions

    scenes = np.stack([_scene(s, 9, 7) for s in range(5)])  # 5 scenes, batches of 2: 3 batches
    graph = _fitted_rx(scenes[0])
    datamodule = GraphDataModule.from_arrays(scenes, batch_size=2, val_on_train=True)
    datamodule.setup("predict")
    expected = np.concatenate([graph.predict(torch.as_tensor(s))["rx"][None].numpy() for s in scenes])
    compiles.clear()
    path = _save_predictions(SimpleNamespace(graph=graph, datamodule=datamodule), tmp_path)
    assert len(compiles) == 1
    with np.load(path) as saved:
        np.testing.assert_allclose(saved["rx"], expected, rtol=1e-6)
