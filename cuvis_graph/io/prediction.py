"""File-based prediction: score cube files with a (loaded) graph.

:func:`predict_files` reads every input (``.npy``, ``.npz``, ``.mat``, ENVI ``.hdr``; files
or folders) with :func:`cuvis_graph.data.read_cube`, runs the graph on it and writes::

    <out>/<stem>/scores.npy    [H, W] float32  the score map (see :func:`score_outputs`)
    <out>/<stem>/mask.npy      [H, W] uint8    the decided anomaly mask (0/1)
    <out>/<stem>/overlay.png   1200 px wide figure: scores with a colour bar | detections in
                               red on the false colour | the mask; title: file, rule, count
    <out>/summary.csv          one row per input: shape, score statistics, anomaly pixels,
                               status ok|error and the error message

A folder input gives its cube files; those of its sub-folders only with ``recursive=True``
(``cuvis-graph predict --recursive``), their results under ``<out>/<sub-folder>/<stem>/``
(without it they are counted, and the CLI says how many were not taken); see
:mod:`cuvis_graph.io.prediction_inputs`. Every file is run by one
:class:`~cuvis_graph.core.inference.InferenceSession` per channel count (one compile when the
model knows its C).

Which output is the score: the last node (topological order) whose output is per-pixel
``[B, H, W, 1]`` and that is not a decider; a decider is a node whose class declares
``is_decider = True`` (:class:`~cuvis_graph.core.node.Node`), e.g. ``BinaryDecider``/``QuantileDecider``.
The mask is the last decider's output when the graph has one, else ``scores > threshold``
with the given ``threshold``, else ``scores > Q_q(scores)``: the ``q``-quantile of the
image's own scores (numpy "linear"; default ``q = 0.99``, i.e. the top 1 % of each image).

A file that cannot be read, has the wrong channel count, NaN/Inf values (counted), band
centres other than the model's (first differing band and the largest difference in nm), or
fails in the graph is reported by name (on stderr and in ``summary.csv``) and skipped; the
others are processed.

The output folder is never a mix of two attempts (principle 14): everything is written
into a temporary sibling folder, ``summary.csv`` last, which then replaces ``out`` whole
(:func:`~cuvis_graph.io.output_paths.replace_dir`); a failed or killed run leaves ``out`` as
it was. An existing ``out`` is replaced only when it is empty or an earlier prediction
(a ``summary.csv`` of this format and result folders); a symbolic link as ``out`` or a
path inside a saved model folder is refused.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cuvis_graph.core.inference import InferenceSession
from cuvis_graph.core.plan import DataSpec, Plan
from cuvis_graph.errors import CuvisGraphError, did_you_mean
from cuvis_graph.io.atomic import atomic_write, atomic_write_text, temporary_sibling
from cuvis_graph.io.output_paths import refuse_inside_model, refuse_link, replace_dir
from cuvis_graph.io.prediction_inputs import (
    cubes_in_subfolders,
    expand_inputs,
    expand_named,
    output_names,
)
from cuvis_graph.io.render import DetectionFigure, rgb_band_indices
from cuvis_graph.io.render import (
    false_colour as false_color,  # the name predict has always exported
)

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph

__all__ = [
    "DEFAULT_QUANTILE",
    "FileResult",
    "PredictionSummary",
    "score_outputs",
    "expand_inputs",
    "cubes_in_subfolders",
    "run_graph",
    "false_color",
    "predict_files",
]

#: Default per-image quantile threshold when the graph has no decider and none is given.
DEFAULT_QUANTILE = 0.99
SUMMARY_COLUMNS = ("file", "output", "status", "error", "shape", "score_min", "score_mean", "score_max",
                   "score_std", "threshold", "anomaly_pixels")
#: Band centres of an input and of the model that differ by more than this (nm) are refused.
WAVELENGTH_TOLERANCE_NM = 0.05


@dataclass
class FileResult:
    """What happened to one input file."""

    path: Path
    status: str = "ok"  # "ok" | "error"
    error: str = ""
    output_dir: Path | None = None
    shape: tuple[int, ...] | None = None
    score_min: float | None = None
    score_mean: float | None = None
    score_max: float | None = None
    score_std: float | None = None
    threshold: float | None = None
    anomaly_pixels: int | None = None

    def row(self) -> dict[str, Any]:
        def num(v: float | None) -> str:
            return "" if v is None else f"{v:.9g}"

        return {"file": str(self.path), "output": "" if self.output_dir is None else str(self.output_dir),
                "status": self.status, "error": self.error,
                "shape": "" if self.shape is None else "x".join(str(s) for s in self.shape),
                "score_min": num(self.score_min), "score_mean": num(self.score_mean),
                "score_max": num(self.score_max), "score_std": num(self.score_std),
                "threshold": num(self.threshold),
                "anomaly_pixels": "" if self.anomaly_pixels is None else str(self.anomaly_pixels)}


@dataclass
class PredictionSummary:
    """Results of :func:`predict_files`: one :class:`FileResult` per input, in input order."""

    results: list[FileResult]
    out_dir: Path
    summary_path: Path
    score_output: str
    mask_source: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: cube files in sub-folders of folder inputs that were not taken (``recursive=False``)
    not_taken: int = 0

    @property
    def ok(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "ok"]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status != "ok"]


# -- which outputs ------------------------------------------------------------------------------
def score_outputs(graph: Graph, n_channels: int | None = None, output: str | None = None,
                  plan: Plan | None = None) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """``((score node, port), (decider node, port) or None)`` of ``graph``'s inference plan
    (``plan``, e.g. an :class:`InferenceSession`'s; default: compiled for ``n_channels``).

    ``output`` (``"name"`` or ``"name.port"``) chooses the score output explicitly.
    Raises :class:`CuvisGraphError` when the graph has no per-pixel ``[B,H,W,1]`` output.
    """
    from cuvis_graph.core.compiler import compile_graph

    if plan is None:
        plan = compile_graph(graph, DataSpec(n_channels=n_channels, batch_keys=frozenset({"cube"})),
                             with_leaves=False)
    pixelwise = [(s.name, port) for s in plan.steps if not s.node.provides_labels
                 for port, dims in plan.output_dims.get(s.name, {}).items() if len(dims) == 4 and dims[-1] == 1]
    deciders = [(n, p) for n, p in pixelwise if plan.step(n).node.is_decider]
    decider = deciders[-1] if deciders else None
    if output is not None:
        name, _, port = output.partition(".")
        if name not in plan.output_dims:
            raise CuvisGraphError(f"output: no node '{name}' in graph '{graph.name}'"
                                  f"{did_you_mean(name, plan.output_dims)}")
        ports = plan.output_dims[name]
        port = port or next(iter(ports))
        if port not in ports:
            raise CuvisGraphError(f"output: node '{name}' has no output port '{port}'; ports: {list(ports)}")
        return (name, port), decider
    scores = [(n, p) for n, p in pixelwise if not plan.step(n).node.is_decider]
    if not scores:
        shapes = {n: list(d) for n, ports in plan.output_dims.items() for d in ports.values()}
        raise CuvisGraphError(f"graph '{graph.name}' has no per-pixel score output [B,H,W,1] to predict with "
                              f"(outputs: {shapes}); choose one with output='node' / --output NODE")
    if decider is not None:  # the decider's input is the score it decides on
        step = plan.step(decider[0])
        sources = [s for src in step.inputs.values() for s in (src if isinstance(src, list) else [src])]
        fed = [(s.key, s.port) for s in sources if s.kind == "node" and (s.key, s.port) in scores]
        if fed:
            return fed[-1], decider
    return scores[-1], decider


# -- running ------------------------------------------------------------------------------------
def run_graph(graph: Graph, cube: np.ndarray | torch.Tensor, session: InferenceSession | None = None,
              keep: Collection[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Every node's outputs (those of ``keep`` when given) on one cube ``[H, W, C]``, run as a
    batch of one by ``session`` (default: a new :class:`InferenceSession` for this cube)."""
    if isinstance(cube, torch.Tensor):
        tensor = cube
    else:
        array = np.asarray(cube)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())  # read-only memory maps
    batch = {"cube": tensor[None].float()}
    return (session or InferenceSession.for_batch(graph, batch)).run(batch, keep=keep)


def _finite_stats(scores: np.ndarray) -> tuple[float, float, float, float]:
    finite = scores[np.isfinite(scores)].astype(np.float64)
    if finite.size == 0:
        return (math.nan,) * 4  # type: ignore[return-value]
    return float(finite.min()), float(finite.mean()), float(finite.max()), float(finite.std())


# -- images -------------------------------------------------------------------------------------
def _draw_overlay(figure: DetectionFigure, path: Path, data: np.ndarray, wavelengths: Any, scores: np.ndarray,
                  mask: np.ndarray, rule: str) -> None:
    """Draw ``overlay.png``'s figure of one file (false colour: :func:`~cuvis_graph.io.render.false_colour`)."""
    bands = rgb_band_indices(data.shape[-1], wavelengths)
    if wavelengths is not None and len(wavelengths) == data.shape[-1]:
        rgb_label = ", ".join(f"{float(wavelengths[b]):.0f}" for b in bands) + " nm"
    else:
        rgb_label = "bands " + ", ".join(str(b) for b in bands)
    count = int(mask.sum())
    title = f"{path.name}: {rule}; {count} of {mask.size} pixels detected ({100 * count / mask.size:.2f} %)"
    figure.draw(scores, false_color(data, bands=bands), mask, title, rgb_label)


# -- atomic files -------------------------------------------------------------------------------
def _save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def _write_summary(path: Path, results: Sequence[FileResult]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(r.row())
    return atomic_write_text(path, buffer.getvalue())


# -- checks ---------------------------------------------------------------------------------------
def check_finite_cube(data: np.ndarray, source: str) -> None:
    """Raise naming ``source`` with the count and first position of NaN/Inf values in ``[H, W, C]``."""
    bad = ~np.isfinite(data)
    count = int(bad.sum())
    if count:
        y, x, band = (int(i) for i in np.argwhere(bad)[0])
        raise CuvisGraphError(f"{source}: {count} of {data.size} values are NaN or infinite (first at pixel "
                              f"y={y}, x={x}, band {band}); they would flow into the scores: clean or mask them "
                              "first")


def check_wavelengths(cube_wl: Sequence[float] | np.ndarray | None, model_wl: Sequence[float] | None,
                      source: str) -> None:
    """Raise naming ``source`` when both band-centre lists are known and differ by more than
    :data:`WAVELENGTH_TOLERANCE_NM` (same length: the channel count is checked before)."""
    if cube_wl is None or model_wl is None or len(cube_wl) != len(model_wl):
        return
    diff = np.abs(np.asarray(cube_wl, np.float64) - np.asarray(model_wl, np.float64))
    if not np.all(diff <= WAVELENGTH_TOLERANCE_NM):  # NaN counts as a difference
        first = int(np.argmax(~(diff <= WAVELENGTH_TOLERANCE_NM)))
        worst = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
        raise CuvisGraphError(f"{source}: wavelengths differ from the model's: band {first} is at "
                              f"{float(cube_wl[first]):g} nm, the model was trained at {float(model_wl[first]):g} "
                              f"nm; max difference {worst:g} nm over {len(diff)} bands (tolerance "
                              f"{WAVELENGTH_TOLERANCE_NM:g} nm); resample the cube to the model's bands or use a "
                              "model trained on these")


def _is_earlier_prediction(out: Path) -> bool:
    """``out`` holds only a ``summary.csv`` of this format and result folders (no links)."""
    summary = out / "summary.csv"
    if summary.is_symlink() or not summary.is_file():
        return False
    with summary.open(encoding="utf-8", errors="replace") as fh:
        if fh.readline().rstrip("\r\n") != ",".join(SUMMARY_COLUMNS):
            return False
    return all(p.name == "summary.csv" or (p.is_dir() and not p.is_symlink()) for p in out.iterdir())


def _check_out_dir(out: Path) -> None:
    refuse_link(out, "out folder")
    refuse_inside_model(out, "out folder")
    if out.exists() and not out.is_dir():
        raise CuvisGraphError(f"out folder {out}: exists and is not a folder; choose another path")
    links = sorted(e.name for e in out.iterdir() if e.is_symlink()) if out.is_dir() else []
    if links:
        raise CuvisGraphError(f"out folder {out}: {links[0]} is a symbolic link (to {os.readlink(out / links[0])}); "
                              "refusing to write through it or replace it: remove the link or choose another folder")
    if out.is_dir() and any(out.iterdir()) and not _is_earlier_prediction(out):
        raise CuvisGraphError(f"out folder {out}: is not empty and holds no earlier prediction (a summary.csv "
                              "of cuvis-graph predict and result folders only); refusing to replace it: choose an "
                              "empty or new folder")


# -- the entry point ------------------------------------------------------------------------------
def predict_files(graph: Graph, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  threshold: float | None = None, quantile: float = DEFAULT_QUANTILE, output: str | None = None,
                  progress: bool = True, overlay: bool = True, read_options: Mapping[str, Any] | None = None,
                  recursive: bool = False) -> PredictionSummary:
    """Score every cube file of ``inputs`` (files or folders) and write results into ``out_dir``.

    Args:
        graph: a fitted graph (e.g. :meth:`Graph.load`); its channel count is checked
            against every file (:func:`cuvis_graph.io.model_channels.check_channels`).
        threshold: mask = ``scores > threshold`` (ignored when the graph has a decider).
        quantile: without decider and threshold, mask = ``scores > Q_quantile(scores)`` per image.
        output: the score output (``"node"`` / ``"node.port"``); default: see :func:`score_outputs`.
        progress: show a tqdm bar over the files (on stderr).
        overlay: write ``overlay.png``.
        read_options: keyword arguments of :func:`~cuvis_graph.data.read_cube`
            (``key``, ``mask_key``, ``drop_bad_bands``...).
        recursive: take the cube files of the sub-folders of folder inputs too; their results
            keep the sub-folder (``<out>/sub/<stem>/``). Without it they are counted in
            :attr:`PredictionSummary.not_taken`.

    Returns:
        a :class:`PredictionSummary`; ``summary.csv`` lists every input, failed ones with
        ``status=error`` and the message (which names the file).
    """
    from cuvis_graph.io.model_channels import infer_n_channels

    if not 0.0 <= quantile <= 1.0:
        raise CuvisGraphError(f"quantile must be in [0, 1], got {quantile}")
    if threshold is not None and not math.isfinite(threshold):
        raise CuvisGraphError(f"threshold must be a finite number, got {threshold}")
    if not os.fspath(out_dir).strip():
        raise CuvisGraphError("out folder: an empty path; name a folder for the results")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out)
    n_model = infer_n_channels(graph)
    sessions: dict[int, InferenceSession] = {}  # one per channel count (one when the model knows C)
    if n_model is not None:
        sessions[n_model] = InferenceSession(graph, DataSpec(n_channels=n_model))
    (score_node, score_port), decider = score_outputs(graph, n_model, output,
                                                      sessions[n_model].plan if sessions else None)
    if decider is not None:
        mask_source = f"decider '{decider[0]}'"
    elif threshold is not None:
        mask_source = f"scores > {threshold:g}"
    else:
        mask_source = f"scores > per-image {quantile:g} quantile"
    spec = graph.data_spec
    model_wl = spec.wavelengths if spec is not None else None
    entries = expand_named(inputs, recursive)
    files = [(path, problem) for path, problem, _ in entries]
    inside = next((p for p, _ in files if Path(os.path.abspath(p)).is_relative_to(out)), None)
    if inside is not None:
        raise CuvisGraphError(f"out folder {out}: holds the input {inside}, which replacing the folder would "
                              "delete; move the input or choose another --out")
    names = output_names([name for _, _, name in entries])
    results: list[FileResult] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(out)
    staging.mkdir()
    try:
        _predict_each(graph, sessions, files, names, results, staging, out, progress, overlay, read_options,
                      (score_node, score_port), decider, threshold, quantile, model_wl)
        summary = out / "summary.csv"
        _write_summary(staging / summary.name, results)  # last: the folder is complete
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PredictionSummary(results, out, summary, f"{score_node}.{score_port}", mask_source,
                             {"decider": decider, "quantile": quantile, "threshold": threshold},
                             not_taken=0 if recursive else cubes_in_subfolders(inputs))


def _predict_each(graph: Graph, sessions: dict[int, InferenceSession], files: Sequence[tuple[Path, str | None]],
                  names: Sequence[str],
                  results: list[FileResult], staging: Path, out: Path, progress: bool, overlay: bool,
                  read_options: Mapping[str, Any] | None,
                  score: tuple[str, str], decider: tuple[str, str] | None, threshold: float | None,
                  quantile: float, model_wl: Sequence[float] | None) -> None:
    """Score every file into ``staging/<name>/``; ``results`` gets one row per file.
    ``sessions``: inference sessions by channel count, added to for a new count."""
    from tqdm import tqdm

    from cuvis_graph.data.readers import read_cube
    from cuvis_graph.io.model_channels import check_channels

    score_node, score_port = score
    figure = DetectionFigure() if overlay else None  # one figure redrawn for every file
    bar = tqdm(files, desc="predict", unit="file", disable=not progress, file=sys.stderr)
    for (path, problem), name in zip(bar, names, strict=True):
        result = FileResult(path=path)
        results.append(result)
        try:
            if problem is not None:
                raise CuvisGraphError(problem)
            cube = read_cube(path, **dict(read_options or {}))
            result.shape = cube.shape
            check_channels(graph, cube.n_bands, str(path))
            check_wavelengths(cube.wavelengths, model_wl, str(path))
            data = np.asarray(cube.data, dtype=np.float32)
            check_finite_cube(data, str(path))
            wanted = {score_node} | ({decider[0]} if decider is not None else set())
            try:
                n = int(data.shape[-1])
                if n not in sessions:
                    sessions[n] = InferenceSession(graph, DataSpec(n_channels=n))
                outputs = run_graph(graph, data, sessions[n], keep=wanted)
            except Exception as exc:  # noqa: BLE001 - reported per file
                raise CuvisGraphError(f"{path}: the graph failed: {type(exc).__name__}: {exc}") from exc
            scores = outputs[score_node][score_port][0].detach().float().cpu().numpy()
            scores = scores.reshape(scores.shape[:2]).astype(np.float32)
            if decider is not None:
                mask = outputs[decider[0]][decider[1]][0].detach().cpu().numpy().reshape(scores.shape) > 0.5
                rule = f"mask of decider '{decider[0]}'"
            else:
                thr = float(threshold) if threshold is not None else float(np.quantile(scores, quantile))
                result.threshold = thr
                mask = scores > thr
                rule = f"score > {thr:.4g}" + (" (given)" if threshold is not None else f" (q{quantile:g} of image)")
            mask = mask.astype(np.uint8)
            target = staging / name
            _save_npy(target / "scores.npy", scores)
            _save_npy(target / "mask.npy", mask)
            if figure is not None:
                wl = cube.wavelengths if cube.wavelengths is not None else model_wl
                _draw_overlay(figure, path, data, wl, scores, mask, rule)
                atomic_write(target / "overlay.png", figure.save)
            result.output_dir = out / name
            result.score_min, result.score_mean, result.score_max, result.score_std = _finite_stats(scores)
            result.anomaly_pixels = int(mask.sum())
        except Exception as exc:  # noqa: BLE001 - one bad input never stops the others
            message = str(exc) or type(exc).__name__
            if str(path) not in message:
                message = f"{path}: {type(exc).__name__}: {message}"
            result.status, result.error = "error", message
            tqdm.write(f"skipped: {message}", file=sys.stderr)  # one "error:" line is for fatal errors
    bar.close()
