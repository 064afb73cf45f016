"""``Graph.train`` behind the facade: the run directory around one training.

Every call trains into a run directory (see :mod:`cuvis_graph.io.runs`): ``run_dir`` when
given, else a new ``<runs_root or config.run.root>/<graph name>/<stamp>/``; ``run_dir=False``
trains without one. Under DDP a process of rank > 0 joins the run directory of rank 0
(``CUVIS_GRAPH_DDP_RUN_DIR``) and writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cuvis_graph.core.compiler import compile_graph
from cuvis_graph.io.run_config import pipeline_summary
from cuvis_graph.io.run_resume import open_run
from cuvis_graph.io.runs import Run, RunSession
from cuvis_graph.train.config import TrainingConfig, parse_config
from cuvis_graph.train.distributed import RESUME_CKPT_ENV, RESUMING_ENV, RUN_DIR_ENV, worker_rank
from cuvis_graph.train.quiet import quiet_lightning
from cuvis_graph.train.results import TrainResult
from cuvis_graph.train.training import evaluate_graph, train_graph

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from cuvis_graph.core.graph import Graph

__all__ = ["train", "test"]


def train(graph: Graph, datamodule: Any, config: TrainingConfig | Mapping[str, Any] | None, *,
          callbacks: list[pl.Callback] | None, refit: bool | Sequence[str],
          run_dir: str | os.PathLike | Literal[False] | None, runs_root: str | os.PathLike | None,
          resume: str | os.PathLike | None, pipeline_spec: Mapping[str, Any] | None) -> TrainResult:
    """Check graph and stages, open (or join, or resume) the run directory, then train."""
    config = parse_config(TrainingConfig, config)
    # graph and stage problems together, before any data or run directory
    compile_graph(graph, None, for_training=config.trains, stages=config.stages)
    if run_dir is False:
        with quiet_lightning():
            return train_graph(graph, datamodule, config, callbacks, refit, None)
    joined = os.environ.get(RUN_DIR_ENV) or run_dir
    if worker_rank() > 0 and joined:  # a DDP rank > 0: rank 0 owns the run directory
        ckpt = os.environ.get(RESUME_CKPT_ENV)
        worker = Run(Path(joined), graph.name, resume_checkpoint=Path(ckpt) if ckpt else None,
                     resuming=os.environ.get(RESUMING_ENV) == "1")
        with quiet_lightning():
            return train_graph(graph, datamodule, config, callbacks, refit, None, worker_run=worker)
    run = open_run(graph.name, root=runs_root or config.run.root, run_dir=run_dir, resume=resume)
    # the session checks a resume against the run's recorded config, then writes config.yaml
    with RunSession(run, config.model_dump(mode="json"), pipeline_spec or pipeline_summary(graph),
                    pipeline_file=pipeline_spec is not None) as session, \
            quiet_lightning():
        return train_graph(graph, datamodule, config, callbacks, refit, session)


def test(graph: Graph, datamodule: Any, split: Literal["auto", "test", "val"], *, accelerator: str,
         precision: str | int) -> dict[str, float]:
    """Evaluate ``graph`` as it is on one split of ``datamodule`` (see :func:`evaluate_graph`)."""
    with quiet_lightning():
        return evaluate_graph(graph, datamodule, split, accelerator=accelerator, precision=precision)
