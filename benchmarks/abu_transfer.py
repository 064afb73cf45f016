"""ABU transfer: a detector trained on one real beach scene, scored on the other, against global RX.

Data: the two 188-band ABU beach scenes in ``../shared/data/abu`` (``abu-beach-1.mat``,
150x150x188, 19 anomaly pixels, Cat Island; ``abu-beach-3.mat``, 100x100x188, 11 anomaly
pixels, Bay Champagne; AVIRIS, raw digital numbers), read with ``MatSceneDataModule``'s
reader. The script prints a notice and exits 0 when the folder is absent.

For each direction A -> B (train on A, evaluate on B), three methods:

* ``trained``: ``SoftChannelSelector(n_select=30)`` -> ``RXGlobal()`` -> ``RXLogitHead()`` +
  ``AnomalyBCEWithLogits()``, every node with its defaults (uniform selector logits, RX
  statistics fitted on A's background pixels because the loss reads the mask, frozen; head
  fitted on A's scores), trained on A with the library's training defaults: Adam, lr 0.01,
  ``trainer.max_epochs`` 5, batch 1 (the scene), so 5 optimizer steps. Scored on B with
  ``graph.predict`` (logits); B's statistics are never seen.
* ``RX fitted on B (self)``: ``RXGlobal()`` alone, statistics only (``max_epochs=0``), fitted on
  all pixels of B and scored on B: exact global RX, the classic unsupervised baseline (it uses
  the evaluated scene's own statistics, which the trained detector does not have).
* ``RX fitted on A``: the same statistical RX, fitted on A and scored on B.

AUROC and AP: scikit-learn over all pixels of B (``map > 0``). Time: wall seconds of the fit
(statistics, plus training for ``trained``) and of scoring B. ``--quick``: a 32x32 crop around
the anomalies of each scene and 1 epoch (checks that the script runs; the numbers mean nothing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULT_PREFIX, header, parser, setup
from cuvis_graph.nodes import AnomalyBCEWithLogits, RXGlobal, RXLogitHead, SoftChannelSelector
from sklearn.metrics import average_precision_score, roc_auc_score

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule, MatSceneDataModule

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abu"
SCENES = ("abu-beach-1", "abu-beach-3")
N_SELECT = 30
QUICK_CROP = 32


def load(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cube float32 ``[H, W, C]`` and mask int64 ``[H, W]`` through the library's .mat reader."""
    dm = MatSceneDataModule(str(DATA / f"{name}.mat"))
    dm.setup()
    cube, mask = dm.train_set.cubes[0].numpy(), dm.train_set.masks[0].numpy()
    if quick:  # a crop that holds anomaly pixels (AUROC/AP need both classes)
        rows, cols = np.nonzero(mask)
        r0 = int(np.clip(rows.mean() - QUICK_CROP // 2, 0, mask.shape[0] - QUICK_CROP))
        c0 = int(np.clip(cols.mean() - QUICK_CROP // 2, 0, mask.shape[1] - QUICK_CROP))
        cube, mask = cube[r0:r0 + QUICK_CROP, c0:c0 + QUICK_CROP], mask[r0:r0 + QUICK_CROP, c0:c0 + QUICK_CROP]
    return np.ascontiguousarray(cube), np.ascontiguousarray(mask)


def datamodule(cube: np.ndarray, mask: np.ndarray) -> GraphDataModule:
    return GraphDataModule.from_arrays(cube[None], mask[None], batch_size=1, val_on_train=True)


def quality(scores: torch.Tensor, mask: np.ndarray) -> tuple[float, float]:
    y, s = mask.reshape(-1) > 0, scores.reshape(-1).double().numpy()
    return roc_auc_score(y, s), average_precision_score(y, s)


def statistical_rx(cube: np.ndarray, mask: np.ndarray, trainer: dict) -> tuple[Graph, RXGlobal, float]:
    """``RXGlobal()`` fitted on the cube (statistics only: all pixels, exact); returns the fit seconds."""
    graph = Graph("abu_rx")
    rx = graph.add_node(RXGlobal(), name="rx")
    t0 = time.perf_counter()
    graph.train(datamodule(cube, mask), {"trainer": {**trainer, "max_epochs": 0}}, run_dir=False)
    return graph, rx, time.perf_counter() - t0


def trained_pipeline(cube: np.ndarray, mask: np.ndarray, trainer: dict, epochs: int | None
                     ) -> tuple[Graph, RXGlobal, RXLogitHead, float]:
    """selector(30) -> RX -> head + BCE, node defaults, trained on the cube; returns the fit seconds."""
    graph = Graph("abu_selector_rx")
    sel = graph.add_node(SoftChannelSelector(n_select=N_SELECT), name="selector")
    rx = graph.add_node(RXGlobal(), parent=sel, name="rx")
    head = graph.add_node(RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(AnomalyBCEWithLogits(), parent=head, name="bce")
    config = {"trainer": trainer if epochs is None else {**trainer, "max_epochs": epochs}}
    t0 = time.perf_counter()
    graph.train(datamodule(cube, mask), config, run_dir=False)
    return graph, rx, head, time.perf_counter() - t0


def scored(graph: Graph, cube: np.ndarray, output: str) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = graph.predict(cube, output=output)
    return out, time.perf_counter() - t0


def result(what: str, auroc: float, ap: float) -> None:
    """One summary line for ``run_all.py`` (value: AUROC; shown as ``AUROC / AP``; no goal yet)."""
    print(RESULT_PREFIX + json.dumps({"bench": "ABU", "what": what, "value": auroc, "display": f"{auroc:.4f} / {ap:.4f}",
                                      "goal": None, "met": None}), flush=True)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             .rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the trained pipeline (default: the library's trainer.max_epochs, "
                        "5; --quick: 1)")
    args = p.parse_args()
    device = setup(args, repeats=1)
    if device.type != "cpu":
        sys.exit("error: abu_transfer.py runs on the CPU; use --device cpu")
    header("ABU", "transfer across the 188-band ABU beach scenes: trained selector(30)->RX->head vs global RX",
           device, args.quick)
    missing = [s for s in SCENES if not (DATA / f"{s}.mat").is_file()]
    if missing:
        print(f"  skipped: {', '.join(missing)} not found in {DATA} (shared ABU data absent)")
        return
    torch.manual_seed(0)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else None)
    trainer = {"accelerator": "cpu", "enable_progress_bar": False}
    scenes = {s: load(s, args.quick) for s in SCENES}
    for s, (cube, mask) in scenes.items():
        print(f"  {s}: {cube.shape[0]}x{cube.shape[1]}x{cube.shape[2]}, {int((mask > 0).sum())} anomaly pixels")
    print(f"  trained: SoftChannelSelector({N_SELECT}) -> RXGlobal() -> RXLogitHead() + AnomalyBCEWithLogits(), "
          f"node defaults; Adam lr 0.01, {epochs if epochs is not None else 5} epochs"
          f"{'' if epochs is not None else ' (library default)'}, batch 1 (one scene: one step per epoch)")

    statistical_rx(*scenes[SCENES[1]], trainer)  # warm-up (first Lightning run), not timed
    # statistical RX of each scene, fitted once, scored on both scenes
    rx_graphs = {s: statistical_rx(*scenes[s], trainer) for s in SCENES}
    rows = [["direction", "method", "AUROC", "AP", "time s"]]
    notes = []
    for a, b in (SCENES, SCENES[::-1]):
        cube_b, mask_b = scenes[b]
        direction = f"{a.removeprefix('abu-')} -> {b.removeprefix('abu-')}"
        graph, rx, head, fit_s = trained_pipeline(*scenes[a], trainer, epochs)
        logits, score_s = scored(graph, cube_b, head.name)
        auroc, ap = quality(logits, mask_b)
        own_auroc, own_ap = quality(graph.predict(scenes[a][0], output=head.name), scenes[a][1])
        notes.append(f"  {direction}: trained RX statistics fitted on {rx.fitted_on}; on its own training scene "
                     f"AUROC {own_auroc:.4f} AP {own_ap:.4f}")
        rows.append([direction, "trained selector(30)->RX->head", f"{auroc:.4f}", f"{ap:.4f}",
                     f"{fit_s:.2f} + {score_s:.2f}"])
        tag = direction.replace(" ", "")
        result(f"{tag} trained: AUROC / AP", auroc, ap)
        for method, fitted in ((f"RX fitted on {b.removeprefix('abu-')} (self)", b),
                               (f"RX fitted on {a.removeprefix('abu-')} (train)", a)):
            rx_graph, _, rx_fit_s = rx_graphs[fitted]
            scores, score_s = scored(rx_graph, cube_b, "rx")
            auroc, ap = quality(scores, mask_b)
            rows.append([direction, method, f"{auroc:.4f}", f"{ap:.4f}", f"{rx_fit_s:.2f} + {score_s:.2f}"])
            result(f"{tag} RX fitted on {'self' if fitted == b else 'train'}: AUROC / AP", auroc, ap)
    print("\n" + table(rows))
    print("  (AUROC, AP: scikit-learn over all pixels of the evaluated scene; time: fit + scoring of the evaluated "
          "scene, wall seconds)")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
