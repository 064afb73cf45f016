"""The staged YAML pipeline, made tiny, shared by the stage tests and their kill child."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from cuvis_graph.io.spec import Pipeline, load_pipeline

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "selector_rx_staged.yaml"
TINY = ["data.params.n_train=4", "data.params.n_val=2", "data.params.n_test=0", "data.params.height=16",
        "data.params.width=16", "data.params.n_bands=12", "data.params.batch_size=2",
        "nodes.selector.params.n_select=4", "training.seed=5", "training.trainer.enable_progress_bar=false",
        "training.trainer.accelerator=cpu", "training.trainer.deterministic=true",
        "training.stages.1.max_epochs=3", "training.stages.2.max_epochs=2"]


def staged_pipeline(*overrides: str) -> Pipeline:
    return load_pipeline(PIPELINE, [*TINY, *overrides])


def module_state(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """``{"<node>.<tensor>": copy}`` of every node's parameters and buffers."""
    return {f"{name}.{key}": value.detach().clone() for name, node in module.graph_nodes.items()
            for key, value in node.state_dict().items()}


class StageRecorder(pl.Callback):
    """Per Lightning fit (one per gradient stage): frozen nodes, active losses, states before/after."""

    def __init__(self) -> None:
        self.fits: list[dict] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fits.append({"frozen": set(pl_module.frozen), "losses": dict(pl_module.loss_weights),
                          "before": module_state(pl_module)})

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fits[-1]["after"] = module_state(pl_module)
