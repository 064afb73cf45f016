"""Regenerate the figures under ``docs/images/`` (used by README.md and docs/*.md).

* ``pipeline.png``: ``cuvis-graph show pipelines/selector_rx_bce.yaml --format png`` (the
  project's own renderer, run through the installed command line);
* ``heatmap.png``: the project's ``AnomalyHeatmap`` visualization of global RX scores
  (``MinMaxNormalizer -> RXGlobal``, statistics only) on a scene: the ABU urban-1 scene
  when the shared data is present (``$CUVIS_GRAPH_DATA`` or ``../shared/data`` next to the
  checkout), else a synthetic scene; ``--scene`` chooses explicitly. The ABU cubes carry
  no wavelengths: the false colour is the library's default band choice;
* ``histogram.png`` / ``histogram_log.png``: ``ScoreHistogram`` of the same scores with the
  labels, on a linear axis (x clipped at q99.5) and on a log density axis;
* ``overlay.png``: the ``overlay.png`` that ``predict_files`` / ``cuvis-graph predict``
  writes for the scene.

Usage::

    .venv/bin/python docs/make_figures.py                 # all figures
    .venv/bin/python docs/make_figures.py --scene synthetic
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PIPELINE = ROOT / "pipelines" / "selector_rx_bce.yaml"
ABU_SCENE = Path("abu") / "abu-urban-1.mat"


def cli_command() -> list[str]:
    """The ``cuvis-graph`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("cuvis-graph")
    if script.is_file():
        return [str(script)]
    found = shutil.which("cuvis-graph")
    return [found] if found else [sys.executable, "-m", "cuvis_graph.cli.app"]


def make_pipeline_png(out: Path) -> Path:
    """Render ``pipelines/selector_rx_bce.yaml`` with ``cuvis-graph show --format png``."""
    subprocess.run([*cli_command(), "show", str(PIPELINE), "--format", "png", "-o", str(out)], check=True, cwd=ROOT)
    return out


def default_scene() -> str:
    data = Path(os.environ.get("CUVIS_GRAPH_DATA") or ROOT.parent / "shared" / "data")
    return str(data / ABU_SCENE) if (data / ABU_SCENE).is_file() else "synthetic"


def make_scene_pngs(out: Path, scene: str) -> list[Path]:
    """Fit global RX on ``scene``; save its ``AnomalyHeatmap``, ``ScoreHistogram`` (linear and
    log) and ``predict`` overlay figures into the folder ``out``."""
    import tempfile

    import numpy as np
    import torch
    from cuvis_graph.nodes import AnomalyHeatmap, MinMaxNormalizer, RXGlobal, ScoreHistogram

    from cuvis_graph import Graph, TrainerConfig, TrainingConfig
    from cuvis_graph.data import GraphDataModule, MatSceneDataModule, SyntheticHSIDataModule
    from cuvis_graph.io.prediction import predict_files

    if scene == "synthetic":
        synthetic = SyntheticHSIDataModule(n_train=1, n_val=0, n_test=0, height=100, width=100, n_bands=100, seed=0)
        dataset = synthetic.train_set
        datamodule = GraphDataModule.from_arrays(dataset.cubes[0].numpy(), dataset.masks[0].numpy(),
                                                 wavelengths=synthetic.wavelengths, batch_size=1, val_on_train=True)
        label = "synthetic scene"
    else:
        datamodule = MatSceneDataModule(scene)
        datamodule.setup()
        dataset = datamodule.val_set
        label = Path(scene).stem
    graph = Graph("rx_figure")
    norm = graph.add_node(MinMaxNormalizer(), name="norm")
    rx = graph.add_node(RXGlobal(), parent=norm, name="rx")
    graph.train(datamodule, TrainingConfig(trainer=TrainerConfig(max_epochs=0, enable_progress_bar=False)),
                run_dir=False)

    batch = {"cube": dataset.cubes[0][None], "mask": dataset.masks[0][None]}
    if dataset.wavelengths is not None:
        batch["wavelengths"] = dataset.wavelengths
    scores = graph.predict({"cube": batch["cube"]})["rx"]
    out.mkdir(parents=True, exist_ok=True)
    heatmap = AnomalyHeatmap(figsize=(13.0, 4.4), name="heatmap")
    figure = heatmap.visualize(scores, batch, rx)["image_0"]
    figure.suptitle(f"Global RX on {label}: cuvis-graph AnomalyHeatmap", fontsize="large")
    written = [out / "heatmap.png"]
    figure.savefig(written[-1], dpi=110, bbox_inches="tight")
    for name, log_scale in (("histogram.png", False), ("histogram_log.png", True)):
        figure = ScoreHistogram(log_scale=log_scale, name="histogram").visualize(scores, batch, rx)["histogram"]
        written.append(out / name)
        figure.savefig(written[-1], dpi=100)
    with tempfile.TemporaryDirectory() as tmp:
        cube_file = Path(scene) if scene != "synthetic" else Path(tmp) / "synthetic.npy"
        if scene == "synthetic":
            np.save(cube_file, batch["cube"][0].numpy())
        predict_files(graph, [cube_file], Path(tmp) / "predictions", progress=False)
        written.append(out / "overlay.png")
        shutil.copyfile(Path(tmp) / "predictions" / cube_file.stem / "overlay.png", written[-1])
    print(f"wrote {', '.join(p.name for p in written)} ({label}, {int((batch['mask'] > 0).sum())} labelled "
          f"pixels, score range {float(torch.min(scores)):.3g}..{float(torch.max(scores)):.3g})")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default=None,
                        help="a .mat scene for the scene figures, or 'synthetic' (default: ABU urban-1 when present)")
    parser.add_argument("--out", type=Path, default=IMAGES, help="output folder (default: docs/images)")
    args = parser.parse_args(argv)
    make_pipeline_png(args.out / "pipeline.png")
    make_scene_pngs(args.out, args.scene or default_scene())


if __name__ == "__main__":
    main()
