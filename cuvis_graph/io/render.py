"""Pictures: of a compiled graph (text table, Mermaid text, PNG) and of a scene (false colour).

Every graph picture shows each node's type and the shapes of its output ports, with symbols
(``B, H, W``) where a size is only known at run time and numbers where the datamodule's
declared spec fixes them (``C = 40``, PCA ``K = 3``).

The false-colour composite of a cube (:func:`rgb_band_indices`, :func:`false_colour`) is
the one the visualization leaves and ``predict``'s ``overlay.png`` share;
:class:`DetectionFigure` draws ``overlay.png``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cuvis_graph.core.leaves import LossNode, MetricNode, VisualizationNode

if TYPE_CHECKING:
    from cuvis_graph.core.graph import Graph
    from cuvis_graph.core.plan import DataSpec, Plan

__all__ = ["Box", "Layout", "layout_graph", "to_text", "to_mermaid", "to_png", "RGB_TARGET_NM",
           "DEFAULT_RANGE_NM", "rgb_band_indices", "false_colour", "DetectionFigure"]

_BATCH = "batch"


@dataclass
class Box:
    """One drawn item: the batch source, a node or a leaf."""

    id: str
    title: str
    subtitle: str
    lines: list[str]
    kind: str  # batch | node | statistical | trainable | loss | metric | visualization | leaf
    level: int = 0
    order: float = 0.0


@dataclass
class Layout:
    boxes: dict[str, Box] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (src, dst, label)


def _fmt_dims(values: tuple | None, symbols: tuple) -> str:
    values = values or tuple(None for _ in symbols)
    out = []
    for v, s in zip(values, symbols, strict=False):
        out.append(str(v) if isinstance(v, int) else (s if isinstance(s, str) else "?"))
    return "[" + ",".join(out) + "]"


def _leaf_kind(leaf: Any) -> str:
    for kind, base in (("loss", LossNode), ("metric", MetricNode), ("visualization", VisualizationNode)):
        if isinstance(leaf, base):
            return kind
    return "leaf"


def layout_graph(graph: Graph, plan: Plan, data: DataSpec | None = None) -> Layout:
    """Boxes with levels (longest path from the batch) and an order within each level."""
    layout = Layout()
    keys = sorted(data.batch_keys) if data is not None else ["cube"]
    c = data.n_channels if data is not None and data.n_channels is not None else "C"
    batch_dims = {"cube": f"[B,H,W,{c}]", "mask": "[B,H,W]", "wavelengths": f"[{c}]"}
    layout.boxes[_BATCH] = Box(_BATCH, "batch", "data", [f"{k} {batch_dims.get(k, '')}".rstrip() for k in keys], "batch")
    used_keys: set[str] = set()
    for step in plan.steps:
        node = step.node
        dims = plan.output_dims.get(step.name, {})
        lines = [f"{p} {_fmt_dims(dims.get(p), spec.dims)}" for p, spec in node.output_specs.items()]
        kind = "trainable" if node.is_trainable() else ("statistical" if node.statistical else "node")
        level = 1
        wired = {p: (s if isinstance(s, list) else [s]) for p, s in step.inputs.items()}
        multi_in = len(wired) > 1 or any(len(v) > 1 for v in wired.values())
        for port, sources in wired.items():
            for src in sources:
                if src.kind == "batch":
                    used_keys.add(src.key)
                    layout.edges.append((_BATCH, step.name, src.key if (multi_in or src.key != "cube") else ""))
                else:
                    level = max(level, layout.boxes[src.key].level + 1)
                    many_out = len(plan.step(src.key).node.output_specs) > 1
                    label = (f"{src.port}→{port}" if many_out else port) if (multi_in or many_out) else ""
                    layout.edges.append((src.key, step.name, label))
        layout.boxes[step.name] = Box(step.name, step.name, type(node).__name__, lines, kind, level)
    for b in plan.leaves:
        kind = _leaf_kind(b.leaf)
        lines = [kind]
        if b.target is not None:
            lines.append(f"labels: {b.target}")
        parent = layout.boxes[b.parent.key]
        many_out = len(plan.step(b.parent.key).node.output_specs) > 1
        layout.boxes[b.name] = Box(b.name, b.name, type(b.leaf).__name__, lines, kind, parent.level + 1)
        layout.edges.append((b.parent.key, b.name, b.parent.port if many_out else ""))
    _order(layout)
    return layout


def _order(layout: Layout) -> None:
    """Barycentre ordering within levels (two downward sweeps)."""
    levels: dict[int, list[Box]] = {}
    for box in layout.boxes.values():
        levels.setdefault(box.level, []).append(box)
    for i, box in enumerate(levels.get(0, [])):
        box.order = i
    for _ in range(2):
        for level in sorted(levels):
            if level == 0:
                continue
            row = levels[level]
            for index, box in enumerate(row):
                parents = [layout.boxes[s].order for s, d, _ in layout.edges if d == box.id]
                box.order = sum(parents) / len(parents) + index * 1e-3 if parents else index
            row.sort(key=lambda b: b.order)
            for i, box in enumerate(row):
                box.order = i - (len(row) - 1) / 2


def to_text(graph: Graph, plan: Plan, data: DataSpec | None = None) -> str:
    """A table: name, type, role, inputs (from), outputs with shapes."""
    layout = layout_graph(graph, plan, data)
    incoming: dict[str, list[str]] = {}
    for src, dst, label in layout.edges:
        text = f"batch.{label or 'cube'}" if src == _BATCH else f"{src}" + (f" ({label})" if label else "")
        incoming.setdefault(dst, []).append(text)
    header = ("name", "type", "role", "from", "outputs")
    rows = [header]
    for box in sorted(layout.boxes.values(), key=lambda b: (b.kind in ("loss", "metric", "visualization", "leaf"),
                                                                    b.level, b.order)):
        if box.id == _BATCH:
            continue
        is_leaf = box.kind in ("loss", "metric", "visualization", "leaf")
        outputs = "-" if is_leaf else ", ".join(box.lines)
        role = f"leaf:{box.kind}" if is_leaf else box.kind
        rows.append((box.title, box.subtitle, role, ", ".join(incoming.get(box.id, [])), outputs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    batch = layout.boxes[_BATCH]
    return f"graph '{graph.name}'   batch: {', '.join(batch.lines)}\n" + "\n".join(lines)


def _mermaid_id(name: str) -> str:
    return "n_" + "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


_MERMAID_SHAPES = {"batch": ('[("', '")]'), "loss": ('{{"', '"}}'), "metric": ('(["', '"])'),
                   "visualization": ('[/"', '"/]'), "leaf": ('(["', '"])')}
_COLOURS = {
    "batch": "#e8e8e8", "node": "#dbe9f6", "statistical": "#cfe3f7", "trainable": "#fde3c8",
    "loss": "#f8d0d0", "metric": "#d4efd4", "visualization": "#e6dcf3", "leaf": "#eeeeee",
}


def to_mermaid(graph: Graph, plan: Plan, data: DataSpec | None = None) -> str:
    """A Mermaid ``flowchart TD`` (paste into Markdown or mermaid.live)."""
    layout = layout_graph(graph, plan, data)
    out = ["flowchart TD"]
    for box in sorted(layout.boxes.values(), key=lambda b: (b.level, b.order)):
        label = "<br/>".join(_mermaid_text(x) for x in [box.title, box.subtitle, *box.lines] if x)
        left, right = _MERMAID_SHAPES.get(box.kind, ('["', '"]'))
        out.append(f"    {_mermaid_id(box.id)}{left}{label}{right}")
        out.append(f"    class {_mermaid_id(box.id)} {box.kind}")
    for src, dst, label in layout.edges:
        arrow = f"-->|{_mermaid_text(label)}|" if label else "-->"
        out.append(f"    {_mermaid_id(src)} {arrow} {_mermaid_id(dst)}")
    for kind, colour in _COLOURS.items():
        out.append(f"    classDef {kind} fill:{colour},stroke:#555")
    return "\n".join(out) + "\n"


def to_png(graph: Graph, plan: Plan, path: str | os.PathLike, data: DataSpec | None = None, dpi: int = 150) -> str:
    """Draw the graph top-down (batch at the top, leaves below their parents) to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch

    layout = layout_graph(graph, plan, data)
    col_w, box_w, line_h, gap, margin = 3.0, 2.7, 0.19, 0.55, 0.7
    levels: dict[int, list[Box]] = {}
    for box in layout.boxes.values():
        levels.setdefault(box.level, []).append(box)
    height_of = {b.id: 0.32 + line_h * (1 + len(b.lines)) for b in layout.boxes.values()}
    row_h = {lvl: max(height_of[b.id] for b in boxes) for lvl, boxes in levels.items()}
    widest = max(len(boxes) for boxes in levels.values())
    width = widest * col_w + 2 * margin
    total_h = sum(row_h.values()) + gap * (len(levels) - 1) + 1.3
    fig, ax = plt.subplots(figsize=(width, total_h))
    ax.set_xlim(0, width)
    ax.set_ylim(0, total_h)
    ax.axis("off")
    centre: dict[str, tuple[float, float]] = {}
    y = total_h - 0.55
    for lvl in sorted(levels):  # the boxes of a row share their top edge
        for box in levels[lvl]:
            centre[box.id] = (width / 2 + box.order * col_w, y - height_of[box.id] / 2)
        y -= row_h[lvl] + gap
    for box in layout.boxes.values():
        x, yc = centre[box.id]
        h = height_of[box.id]
        ax.add_patch(FancyBboxPatch((x - box_w / 2, yc - h / 2), box_w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=_COLOURS.get(box.kind, "#eeeeee"), edgecolor="#444444", linewidth=1.0,
                                    zorder=2))
        top = yc + h / 2 - 0.16 - line_h / 2
        ax.text(x, top, box.title, ha="center", va="center", fontsize=9.5, fontweight="bold", zorder=3)
        ax.text(x, top - line_h * 0.95, box.subtitle, ha="center", va="center", fontsize=8, style="italic",
                color="#333333", zorder=3)
        for i, line in enumerate(box.lines):
            ax.text(x, top - line_h * (i + 2) * 0.95, line, ha="center", va="center", fontsize=7.5,
                    family="monospace", color="#222222", zorder=3)
    lanes = {"left": 0, "right": 0}
    for src, dst, label in layout.edges:
        (x0, y0), (x1, y1) = centre[src], centre[dst]
        start = (x0, y0 - height_of[src] / 2)
        end = (x1, y1 + height_of[dst] / 2)
        style = dict(color="#555555", lw=1.0, linestyle="--" if src == _BATCH and label not in ("", "cube") else "-")
        between = [b for b in layout.boxes.values() if layout.boxes[src].level < b.level < layout.boxes[dst].level]
        if between:  # skip a level: run down a lane beside the boxes in between
            xs = [centre[b.id][0] for b in between]
            side = "left" if x1 <= width / 2 else "right"
            offset = box_w / 2 + 0.18 + 0.14 * lanes[side]
            lanes[side] += 1
            lane_x = min(xs) - offset if side == "left" else max(xs) + offset
            x_start = x0 + (-0.25 if side == "left" else 0.25) * box_w
            start = (x_start, start[1])
            end = (x1 + (-0.25 if side == "left" else 0.25) * box_w, end[1])
            points = [start, (lane_x, start[1] - gap * 0.45), (lane_x, end[1] + gap * 0.55)]
            ax.plot([p[0] for p in points], [p[1] for p in points], zorder=1, **style)
            label_at = (lane_x, (points[1][1] + points[2][1]) / 2)
            start = points[-1]
        else:
            label_at = (start[0] + (end[0] - start[0]) * 0.35, start[1] + (end[1] - start[1]) * 0.35)
        ax.annotate("", xy=end, xytext=start, zorder=1,
                    arrowprops=dict(arrowstyle="-|>", shrinkA=0, shrinkB=1, mutation_scale=11, **style))
        if label:
            ax.text(*label_at, label, fontsize=7, ha="center", va="center", color="#1f4e79", zorder=3,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9))
    kinds = [k for k in _COLOURS if any(b.kind == k for b in layout.boxes.values())]
    handles = [Line2D([0], [0], marker="s", linestyle="", markersize=10, markerfacecolor=_COLOURS[k],
                      markeredgecolor="#444444", label=k) for k in kinds]
    ax.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8,
              bbox_to_anchor=(0.5, -0.01))
    ax.set_title(f"graph '{graph.name}'", fontsize=11, loc="left")
    fig.tight_layout()
    path = os.fspath(path)
    from cuvis_graph.io.atomic import atomic_write

    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return path


# -- false colour -------------------------------------------------------------------------------
#: Band centres (nm) of the false-colour composite: red, green, blue.
RGB_TARGET_NM = (640.0, 550.0, 460.0)
#: Spectral range (nm) assumed for a cube without wavelengths: AVIRIS (224 bands, ~9.6 nm apart).
DEFAULT_RANGE_NM = (365.0, 2500.0)


def rgb_band_indices(n_bands: int, wavelengths: Any = None, rgb_bands: Any = None) -> tuple[int, int, int]:
    """Indices ``(r, g, b)`` of the bands of a false-colour composite.

    1. ``rgb_bands`` when given (negative indices count from the end);
    2. wavelengths known and spanning 460–640 nm: the bands nearest 640/550/460 nm;
    3. wavelengths known but not spanning them (e.g. a NIR camera): last/middle/first band;
    4. no wavelengths: the bands at the relative positions 640/550/460 nm take in
       :data:`DEFAULT_RANGE_NM`, the range of AVIRIS, the sensor of most public airborne
       scenes (ABU, Indian Pines, Salinas). Their published cubes drop water-absorption
       and noisy bands mostly beyond 1300 nm, so the visible bands keep their place at the
       start: 204 bands give ``(26, 18, 9)``, about 620/540/450 nm, a natural-looking
       image, where last/middle/first (SWIR/NIR/violet) shows vegetation green and
       soil magenta.
    """
    if rgb_bands is not None:
        idx = tuple(int(i) for i in rgb_bands)
        if len(idx) != 3:
            raise ValueError(f"rgb_bands must name 3 band indices (r, g, b), got {list(rgb_bands)}")
        for i in idx:
            if not -n_bands <= i < n_bands:
                raise ValueError(f"rgb_bands index {i} is out of range for {n_bands} bands")
        return tuple(i % n_bands for i in idx)  # type: ignore[return-value]
    if wavelengths is not None and len(wavelengths) == n_bands:
        wl = np.asarray(wavelengths, dtype=np.float64)
        if wl.min() <= RGB_TARGET_NM[2] and wl.max() >= RGB_TARGET_NM[0]:
            return tuple(int(np.argmin(np.abs(wl - nm))) for nm in RGB_TARGET_NM)  # type: ignore[return-value]
        return n_bands - 1, n_bands // 2, 0
    lo, hi = DEFAULT_RANGE_NM
    return tuple(int(round((nm - lo) / (hi - lo) * (n_bands - 1))) for nm in RGB_TARGET_NM)  # type: ignore[return-value]


def false_colour(cube: Any, wavelengths: Any = None, bands: Any = None, low: float = 2.0,
                 high: float = 98.0) -> np.ndarray:
    """``[H, W, 3]`` float in ``[0, 1]`` from a cube ``[H, W, C]``.

    Bands from :func:`rgb_band_indices` (``bands`` as its ``rgb_bands``); each channel is
    stretched between its ``low`` and ``high`` percentiles of the finite values (robust
    to a few bright anomalies); NaN/Inf pixels are black.
    """
    cube = np.asarray(cube)
    picks = rgb_band_indices(cube.shape[-1], wavelengths, bands)
    rgb = cube[..., list(picks)].astype(np.float64)
    out = np.zeros_like(rgb)
    for i in range(3):
        channel = rgb[..., i]
        finite = np.isfinite(channel)
        if not finite.any():
            continue
        lo, hi = np.percentile(channel[finite], [low, high])
        if hi > lo:
            out[..., i] = np.where(finite, np.clip((channel - lo) / (hi - lo), 0.0, 1.0), 0.0)
    return out


# -- detections of one scene ----------------------------------------------------------------------
#: Colour of detected pixels on the false-colour panel.
DETECTION_RGB = (1.0, 0.0, 0.0)


class DetectionFigure:
    """Three panels of one scene: scores with a colour bar | detections in red on the false
    colour | the detection mask, under a title (file, rule, detected pixels).

    One Agg figure serves every :meth:`draw` (cleared and resized), never ``pyplot``: many
    files neither accumulate figures nor touch global state. ``panel_width`` inches at
    ``dpi`` give ``3 * panel_width * dpi`` pixels of width (1200 by default).
    """

    def __init__(self, panel_width: float = 4.0, dpi: int = 100) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.panel_width, self.dpi = float(panel_width), int(dpi)
        self.figure = Figure(layout="constrained")
        FigureCanvasAgg(self.figure)

    def draw(self, scores: np.ndarray, rgb: np.ndarray, mask: np.ndarray, title: str, rgb_label: str = "") -> Any:
        """Draw ``scores [H, W]``, ``rgb [H, W, 3]`` in [0, 1] and ``mask [H, W]``; the figure.

        The score colours span the 1st to 99.5th percentile of the finite scores (a heavy
        tail would leave the rest dark); the colour bar's arrows mark scores beyond.
        """
        from matplotlib.patches import Patch

        fig = self.figure
        fig.clear()
        h, w = scores.shape
        panel_h = float(np.clip(self.panel_width * h / w, 1.5, 3 * self.panel_width))
        fig.set_size_inches(3 * self.panel_width, panel_h + 1.2)
        ax_scores, ax_overlay, ax_mask = fig.subplots(1, 3)
        finite = scores[np.isfinite(scores)]
        lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.5])) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        below, above = bool(finite.size and finite.min() < lo), bool(finite.size and finite.max() > hi)
        extend = "both" if below and above else "min" if below else "max" if above else "neither"
        image = ax_scores.imshow(scores, cmap="inferno", vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(image, ax=ax_scores, shrink=0.85, extend=extend, label="score")
        ax_scores.set_title("scores")
        detected = np.asarray(mask, dtype=bool)
        shown = np.array(rgb, dtype=np.float64, copy=True)
        shown[detected] = 0.35 * shown[detected] + 0.65 * np.asarray(DETECTION_RGB)
        ax_overlay.imshow(shown, interpolation="nearest")
        ax_overlay.set_title("detections on false colour" + (f"\n({rgb_label})" if rgb_label else ""))
        ax_overlay.legend(handles=[Patch(color=DETECTION_RGB, label=f"detected ({int(detected.sum())} px)")],
                          loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize="small", frameon=False)
        ax_mask.imshow(detected, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_mask.set_title("detection mask (white = detected)")
        for ax in (ax_scores, ax_overlay, ax_mask):
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(title)
        return fig

    def save(self, fh: Any) -> None:
        """Write the last drawing as PNG to a binary file object."""
        self.figure.savefig(fh, format="png", dpi=self.dpi)
