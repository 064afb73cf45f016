"""Run by ``tests/test_ddp.py`` as ``python ddp_script.py OUT_DIR DEVICES [MODE]``.

Trains MinMax -> PCA -> RX -> logit head (BCE + detection metrics) in two stages
(statistics only, then one gradient epoch) with DEVICES CPU processes (gloo). Lightning
starts ranks 1.. by running this script again; rank 0 saves the trained graph to
``OUT_DIR/model`` and the final metrics to ``OUT_DIR/result.json``.

MODE ``nodes``: one process of a 2-node run started by hand (``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE`` and ``CUVIS_GRAPH_DDP_RUN_DIR`` in the environment), with a
``frozen`` stage between the two (every node frozen, RX and the head refitted, 0 epochs).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from cuvis_graph import Graph, TrainingConfig
from cuvis_graph.data import GraphDataModule
from cuvis_graph.train.distributed import worker_rank


def scenes() -> tuple[np.ndarray, np.ndarray]:
    """12 cubes 8x8x6 around 1e3 (7 train, 5 val: neither divisible by 2) with a few anomalies."""
    rng = np.random.default_rng(7)
    mix = rng.normal(size=(6, 6))
    cubes = 1000.0 + rng.normal(size=(12, 8, 8, 6)) @ mix
    masks = np.zeros((12, 8, 8), dtype=np.int64)
    for i in range(12):
        r, c = rng.integers(0, 8, size=2)
        masks[i, r, c] = 1
        cubes[i, r, c] += 6.0 * rng.normal(size=6)
    return cubes.astype(np.float32), masks


def datamodule() -> GraphDataModule:
    cubes, masks = scenes()
    return GraphDataModule.from_arrays(cubes, masks, batch_size=1, val_fraction=5 / 12, seed=1)


def build_graph() -> Graph:
    from cuvis_graph import nodes

    graph = Graph("ddp_pca_rx")
    norm = graph.add_node(nodes.MinMaxNormalizer(), name="norm")
    pca = graph.add_node(nodes.TrainablePCA(n_components=4), parent=norm, name="pca")
    rx = graph.add_node(nodes.RXGlobal(), parent=pca, name="rx")
    head = graph.add_node(nodes.RXLogitHead(), parent=rx, name="head")
    graph.add_leaf_node(nodes.AnomalyBCEWithLogits(pos_weight=5.0), parent=head, name="bce")
    graph.add_leaf_node(nodes.AnomalyDetectionMetrics(), parent=head, name="det")
    return graph


FROZEN_STAGE = {"name": "frozen", "max_epochs": 0, "trainable": [], "refit": ["rx", "head"]}


def config(devices: int, epochs: int = 1, num_nodes: int = 1, frozen_stage: bool = False) -> TrainingConfig:
    trainer = {"accelerator": "cpu", "devices": devices, "num_nodes": num_nodes, "enable_progress_bar": False}
    if devices * num_nodes > 1:
        trainer["strategy"] = "ddp"
    stages = [{"name": "statistics", "max_epochs": 0}] + [FROZEN_STAGE] * frozen_stage + \
        [{"name": "train", "max_epochs": epochs}]
    return TrainingConfig.model_validate({"seed": 11, "trainer": trainer, "optimizer": {"lr": 0.01},
                                          "stages": stages})


def plain_config(devices: int, epochs: int) -> TrainingConfig:
    """No stages: statistical init, then ``epochs`` epochs (the default single stage)."""
    data = config(devices).model_dump()
    data.pop("stages")
    data["trainer"]["max_epochs"] = epochs
    return TrainingConfig.model_validate(data)


if __name__ == "__main__":
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "stages"  # stages | nodes | plain:<epochs> | resume:<epochs>
    graph = build_graph()
    if mode == "stages":
        result = graph.train(datamodule(), config(devices))
    elif mode == "nodes":  # every node names the same run directory; rank 0 writes it, the others join it
        result = graph.train(datamodule(), config(devices, num_nodes=2, frozen_stage=True),
                             run_dir=os.environ["CUVIS_GRAPH_DDP_RUN_DIR"])
    else:
        kind, epochs = mode.split(":")
        where = {"resume": out / "run"} if kind == "resume" else {"run_dir": out / "run"}
        result = graph.train(datamodule(), plain_config(devices, int(epochs)), **where)
    if worker_rank() == 0:
        graph.save(out / "model")
        (out / "result.json").write_text(json.dumps({"metrics": result.metrics, "run_dir": str(result.run_dir),
                                                     "fit_passes": result.fit.passes,
                                                     "initial_metrics": result.initial_metrics}))
