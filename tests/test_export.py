"""ONNX export: parity with eager inference, dynamic shapes, named failures, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cuvis_graph.nodes import MinMaxNormalizer, QuantileDecider, RXGlobal

from cuvis_graph import Graph, GraphDataModule, Node, NotFittedError, PortSpec
from cuvis_graph.cli.app import main
from cuvis_graph.io.export import ExportError, export_onnx, export_onnx_report
from cuvis_graph.io.saving import save_graph
from cuvis_graph.io.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
C = 8
RTOL = 1e-5


def cubes(n: int, h: int, w: int, c: int = C, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2.0 * np.eye(c)
    return (rng.normal(size=(n * h * w, c)) @ mixing * 20.0 + 1000.0).reshape(n, h, w, c).astype(np.float32)


def fit(graph: Graph, c: int = C) -> Graph:
    dm = GraphDataModule.from_arrays(cubes(4, 8, 9, c=c), batch_size=2)
    graph.train(dm, {"trainer": {"max_epochs": 0, "enable_progress_bar": False, "accelerator": "cpu"}},
                run_dir=False)
    return graph


@pytest.fixture(scope="module")
def rx_graph() -> Graph:
    graph = Graph("norm_rx")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    return fit(graph)


@pytest.fixture(scope="module")
def decider_graph() -> Graph:
    """RX with a per-image quantile decider: the quantile index must follow the image size."""
    graph = Graph("norm_rx_quantile")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(eps=1e-9), parent=norm, name="rx")
    graph.add_node(QuantileDecider(q=0.9), parent=rx, name="decide")
    return fit(graph)


@pytest.fixture(scope="module")
def selector_graph() -> Graph:
    pipeline = load_pipeline(ROOT / "pipelines" / "selector_rx_bce.yaml", [
        "data=synthetic", "data.params.n_train=4", "data.params.n_val=1", "data.params.n_test=0",
        "data.params.height=16", "data.params.width=16", "data.params.batch_size=2", "data.params.n_bands=12",
        "nodes.selector.params.n_select=5", "training.trainer.max_epochs=1", "training.trainer.accelerator=cpu",
        "training.trainer.enable_progress_bar=false"])
    pipeline.graph.train(pipeline.datamodule, pipeline.training, run_dir=False)
    return pipeline.graph


def onnx_vs_eager(graph: Graph, path: Path, shape: tuple[int, int, int, int], scale: float,
                  seed: int) -> tuple[float, float]:
    """Max abs and max relative (to max |eager|) difference over every output."""
    cube = torch.from_numpy(cubes(*shape[:3], c=shape[3], seed=seed)) if scale else torch.rand(*shape)
    eager = graph.predict(cube)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"cube": cube.numpy()})
    assert [o.name for o in session.get_outputs()] == list(eager)
    worst_abs = worst_rel = 0.0
    for got, ref in zip(outputs, eager.values(), strict=True):
        ref = ref.numpy().astype(np.float64)
        assert got.shape == ref.shape
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / float(np.abs(ref).max()))
    return worst_abs, worst_rel


@pytest.mark.parametrize("which", ["rx_graph", "selector_graph", "decider_graph"])
def test_onnx_parity_and_dynamic_shapes(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    graph: Graph = request.getfixturevalue(which)
    c = graph.data_spec.n_channels
    path, report = export_onnx_report(graph, tmp_path / "model.onnx", check=True)
    assert report.ok and report.max_rel <= RTOL
    for shape, scale, seed in (((2, 64, 64, c), 1.0, 1), ((2, 64, 64, c), 0.0, 2), ((3, 24, 40, c), 1.0, 3)):
        max_abs, max_rel = onnx_vs_eager(graph, path, shape, scale, seed)
        assert max_rel <= RTOL, (shape, max_abs, max_rel)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height", "width", c]
    assert [o.name for o in model.graph.output] == list(graph.predict(torch.rand(1, 4, 4, c)))


def test_unfitted_node_is_named(tmp_path: Path) -> None:
    graph = Graph("raw")
    graph.add_node(RXGlobal(), name="rx")
    with pytest.raises(NotFittedError, match="node 'rx'"):
        export_onnx(graph, tmp_path / "m.onnx", n_channels=C)
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_channel_count(tmp_path: Path) -> None:
    graph = Graph("raw")
    graph.add_node(MinMaxNormalizer(use_running_stats=False), name="norm")
    with pytest.raises(ExportError, match=r"channel count C is unknown .*; pass n_channels=C"):
        export_onnx(graph, tmp_path / "m.onnx")


class _Eigen(Node):
    """A node using an operator the ONNX exporter does not support."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = torch.einsum("bhwc,bhwd->cd", x, x)
        return x * torch.linalg.eigvalsh(gram)


class _SizeBaked(Node):
    """A node that turns the image height into a Python number (a constant for the tracer)."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[1])


def test_unexportable_node_is_named(rx_graph: Graph, tmp_path: Path) -> None:
    graph = Graph("bad")
    norm = graph.add_node(MinMaxNormalizer(use_running_stats=False), name="norm")
    graph.add_node(_Eigen(), parent=norm, name="eigen")
    with pytest.raises(ExportError, match=r"node 'eigen' \(_Eigen\).*linalg_eigvalsh"):
        export_onnx(graph, tmp_path / "m.onnx", n_channels=C)
    assert not list(tmp_path.iterdir())


def test_parity_failure_is_reported(tmp_path: Path) -> None:
    graph = Graph("baked")
    graph.add_node(_SizeBaked(), name="baked")
    with pytest.raises(ExportError, match=r"disagrees with eager inference: max abs diff .*worst output 'baked'"):
        export_onnx(graph, tmp_path / "m.onnx", n_channels=C)
    assert not list(tmp_path.iterdir())
    export_onnx(graph, tmp_path / "m.onnx", n_channels=C, check=False)  # written when asked not to check
    assert (tmp_path / "m.onnx").is_file()


def test_cli_export(rx_graph: Graph, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_graph(rx_graph, tmp_path / "model")
    out = tmp_path / "exported" / "rx.onnx"
    out.parent.mkdir()
    assert main(["export", str(model), "--format", "onnx", "-o", str(out), "--opset", "17"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "max rel diff" in printed
    assert onnx.load(str(out)).opset_import[0].version == 17
    max_abs, max_rel = onnx_vs_eager(rx_graph, out, (2, 64, 64, C), 1.0, 4)
    assert max_rel <= RTOL
    assert main(["export", str(model)]) == 0  # default: MODEL_DIR.onnx beside the model folder
    assert (tmp_path / "model.onnx").is_file()
    assert sorted(p.name for p in model.iterdir()) == ["meta.json", "pipeline.yaml", "weights.safetensors"]
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "no such model directory" in capsys.readouterr().err
