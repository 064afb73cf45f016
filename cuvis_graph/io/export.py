"""ONNX export of a graph's inference path.

:func:`export_onnx` wraps the executor (the same one :meth:`Graph.predict` runs, principle
1) in :class:`InferenceModule`, whose ``forward(cube [B, H, W, C])`` returns the sink
outputs as a tuple, and exports it with the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``; it needs no extra package and traces the fitted
buffers as initializers). Input ``cube`` (float32) has dynamic batch, height and width;
outputs are named after the sink nodes. Leaves (losses, metrics, plots) are not exported.

With ``check=True`` onnxruntime runs the file on a random ``2 x 64 x 64 x C`` batch and on
a second shape (``1 x 40 x 56 x C``, which also proves the dynamic axes) and compares
with eager ``graph.predict``: ``max |onnx - eager| / max |eager| <= rtol`` per output; a
NaN or Inf in either output is a failure naming the output (NaN never matches NaN).

The target file is checked before anything runs: its folder must exist, it must not be
(or lie in) a saved model folder (links resolved: a model's files are never overwritten),
and an existing file there is replaced only when it is an ONNX model.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cuvis_graph.core.inference import InferenceSession, sink_outputs
from cuvis_graph.core.plan import DataSpec, Step
from cuvis_graph.errors import CuvisGraphError
from cuvis_graph.io.atomic import atomic_path
from cuvis_graph.io.output_paths import refuse_inside_model

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = ["ExportError", "InferenceModule", "ParityReport", "export_onnx", "export_onnx_report", "check_onnx", "CHECK_SHAPES"]

#: ``(B, H, W)`` of the batches the parity check runs.
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 64, 64), (1, 40, 56))
INPUT_NAME = "cube"
_SHAPE_HINT = ("; if a node computes Python numbers from its input (image size, data-dependent indices, e.g. "
               "a per-image quantile), the tracer fixed them to the traced 2x16x16 example")


class ExportError(CuvisGraphError):
    """The graph cannot be exported, or the exported model disagrees with eager inference."""


def _module_key(name: str, taken: set[str]) -> str:
    key = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "node"
    if hasattr(nn.ModuleDict(), key) or key[0].isdigit():
        key = f"node_{key}"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


class InferenceModule(nn.Module):
    """``forward(cube [B, H, W, C]) -> tuple`` of the sinks' first output ports (as
    :meth:`Graph.predict` returns them), run by the graph's one executor through an
    :class:`~cuvis_graph.core.inference.InferenceSession` (:attr:`session`).

    The nodes are registered as submodules (keys = node names), so ONNX node names carry
    the graph node they come from (``/rx/MatMul``).
    """

    def __init__(self, graph: Graph, n_channels: int) -> None:
        super().__init__()
        self.session = InferenceSession(graph, DataSpec(n_channels=n_channels, batch_keys=frozenset({INPUT_NAME})))
        self.plan = self.session.plan
        for step in self.plan.steps:
            step.node.check_fitted()
        taken: set[str] = set()
        self.nodes = nn.ModuleDict({_module_key(s.name, taken): s.node for s in self.plan.steps})
        self.sinks: list[str] = self.session.sinks
        self.n_channels = n_channels

    def output_names(self) -> list[str]:
        """Sink names, made unique against the input name."""
        return [f"{n}_output" if n == INPUT_NAME else n for n in self.sinks]

    def forward(self, cube: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.executor.run({INPUT_NAME: cube}, keep=self.sinks)
        return tuple(sink_outputs(self.plan, outputs).values())


class _OneNode(nn.Module):
    """One node with its inputs flattened to positional tensors (to locate export failures)."""

    def __init__(self, node: nn.Module, layout: list[tuple[str, int | None]]) -> None:
        super().__init__()
        self.node, self.layout = node, layout

    def forward(self, *flat: torch.Tensor) -> Any:
        kwargs: dict[str, Any] = {}
        i = 0
        for port, count in self.layout:
            if count is None:
                kwargs[port], i = flat[i], i + 1
            else:
                kwargs[port], i = list(flat[i:i + count]), i + count
        result = self.node(**kwargs)
        return tuple(result.values()) if isinstance(result, dict) else result


@dataclass
class ParityReport:
    """ONNX vs eager: worst differences over every checked output and shape."""

    max_abs: float
    max_rel: float
    rtol: float
    shapes: list[tuple[int, ...]]
    per_output: dict[str, tuple[float, float]]
    #: output -> ``"onnx 3, eager 0 NaN/Inf values on a 2x64x64x6 cube"``; any entry fails the check
    nonfinite: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.nonfinite and self.max_rel <= self.rtol

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        text = f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g} (rtol {self.rtol:g}; {shapes})"
        if self.nonfinite:
            text += "; non-finite: " + ", ".join(f"'{k}' {v}" for k, v in self.nonfinite.items())
        return text


def _n_channels(graph: Graph, n_channels: int | None) -> int:
    from cuvis_graph.io.model_channels import infer_n_channels

    if n_channels is not None:
        return int(n_channels)
    found = infer_n_channels(graph)
    if found is None:
        raise ExportError(f"graph '{graph.name}': the input channel count C is unknown (the graph was not "
                          "trained on a datamodule that declares it); pass n_channels=C")
    return found


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null: on failure the TorchScript exporter dumps
    its whole IR graph there from C++ (the error itself is raised and reported by us)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    except OSError:  # no such descriptors (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd, _ in saved:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], target: str | io.BytesIO, opset: int,
            input_names: list[str], output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings(), _native_output_silenced():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice, tracer warnings
        torch.onnx.export(module, example, target, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


class _Located(Exception):
    """Stops the eager run at the first node that cannot be exported alone."""


def _locate_failure(module: InferenceModule, cube: torch.Tensor, opset: int) -> str | None:
    """Export every node alone, on the inputs it gets in an eager run (an executor hook);
    the first that fails is named: ``"node 'x' (Type): message"``."""

    def export_alone(step: Step, inputs: dict[str, Any], _result: Any) -> None:
        layout = [(p, len(v) if isinstance(v, list) else None) for p, v in inputs.items()]
        flat = [t for v in inputs.values() for t in (v if isinstance(v, list) else [v])]
        try:
            _export(_OneNode(step.node, layout), tuple(flat), io.BytesIO(), opset,
                    [f"in{i}" for i in range(len(flat))], [], {})
        except Exception as exc:  # noqa: BLE001 - this is what we are looking for
            raise _Located(f"node '{step.name}' ({type(step.node).__name__}): {type(exc).__name__}: {exc}") from exc

    try:
        with torch.no_grad():
            module.session.executor.run({INPUT_NAME: cube}, on_step=export_alone, keep=())
    except _Located as found:
        return str(found)
    return None


def check_onnx(graph: Graph, path: str | os.PathLike, *, n_channels: int | None = None, rtol: float = 1e-5,
               shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES, seed: int = 0) -> ParityReport:
    """Run the ONNX file with onnxruntime on random cubes ``[B, H, W, C]`` of ``shapes``
    (uniform in [0, 1)) and compare with ``graph.predict`` (no exception on mismatch; see
    :attr:`ParityReport.ok`). ``rel = max |onnx - eager| / max |eager|`` per output."""
    import onnxruntime as ort

    c = _n_channels(graph, n_channels)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ExportError(f"{path}: onnxruntime cannot load the exported model: {exc}") from None
    names = [o.name for o in session.get_outputs()]
    generator = torch.Generator().manual_seed(seed)
    max_abs = max_rel = 0.0
    per_output: dict[str, tuple[float, float]] = {}
    nonfinite: dict[str, str] = {}
    eager_session = InferenceSession(graph, DataSpec(n_channels=c, batch_keys=frozenset({INPUT_NAME})))
    for b, h, w in shapes:
        cube = torch.rand(b, h, w, c, generator=generator)
        eager = eager_session.predict({INPUT_NAME: cube})
        try:
            got = session.run(None, {INPUT_NAME: cube.numpy()})
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{path}: onnxruntime failed on a {b}x{h}x{w}x{c} cube: {exc}") from None
        for name, (sink, expected) in zip(names, eager.items(), strict=True):
            ref = expected.detach().cpu().numpy().astype(np.float64)
            out = np.asarray(got[names.index(name)], dtype=np.float64)
            if out.shape != ref.shape:
                raise ExportError(f"{path}: output '{name}' has shape {out.shape} for a {b}x{h}x{w}x{c} cube, "
                                  f"eager gives {ref.shape}{_SHAPE_HINT}")
            n_out, n_ref = int((~np.isfinite(out)).sum()), int((~np.isfinite(ref)).sum())
            if (n_out or n_ref) and sink not in nonfinite:
                nonfinite[sink] = f"onnx {n_out}, eager {n_ref} NaN/Inf values on a {b}x{h}x{w}x{c} cube"
                continue
            diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            rel = diff / scale if scale > 0 else diff
            old = per_output.get(sink, (0.0, 0.0))
            per_output[sink] = (max(old[0], diff), max(old[1], rel))
            max_abs, max_rel = max(max_abs, diff), max(max_rel, rel)
    return ParityReport(max_abs, max_rel, rtol, [(b, h, w, c) for b, h, w in shapes], per_output, nonfinite)


def _is_onnx_file(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything that does not parse is not ONNX
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _check_target(target: Path) -> None:
    """Refuse a target whose folder is missing, that is a folder, lies in a saved model, or is a
    file other than an ONNX model (never overwritten)."""
    if not target.parent.is_dir():
        raise ExportError(f"export to {target}: the folder {target.parent} does not exist; create it or choose "
                          "another path")
    refuse_inside_model(target, "export to")
    if target.is_dir():
        raise ExportError(f"export to {target}: is a folder; give a file name such as {target / 'model.onnx'}")
    if target.exists() and not _is_onnx_file(target):
        raise ExportError(f"export to {target}: the file exists and is not an ONNX model; refusing to overwrite "
                          "it: remove it or choose another path")


def export_onnx(graph: Graph, path: str | os.PathLike, *, n_channels: int | None = None, opset: int = 17,
                check: bool = True, rtol: float = 1e-5) -> Path:
    """Export ``graph``'s inference path to ONNX (see :func:`export_onnx_report`); returns the path."""
    return export_onnx_report(graph, path, n_channels=n_channels, opset=opset, check=check, rtol=rtol)[0]


def export_onnx_report(graph: Graph, path: str | os.PathLike, *, n_channels: int | None = None, opset: int = 17,
                       check: bool = True, rtol: float = 1e-5) -> tuple[Path, ParityReport | None]:
    """Export ``graph``'s inference path to the ONNX file ``path`` (written atomically).

    Args:
        graph: a fitted graph.
        path: the ``.onnx`` file to write.
        n_channels: C of the input; default: the graph's ``data_spec`` (set by training or
            by :func:`~cuvis_graph.io.saving.load_graph`).
        opset: ONNX opset version.
        check: verify with onnxruntime against eager inference (:func:`check_onnx`) before
            the file is put in place; :class:`ExportError` with the largest difference if
            ``rel > rtol``.

    Returns:
        ``(path, report)``; ``report`` is the :class:`ParityReport` (``None`` without check).

    Input ``cube``: ``[B, H, W, C]`` float32 with dynamic ``B, H, W``; outputs: the sinks
    (named after their nodes), each ``[B, H, W, ...]``.

    Raises:
        ExportError: unknown C, a node that cannot be exported (named), or a parity failure.
        NotFittedError: a statistical node without statistics.
    """
    target = Path(path)
    _check_target(target)
    report: ParityReport | None = None
    c = _n_channels(graph, n_channels)
    module = InferenceModule(graph, c)
    example = torch.rand(2, 16, 16, c, generator=torch.Generator().manual_seed(0)).to(module.session.device)
    names = module.output_names()
    ranks = {n: len(next(iter(module.plan.output_dims[s].values()))) for n, s in zip(names, module.sinks,
                                                                                     strict=True)}
    axes = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}}
    for name, rank in ranks.items():
        axes[name] = {0: "batch", 1: "height", 2: "width"} if rank >= 3 else {0: "batch"}
    with atomic_path(target, suffix=target.suffix or ".onnx") as tmp:  # in place only once checked
        with module.session.evaluating():  # every node's train/eval mode is put back afterwards
            try:
                with torch.no_grad():
                    _export(module, (example,), str(tmp), opset, [INPUT_NAME], names, axes)
            except Exception as exc:  # noqa: BLE001 - explained below, naming the node when possible
                where = _locate_failure(module, example, opset)
                detail = where or f"{type(exc).__name__}: {exc}"
                raise ExportError(f"graph '{graph.name}' cannot be exported to ONNX (opset {opset}): "
                                  f"{detail}") from exc
        if check:
            report = check_onnx(graph, tmp, n_channels=c, rtol=rtol)
            if report.nonfinite:
                name, detail = next(iter(report.nonfinite.items()))
                raise ExportError(f"graph '{graph.name}': output '{name}' is not finite in the parity check "
                                  f"({detail}); NaN/Inf never count as a match: fix the node that produces them")
            if not report.ok:
                worst = max(report.per_output, key=lambda k: report.per_output[k][1])
                raise ExportError(f"graph '{graph.name}': the ONNX model disagrees with eager inference: "
                                  f"{report}; worst output '{worst}'{_SHAPE_HINT}")
    return target, report
