"""Every registered processing node honours the node contract.

For each ``Node`` class in the registry: ports are declared with dims, the node fits
(when statistical) and runs on a ``[2, 8, 8, C]`` batch through the executor, its output
matches its declared rank, and a fresh instance loaded from its state dict gives
bit-identical outputs.
"""

from __future__ import annotations

import pytest
import torch

from cuvis_graph import Graph, Node
from cuvis_graph.core.fitting import fit_statistics
from cuvis_graph.core.registry import registered

C = 6
#: constructor arguments for nodes that have required parameters
REQUIRED_ARGS = {"TrainablePCA": {"n_components": 3}, "SoftChannelSelector": {"n_select": 3}}

NODE_TYPES = sorted(name for name, cls in registered().items() if isinstance(cls, type) and issubclass(cls, Node))


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cube = torch.rand(2, 8, 8, C, generator=gen) * 100 + 10
    return {
        "cube": cube,
        "mask": (torch.rand(2, 8, 8, generator=gen) > 0.8).long() * 2,
        "scores": torch.rand(2, 8, 8, 1, generator=gen) * 10,
    }


def _wire(node: Node) -> dict[str, object]:
    """Feed each required input from the batch key whose shape fits its dims."""
    wiring: dict[str, object] = {}
    for port, spec in node.input_specs.items():
        if spec.optional:
            continue
        if spec.variadic:
            wiring[port] = ["batch.cube", "batch.cube"]
        elif len(spec.dims) == 3:
            wiring[port] = "batch.mask"
        elif spec.dims[-1] == 1:
            wiring[port] = "batch.scores"
        else:
            wiring[port] = "batch.cube"
    return wiring


def _build(type_name: str) -> tuple[Graph, Node]:
    cls = registered()[type_name]
    node = cls(**REQUIRED_ARGS.get(type_name, {}))
    graph = Graph(f"contract_{type_name}")
    graph.add_node(node, parent=_wire(node), name="node")
    return graph, node


def test_registry_has_the_catalog() -> None:
    assert {"MinMaxNormalizer", "StandardNormalizer", "RXGlobal", "RXLogitHead", "TrainablePCA",
            "SoftChannelSelector", "BinaryDecider", "QuantileDecider", "BinaryLabelMapper"} <= set(NODE_TYPES)


@pytest.mark.parametrize("type_name", NODE_TYPES)
def test_node_contract(type_name: str) -> None:
    cls = registered()[type_name]
    assert cls.__doc__ and cls.__doc__.strip(), f"{type_name} has no docstring"
    graph, node = _build(type_name)
    assert node.input_specs and node.output_specs, f"{type_name} declares no ports"
    for spec in list(node.input_specs.values()) + list(node.output_specs.values()):
        assert isinstance(spec.dims, tuple) and spec.dims, f"{type_name}: port without dims"

    batch = _batch()
    plan = graph.compile()
    report = fit_statistics(plan, lambda: [batch], progress=False)
    assert report.passes == (1 if node.statistical else 0)
    assert node.is_fitted
    node.eval()
    outputs = graph.predict(batch)
    assert set(outputs) == {"node"}
    out = outputs["node"]
    port_dims = next(iter(node.output_specs.values())).dims
    assert out.ndim == len(port_dims) and out.shape[0] == 2 and torch.isfinite(out.float()).all()
    if port_dims[-1] == 1:
        assert out.shape[-1] == 1

    # state dict round trip into a fresh instance (buffers sized at fit time are resized on load)
    state = {k: v.clone() for k, v in node.state_dict().items()}
    graph2, fresh = _build(type_name)
    fresh.load_state_dict(state)
    fresh.eval()
    assert fresh.is_fitted
    torch.testing.assert_close(graph2.predict(batch)["node"], out, rtol=0, atol=0)
